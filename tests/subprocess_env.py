"""The environment of the tests' child processes."""
import os
from typing import Dict


def child_env(*paths: str, **variables: str) -> Dict[str, str]:
    """This process's environment with ``paths`` put in front of ``PYTHONPATH`` (whatever
    it holds already is kept, e.g. packages installed with ``pip install --target``) and
    ``variables`` set."""
    python_path = [str(path) for path in paths]
    if os.environ.get('PYTHONPATH'):
        python_path.append(os.environ['PYTHONPATH'])
    return dict(os.environ, PYTHONPATH=os.pathsep.join(python_path), **variables)
