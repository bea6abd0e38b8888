"""Evaluate a detection, segmentation or classification checkpoint.

Like ``tools/train.py``, this reads the config's ``default_scope`` and imports ``pola_mm``
itself. ``--show``/``--show-dir`` switch on the scope's visualisation hook
(``DetVisualizationHook``, ``SegVisualizationHook`` or mmpretrain's ``VisualizationHook``),
``--tta`` wraps the model in the config's ``tta_model`` with its ``tta_pipeline``, and
``--out`` dumps the predictions to a pickle (mmdet's ``DumpDetResults`` for detection).
The checkpoint is read weights-only (an ``http(s)://`` URL is downloaded first) and must
fit the model: :class:`pola_mm.engine.PolaRunner` loads it strictly, and a refused,
corrupted or mismatched file fails naming it, before any image is evaluated.

Example::

    python tools/test.py CONFIG CHECKPOINT --out results.pkl --show-dir vis
"""
import argparse
import os
import os.path as osp

from mmengine.config import Config, ConfigDict, DictAction

import pola_mm  # noqa: F401  (registers the Pola backbones)
from pola_mm.engine import build_runner


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the evaluation metrics')
    parser.add_argument('--out', help='pickle file to dump the predictions to')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir',
        help='directory (inside the work dir for detection and classification, as in '
        'mmdet and mmpretrain) where painted images are saved')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, key=value pairs')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def _scope(cfg: Config) -> str:
    return cfg.get('default_scope', 'mmengine')


def enable_visualization(cfg: Config, args) -> None:
    """Turn on the scope's visualisation hook for ``--show``/``--show-dir``."""
    hook = cfg.default_hooks.get('visualization')
    if hook is None:
        raise RuntimeError(
            '--show/--show-dir need default_hooks.visualization in the config.')
    scope = _scope(cfg)
    hook.show = args.show
    hook.wait_time = args.wait_time
    if scope == 'mmdet':
        hook.draw = True
        if args.show_dir:
            hook.test_out_dir = args.show_dir
    elif scope == 'mmseg':
        hook.draw = True
        if args.show_dir:
            cfg.visualizer.save_dir = args.show_dir
            cfg.visualizer.alpha = 1.0
    elif scope == 'mmpretrain':
        hook.enable = True
        if args.show_dir:
            hook.out_dir = args.show_dir
    else:
        raise RuntimeError(f'--show/--show-dir: unsupported default_scope {scope!r}.')


def enable_tta(cfg: Config) -> None:
    """Replace the model by ``cfg.tta_model`` around it and the pipeline by ``tta_pipeline``."""
    missing = [key for key in ('tta_model', 'tta_pipeline') if key not in cfg]
    if missing:
        raise RuntimeError(f'--tta needs {" and ".join(missing)} in the config.')
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


def add_dump_metric(cfg: Config, out: str) -> None:
    """Append a metric that pickles the predictions to ``out``."""
    if not out.endswith(('.pkl', '.pickle')):
        raise ValueError(f'--out must be a .pkl or .pickle file, got {out!r}.')
    dump_type = 'DumpDetResults' if _scope(cfg) == 'mmdet' else 'DumpResults'
    dump = ConfigDict(type=dump_type, out_file_path=out)
    evaluator = cfg.test_evaluator
    if isinstance(evaluator, (list, tuple)):
        cfg.test_evaluator = [*evaluator, dump]
    elif 'metrics' in evaluator:
        evaluator.metrics = [*evaluator.metrics, dump]
    else:
        cfg.test_evaluator = [evaluator, dump]


def build_config(args) -> Config:
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    cfg.resume = False
    if args.show or args.show_dir:
        enable_visualization(cfg, args)
    if args.tta:
        enable_tta(cfg)
    if args.out is not None:
        add_dump_metric(cfg, args.out)
    return cfg


def main(argv=None):
    args = parse_args(argv)
    runner = build_runner(build_config(args))
    return runner.test()


if __name__ == '__main__':
    main()
