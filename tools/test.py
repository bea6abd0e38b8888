"""Evaluate a detection, segmentation or classification checkpoint.

Like ``tools/train.py``, this reads the config's ``default_scope`` and imports ``pola_mm``
itself. ``--show``/``--show-dir`` switch on the scope's visualisation hook
(``DetVisualizationHook``, ``SegVisualizationHook`` or mmpretrain's ``VisualizationHook``,
which paints every image here, as in mmpretrain's ``tools/test.py``, not 1 in 5000),
``--tta`` wraps the model in the config's ``tta_model`` with its ``tta_pipeline`` (a
detection or classification config without them gets the default flip TTA of mmdet's or
mmpretrain's ``tools/test.py``, unless its model predicts masks, which mmdet's TTA cannot
merge).
``--out`` follows each library's ``tools/test.py``: for detection and classification it is
a pickle file the predictions are dumped to (mmdet's ``DumpDetResults`` for detection), for
segmentation a directory where the evaluator writes the predicted label maps as PNG files
while still computing the metrics.
The checkpoint is read weights-only (an ``http(s)://`` URL is downloaded first) and must
fit the model: :class:`pola_mm.engine.PolaRunner` loads it strictly, and a refused,
corrupted or mismatched file fails naming it, before any image is evaluated.

Example::

    python tools/test.py DET_CONFIG CHECKPOINT --out results.pkl --show-dir vis
    python tools/test.py SEG_CONFIG CHECKPOINT --out pred_label_maps
"""
import argparse
import copy
import os
import os.path as osp
import warnings
from typing import Optional

from mmengine.config import Config, ConfigDict, DictAction

import pola_mm  # noqa: F401  (registers the Pola backbones)
from pola_mm.engine import build_runner


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save the evaluation metrics')
    parser.add_argument(
        '--out',
        help='detection and classification: .pkl or .pickle file to dump the predictions '
        'to; segmentation: directory where the predicted label maps are written as PNG '
        'files (as in mmseg, the metrics are still computed)')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir',
        help="directory where painted images are saved: for detection inside the work "
        "dir's timestamped folder (as in mmdet), for segmentation and classification "
        "under the path as given (as in mmseg and mmpretrain). Detection and "
        "classification paint every test image (classification as mmpretrain's "
        "tools/test.py, whose --interval defaults to 1, unless the config sets "
        "default_hooks.visualization.interval); segmentation, as mmseg's tools/test.py, "
        "every default_hooks.visualization.interval-th batch (50 unless set; 1 paints "
        "every image)")
    parser.add_argument(
        '--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument(
        '--tta',
        action='store_true',
        help="test-time augmentation with the config's tta_model and tta_pipeline; a "
        "box-only detection or a classification config without them gets mmdet's or "
        "mmpretrain's default (flip; boxes merged by NMS, class scores averaged); mmdet "
        "has none for models that predict masks")
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
        # every image, as MMPretrain's tools/test.py (its --interval defaults to 1), unless
        # the config sets an interval; the hook's own default paints 1 image in 5000
        hook.setdefault('interval', 1)
        if args.show_dir:
            hook.out_dir = args.show_dir
    else:
        raise RuntimeError(f'--show/--show-dir: unsupported default_scope {scope!r}.')


# MMDetection 3.3's default TTA (its tools/test.py): the test image and its horizontal flip,
# the boxes of both merged by NMS.
DEFAULT_DET_TTA_MODEL = dict(
    type='DetTTAModel', tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
DEFAULT_DET_TTA_PACK = dict(
    type='PackDetInputs',
    meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip',
               'flip_direction'))


def _test_dataset(cfg: Config) -> ConfigDict:
    """The test dataset's config, inside its dataset wrappers if any."""
    dataset = cfg.test_dataloader.dataset
    while 'dataset' in dataset:
        dataset = dataset.dataset
    return dataset


def _mask_heads(node, prefix: str = 'model') -> list:
    """The keys of ``node`` (a model config) that hold a mask head."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == 'mask_head' and value is not None:
                found.append(f'{prefix}.{key}')
            else:
                found += _mask_heads(value, f'{prefix}.{key}')
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            found += _mask_heads(value, f'{prefix}.{index}')
    return found


def add_default_det_tta(cfg: Config) -> None:
    """Add mmdet's default ``tta_model`` and flip ``tta_pipeline`` where the config lacks
    them, as MMDetection's ``tools/test.py`` does.

    Raises:
        RuntimeError: when there is no sensible default: the model predicts masks, which
            mmdet's ``DetTTAModel`` cannot merge, or the test pipeline does not end with
            ``PackDetInputs``, which the flip augmentation replaces.
    """
    if 'tta_model' not in cfg:
        masks = _mask_heads(cfg.model)
        if masks:
            raise RuntimeError(
                f'--tta: the config has no tta_model and its model predicts masks '
                f'({", ".join(masks)}); mmdet\'s default DetTTAModel merges boxes only '
                '(mmdet 3.3 has no TTA for instance segmentation), so there is no default '
                'here: test without --tta, or use a box-only detector (the RetinaNet '
                'configs set their own tta_model and tta_pipeline).')
        warnings.warn('--tta: no tta_model in the config, using mmdet\'s default '
                      f'{DEFAULT_DET_TTA_MODEL}.')
        cfg.tta_model = copy.deepcopy(DEFAULT_DET_TTA_MODEL)
    if 'tta_pipeline' not in cfg:
        cfg.tta_pipeline = flip_tta_pipeline(cfg, 'PackDetInputs', DEFAULT_DET_TTA_PACK)


def flip_tta_pipeline(cfg: Config, pack: str, packing: Optional[dict] = None) -> list:
    """The default TTA pipeline of MMDetection's and MMPretrain's ``tools/test.py``: the
    test pipeline, its last transform (``pack``) run on each image flipped horizontally
    and not (``packing`` instead of it, if given).

    Raises:
        RuntimeError: when the test pipeline does not end with ``pack``.
    """
    pipeline = copy.deepcopy(_test_dataset(cfg).pipeline)
    last = pipeline[-1].get('type') if pipeline else None
    if last is None or last.split('.')[-1] != pack:
        raise RuntimeError(
            '--tta: the config has no tta_pipeline and the default flip pipeline replaces '
            f"the test pipeline's last transform, {pack}, but it ends with {last!r}; set "
            'tta_pipeline in the config.')
    warnings.warn('--tta: no tta_pipeline in the config, using the default: the test '
                  'pipeline with each image also flipped horizontally.')
    pipeline[-1] = dict(
        type='TestTimeAug',
        transforms=[[dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)],
                    [copy.deepcopy(packing or pipeline[-1])]])
    return pipeline


def add_default_cls_tta(cfg: Config) -> None:
    """Add MMPretrain's default ``tta_model`` (class scores averaged) and flip
    ``tta_pipeline`` where the config lacks them, as MMPretrain's ``tools/test.py`` does."""
    if 'tta_model' not in cfg:
        warnings.warn('--tta: no tta_model in the config, using mmpretrain\'s default '
                      'AverageClsScoreTTA.')
        cfg.tta_model = dict(type='mmpretrain.AverageClsScoreTTA')
    if 'tta_pipeline' not in cfg:
        cfg.tta_pipeline = flip_tta_pipeline(cfg, 'PackInputs')


def enable_tta(cfg: Config) -> None:
    """Replace the model by ``cfg.tta_model`` around it and the test dataset's pipeline by
    ``cfg.tta_pipeline``; for a detection or classification config, mmdet's or mmpretrain's
    defaults fill in what is missing.

    Raises:
        RuntimeError: when the config lacks ``tta_model`` or ``tta_pipeline`` and has no
            default (see :func:`add_default_det_tta`).
    """
    if _scope(cfg) == 'mmdet':
        add_default_det_tta(cfg)
    elif _scope(cfg) == 'mmpretrain':
        add_default_cls_tta(cfg)
    missing = [key for key in ('tta_model', 'tta_pipeline') if key not in cfg]
    if missing:
        raise RuntimeError(f'--tta needs {" and ".join(missing)} in the config (there are '
                           'defaults for detection and classification configs only).')
    _test_dataset(cfg).pipeline = cfg.tta_pipeline
    cfg.tta_model.module = cfg.model
    cfg.model = cfg.tta_model


def _metric_cfgs(evaluator) -> list:
    """The metric configs of a test evaluator config (a metric, a list, or ``metrics``)."""
    if isinstance(evaluator, (list, tuple)):
        return list(evaluator)
    if 'metrics' in evaluator:
        return list(evaluator.metrics)
    return [evaluator]


def add_output(cfg: Config, out: str) -> None:
    """Make the test evaluator write the predictions to ``out``.

    Segmentation (``default_scope='mmseg'``): as MMSegmentation's ``tools/test.py``, the
    metrics get ``output_dir=out`` and ``keep_results=True``; ``IoUMetric`` then writes one
    label map PNG per image to the directory ``out`` (``reduce_zero_label`` undone) and
    still computes the metrics. Otherwise a metric that pickles the predictions to the file
    ``out`` is appended (mmdet's ``DumpDetResults`` for detection, else ``DumpResults``).

    Raises:
        ValueError: for a segmentation config, when ``out`` is a pickle path or an existing
            file; for the other configs, when ``out`` is not a .pkl or .pickle path.
    """
    scope = _scope(cfg)
    pickle_path = out.endswith(('.pkl', '.pickle'))
    if scope == 'mmseg':
        if pickle_path or osp.isfile(out):
            raise ValueError(
                f'--out {out!r}: for a segmentation config --out is a directory, where the '
                'predicted label maps are written as PNG files (as in MMSegmentation\'s '
                f'tools/test.py), not a file; pass a directory, e.g. '
                f'--out {osp.splitext(out)[0] + "_label_maps"!r}.')
        for metric in _metric_cfgs(cfg.test_evaluator):
            metric.output_dir = out
            metric.keep_results = True
        return
    if not pickle_path:
        raise ValueError(
            f'--out {out!r}: for a detection or classification config (default_scope '
            f'{scope!r}) --out is the .pkl or .pickle file the predictions are dumped to '
            '(a directory, for label maps, is for segmentation configs only).')
    dump_type = 'DumpDetResults' if scope == 'mmdet' else 'DumpResults'
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
        add_output(cfg, args.out)
    return cfg


def main(argv=None):
    args = parse_args(argv)
    runner = build_runner(build_config(args))
    return runner.test()


if __name__ == '__main__':
    main()
