"""Check that the OpenMMLab stack pola_mm needs is importable, naming what is missing.

Usage: ``python tools/check_env.py [--quiet]``. Exit status 0 and a one-line summary of
versions when everything imports; exit status 1 and one message per problem otherwise.
``tools/setup_env.sh`` uses ``--compiled-only`` (torch and an mmcv with ops) to decide
whether an existing environment can be reused, before anything else is installed. The
script depends on the standard library only, so it can explain a broken environment
instead of failing inside it.
"""
import argparse
import importlib
import sys
from typing import List, Optional, Tuple

MMCV_MIN, MMCV_MAX = (2, 0, 0), (2, 2, 0)
SETUP_HINT = 'run `make setup` (or see README "Existing OpenMMLab environment")'


def _version_tuple(version: str) -> Tuple[int, ...]:
    parts = []
    for piece in version.split('+')[0].split('.')[:3]:
        digits = ''.join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _import(name: str):
    """Import ``name``; return (module, None) or (None, 'ExcType: message')."""
    try:
        return importlib.import_module(name), None
    except Exception as exc:  # any import-time failure is a finding to report
        return None, f'{type(exc).__name__}: {exc}'


def check_stack(compiled_only: bool = False) -> Tuple[List[str], List[str]]:
    """Return (versions, problems): 'name version' strings and human-readable problems."""
    versions: List[str] = []
    problems: List[str] = []

    torch, error = _import('torch')
    if torch is None:
        return versions, [f'torch is not importable ({error}); {SETUP_HINT}']
    versions.append(f'torch {torch.__version__}')

    mmcv, error = _import('mmcv')
    if mmcv is None:
        problems.append(f'mmcv is not installed ({error}); pola_mm needs mmcv '
                        f'>=2.0,<2.2 built with its ops; {SETUP_HINT}')
    else:
        versions.append(f'mmcv {mmcv.__version__}')
        if not MMCV_MIN <= _version_tuple(mmcv.__version__) < MMCV_MAX:
            problems.append(
                f'mmcv {mmcv.__version__} is outside the range mmdet 3.3 and '
                f'mmseg 1.2 accept (>=2.0.0,<2.2.0); {SETUP_HINT}')
        ops_error = _import('mmcv.ops')[1]
        if ops_error is not None:
            problems.append(
                f'mmcv {mmcv.__version__} has no usable compiled ops (import '
                f'mmcv.ops failed: {ops_error}); install an mmcv built with '
                f'MMCV_WITH_OPS=1 against torch {torch.__version__}; {SETUP_HINT}')

    if not problems and not compiled_only:
        packages = [('mmengine', 'mmengine'), ('mmdet.models', 'mmdet'),
                    ('mmseg.models', 'mmseg'), ('mmpretrain.models', 'mmpretrain'),
                    ('timm', 'timm'), ('pola_mm', 'pola_mm')]
        for module_name, package in packages:
            module, error = _import(module_name)
            if module is None:
                problems.append(f'{module_name} is not importable ({error}); {SETUP_HINT}')
            else:
                top = sys.modules[package]
                versions.append(f'{package} {getattr(top, "__version__", "?")}')
    return versions, problems


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--compiled-only', action='store_true',
                        help='check only torch and mmcv with its compiled ops')
    parser.add_argument('--quiet', action='store_true', help='print problems only')
    args = parser.parse_args(argv)
    versions, problems = check_stack(compiled_only=args.compiled_only)
    for problem in problems:
        print(f'[check_env] MISSING: {problem}', file=sys.stderr)
    if not problems and not args.quiet:
        print(f'[check_env] OK: python {sys.version.split()[0]}, ' + ', '.join(versions))
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
