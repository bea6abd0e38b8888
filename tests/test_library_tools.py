"""MMDetection's and MMSegmentation's own tools on a user config that inherits a pola_mm
config and adds only ``custom_imports`` and generated data.

The tools are the ones the wheels ship (``<package>/.mim/tools/``, what ``mim train``
runs): ``train.py``, then ``test.py`` on the checkpoint it saved, then ``train.py
--resume``. They build whatever runner the config names, so this checks that every
pola_mm config brings its safe runner (stock MMEngine cannot read back its own
checkpoints under torch's weights-only loading).
"""
import os
import os.path as osp
import re
import subprocess
import sys
from typing import Dict

import mmdet
import mmseg
from mmengine.config import Config

from test_segmentation import ade_root  # noqa: F401  (fixture)
from test_segmentation import SMALL_DATA, SMALL_MODELS, SMALL_SCALES
from test_tools_detection import REPO, shapes_root, small_options  # noqa: F401  (fixture)

USER_IMPORTS = "custom_imports = dict(imports=['pola_mm'], allow_failed_imports=False)\n"


def library_tool(package, name: str) -> str:
    path = osp.join(osp.dirname(package.__file__), '.mim', 'tools', name)
    assert osp.isfile(path), f'{package.__name__} ships no {name}: {path}'
    return path


def run_library_tool(package, name: str, *args: str, cwd: str) -> str:
    """Run a library's packaged tool in a fresh interpreter; return its output."""
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env.pop('PYTHONPATH', None)
    result = subprocess.run([sys.executable, library_tool(package, name), *args],
                            capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f'{package.__name__} {name} failed:\n{output[-4000:]}'
    return output


def nested(options: Dict[str, object]) -> dict:
    """``{'a.b': 1}`` -> ``{'a': {'b': 1}}``: cfg-options written as config text."""
    tree: dict = {}
    for key, value in options.items():
        *parents, leaf = key.split('.')
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return tree


def test_mmdet_tools_train_test_and_resume_a_user_config(shapes_root, tmp_path):  # noqa: F811
    base = osp.join(REPO, 'configs', 'detection', 'mask-rcnn_pola-pvt-t_fpn_1x_coco.py')
    options, _ = small_options(base, shapes_root)
    config = tmp_path / 'user_mask_rcnn.py'
    config.write_text(f'_base_ = [{base!r}]\n' + USER_IMPORTS + ''.join(
        f'{key} = {value!r}\n' for key, value in nested(options).items()))
    work_dir = str(tmp_path / 'work')

    train_log = run_library_tool(mmdet, 'train.py', str(config), '--work-dir', work_dir,
                                 cwd=str(tmp_path))
    assert 'Epoch(train) [1][2/2]' in train_log
    checkpoint = osp.join(work_dir, 'epoch_1.pth')
    assert osp.isfile(checkpoint)

    test_log = run_library_tool(mmdet, 'test.py', str(config), checkpoint, '--work-dir',
                                work_dir, cwd=str(tmp_path))
    assert re.search(r'coco/bbox_mAP: \d', test_log), test_log[-2000:]
    assert re.search(r'coco/segm_mAP: \d', test_log), test_log[-2000:]

    resume_log = run_library_tool(mmdet, 'train.py', str(config), '--work-dir', work_dir,
                                  '--resume', '--cfg-options', 'train_cfg.max_epochs=2',
                                  cwd=str(tmp_path))
    assert 'resumed epoch: 1, iter: 2' in resume_log, resume_log[-2000:]
    assert 'Epoch(train) [2][2/2]' in resume_log
    assert osp.isfile(osp.join(work_dir, 'epoch_2.pth'))


def test_mmseg_tools_train_test_and_resume_a_user_config(ade_root, tmp_path):  # noqa: F811
    name = 'upernet_pola-swin-tiny_8xb2-160k_ade20k-512x512.py'
    base = osp.join(REPO, 'configs', 'segmentation', name)
    config = tmp_path / 'user_upernet.py'
    config.write_text(f'_base_ = [{base!r}]\n' + USER_IMPORTS +
                      SMALL_DATA.format(root=ade_root, iters=2) + SMALL_MODELS['swin'])
    assert Config.fromfile(str(config)).runner_type == 'pola_mm.PolaRunner'
    work_dir = str(tmp_path / 'work')

    train_log = run_library_tool(mmseg, 'train.py', str(config), '--work-dir', work_dir,
                                 '--cfg-options', *SMALL_SCALES, cwd=str(tmp_path))
    assert 'Iter(train) [2/2]' in train_log
    checkpoint = osp.join(work_dir, 'iter_2.pth')
    assert osp.isfile(checkpoint)

    test_log = run_library_tool(mmseg, 'test.py', str(config), checkpoint, '--work-dir',
                                work_dir, '--cfg-options', *SMALL_SCALES, cwd=str(tmp_path))
    assert re.search(r'mIoU: \d', test_log), test_log[-2000:]

    resume_log = run_library_tool(mmseg, 'train.py', str(config), '--work-dir', work_dir,
                                  '--resume', '--cfg-options', *SMALL_SCALES,
                                  'train_cfg.max_iters=4', 'default_hooks.checkpoint.interval=4',
                                  cwd=str(tmp_path))
    assert 'resumed epoch: 0, iter: 2' in resume_log, resume_log[-2000:]
    assert 'Iter(train) [4/4]' in resume_log
    assert osp.isfile(osp.join(work_dir, 'iter_4.pth'))
