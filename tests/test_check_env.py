"""tools/check_env.py names the missing piece of a broken OpenMMLab stack."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

CHECK_ENV = Path(__file__).resolve().parents[1] / 'tools' / 'check_env.py'


@pytest.fixture()
def check_env():
    spec = importlib.util.spec_from_file_location('check_env', CHECK_ENV)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_complete_stack_reports_versions():
    result = subprocess.run([sys.executable, str(CHECK_ENV)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith('[check_env] OK:')
    for package in ('torch', 'mmcv', 'mmengine', 'mmdet', 'mmseg', 'mmpretrain', 'timm',
                    'pola_mm'):
        assert f' {package} ' in line


def test_mmcv_without_ops_is_named(check_env, monkeypatch):
    # mmcv.ops imports the compiled extension mmcv._ext; make that import fail.
    for name in [n for n in sys.modules if n == 'mmcv.ops' or n.startswith('mmcv.ops.')]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, 'mmcv._ext', None)
    versions, problems = check_env.check_stack()
    assert len(problems) == 1
    assert 'has no usable compiled ops' in problems[0]
    assert 'MMCV_WITH_OPS=1' in problems[0]


def test_mmcv_out_of_range_is_named(check_env, monkeypatch):
    import mmcv
    monkeypatch.setattr(mmcv, '__version__', '2.2.0')
    _, problems = check_env.check_stack(compiled_only=True)
    assert any('mmcv 2.2.0 is outside the range' in p for p in problems)


def test_missing_package_is_named(check_env, monkeypatch):
    monkeypatch.setitem(sys.modules, 'mmpretrain.models', None)
    _, problems = check_env.check_stack()
    assert len(problems) == 1
    assert problems[0].startswith('mmpretrain.models is not importable')
