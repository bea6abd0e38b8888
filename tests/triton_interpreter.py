"""Run a test module's Triton checks in a child process under Triton's CPU interpreter.

``TRITON_INTERPRET=1`` must be set before Triton is imported, which the test process has
done already; each module that needs the interpreter runs itself as a script in a child
with it set, and prints its results as one JSON line.
"""
import json
import subprocess
import sys
from pathlib import Path

from subprocess_env import child_env

TESTS_DIR = Path(__file__).parent


def run_under_interpreter(script: str, timeout: int = 600) -> dict:
    """Run ``script`` with ``TRITON_INTERPRET=1``; return the JSON of its last line."""
    env = child_env(TESTS_DIR, TESTS_DIR.parent, TRITON_INTERPRET='1', OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
