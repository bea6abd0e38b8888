"""Train a detection, segmentation or classification model from a config.

The config's ``default_scope`` (mmdet, mmseg or mmpretrain) is initialised and ``pola_mm``
is imported here, so configs need no ``custom_imports`` for the Pola backbones. Training
runs in :class:`pola_mm.engine.PolaRunner` unless the config names its own ``runner_type``:
checkpoints read weights-only and written atomically, ``--resume`` continuing where a
killed run saved last (to the same weights, with a fixed seed), a stop at the first NaN or
infinite loss, gloo on CPU and pre-flight checks of paths, datasets and images.

Example::

    python tools/train.py configs/detection/mask-rcnn_pola-pvt-t_fpn_1x_coco.py
    bash tools/dist_train.sh CONFIG 8 --auto-scale-lr
"""
import argparse
import logging
import os
import os.path as osp
from typing import Optional

from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.optim import AmpOptimWrapper, OptimWrapper

import pola_mm  # noqa: F401  (registers the Pola backbones)
from pola_mm.engine import build_runner


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from the given checkpoint, or from the latest checkpoint in the '
        'work dir when no path is given')
    parser.add_argument(
        '--amp',
        action='store_true',
        help='enable automatic mixed precision training: the optim_wrapper, an OptimWrapper, '
        'becomes an AmpOptimWrapper with a dynamic loss scale; an AmpOptimWrapper is left '
        'as the config sets it (the PolaFormer++ configs: a static loss scale of 512)')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the learning rate by the actual batch size over '
        'auto_scale_lr.base_batch_size')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, key=value pairs such as '
        'train_cfg.max_epochs=1')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


# Scopes whose registries find MMEngine's optim wrappers under their own names (the
# libraries' registries are MMEngine's children and define no wrappers of these names).
MMENGINE_WRAPPER_SCOPES = ('', 'mmengine', 'mmdet', 'mmseg', 'mmpretrain')


def _wrapper_name(wrapper_type) -> Optional[str]:
    """``'OptimWrapper'`` or ``'AmpOptimWrapper'`` when ``wrapper_type`` (an optim_wrapper
    config's ``type``: a name, scoped or not, or a class) is MMEngine's, else None."""
    if isinstance(wrapper_type, type):
        known = {OptimWrapper: 'OptimWrapper', AmpOptimWrapper: 'AmpOptimWrapper'}
        return known.get(wrapper_type)
    scope, _, name = str(wrapper_type).rpartition('.')
    if scope in MMENGINE_WRAPPER_SCOPES and name in ('OptimWrapper', 'AmpOptimWrapper'):
        return name
    return None


def enable_amp(cfg: Config) -> None:
    """``--amp``, as MMDetection's ``tools/train.py``: an ``OptimWrapper`` (the default
    type) becomes an ``AmpOptimWrapper`` with a dynamic loss scale; an ``AmpOptimWrapper``
    (the PolaFormer++ configs', with their static loss scale of 512) is left as it is.

    Raises:
        RuntimeError: naming the type, for any other optim_wrapper type.
    """
    wrapper_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
    name = _wrapper_name(wrapper_type)
    if name == 'AmpOptimWrapper':
        loss_scale = cfg.optim_wrapper.get('loss_scale', 'dynamic')
        print_log('--amp: AMP training is already enabled in the config (optim_wrapper type '
                  f'{wrapper_type!r}, loss_scale {loss_scale!r}); it is left as it is.',
                  logger='current', level=logging.WARNING)
        return
    if name != 'OptimWrapper':
        shown = getattr(wrapper_type, '__qualname__', wrapper_type)
        raise RuntimeError(
            f'--amp turns an OptimWrapper into an AmpOptimWrapper, but the config\'s '
            f'optim_wrapper type is {shown!r}; enable mixed precision in its settings '
            'instead, or train without --amp.')
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.loss_scale = 'dynamic'


def build_config(args) -> Config:
    """Load ``args.config`` and apply the command-line options to it."""
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)

    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])

    if args.amp:
        enable_amp(cfg)

    if args.auto_scale_lr:
        auto_scale_lr = cfg.get('auto_scale_lr')
        if not isinstance(auto_scale_lr, dict) or 'base_batch_size' not in auto_scale_lr:
            raise RuntimeError(
                '--auto-scale-lr needs auto_scale_lr=dict(base_batch_size=...) in the config '
                f'(it has auto_scale_lr={auto_scale_lr!r}).')
        cfg.auto_scale_lr.enable = True

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def main(argv=None):
    args = parse_args(argv)
    runner = build_runner(build_config(args))
    runner.train()
    return runner


if __name__ == '__main__':
    main()
