"""The `make demo` job: a Pola-backbone detector learns the shapes dataset on CPU.

1. Writes the deterministic COCO-format shapes dataset (train and val, instance masks).
2. Trains ``configs/demo/fcos_pola-pvt-mini_shapes-256.py`` from random init.
3. Evaluates on val with mmdet's CocoMetric (the mAP table is printed).
4. Saves a few val images with the predictions drawn by mmdet's visualizer.
5. Exits non-zero, with an error naming both values, when the val bbox mAP is below
   :data:`BBOX_MAP_BAR`.

Example::

    python tools/demo/shapes_detection.py --work-dir work_dirs/demo
    # a crippled run, which must fail the bar
    python tools/demo/shapes_detection.py --cfg-options optim_wrapper.optimizer.lr=0
"""
import argparse
import logging
import os.path as osp
import time
from typing import Optional

import mmcv
from mmdet.apis import inference_detector
from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.registry import VISUALIZERS

from pola_mm.engine import build_runner
from pola_mm.testing import make_shapes_coco, shapes_coco_dataloaders

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO_CONFIG = osp.join(REPO, 'configs', 'demo', 'fcos_pola-pvt-mini_shapes-256.py')
# The demo fails below this val bbox mAP (COCO mAP@[.5:.95], CocoMetric's ``bbox_mAP``).
# Full runs of the demo measured 0.739-0.771 (mAP@0.5 0.904-0.920); the training is not
# bit-deterministic and the bar leaves room for that spread, while a detector that learnt
# little or nothing (mAP near 0) fails.
BBOX_MAP_BAR = 0.65
# Where the runner keeps the val bbox mAP: mmengine's RuntimeInfoHook stores each metric of
# the last val evaluation as the message hub scalar 'val/<metric>'.
BBOX_MAP_SCALAR = 'val/coco/bbox_mAP'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', default='work_dirs/demo_shapes_detection')
    parser.add_argument('--config', default=DEMO_CONFIG)
    parser.add_argument('--train-images', type=int, default=800)
    parser.add_argument('--val-images', type=int, default=200)
    parser.add_argument('--epochs', type=int, help='override the config\'s max_epochs')
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--num-painted', type=int, default=4,
                        help='val images saved with their predictions drawn')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config last, key=value pairs such '
                        'as optim_wrapper.optimizer.lr=0')
    return parser.parse_args(argv)


def val_bbox_map(runner) -> Optional[float]:
    """The bbox mAP of ``runner``'s last val evaluation, or None when it has none
    (CocoMetric computes none when the detector made no detection on the whole val set)."""
    scalar = runner.message_hub.log_scalars.get(BBOX_MAP_SCALAR)
    return None if scalar is None else float(scalar.current())


def check_bbox_map(bbox_map: Optional[float], bar: float = BBOX_MAP_BAR) -> None:
    """Log the verdict on the val ``bbox_map`` (None: not computed).

    Raises:
        SystemExit: with the error message (exit status 1) when ``bbox_map`` is None or
            below ``bar``.
    """
    if bbox_map is not None and bbox_map >= bar:
        print_log(f'Demo passed: val bbox mAP {bbox_map:.3f} >= {bar}', logger='current')
        return
    if bbox_map is None:
        failure = 'the val evaluation gave no bbox mAP (no detection at all); the bar is'
    else:
        failure = f'val bbox mAP {bbox_map:.3f} is below the bar of'
    message = (f'Demo failed: {failure} {bar} '
               '(BBOX_MAP_BAR in tools/demo/shapes_detection.py)')
    print_log(message, logger='current', level=logging.ERROR)
    raise SystemExit(message)


def paint_predictions(runner, data_root: str, out_dir: str, count: int) -> list:
    """Draw the model's detections on the first ``count`` val images; return the files."""
    visualizer = VISUALIZERS.build(
        dict(type='DetLocalVisualizer', name='demo_painter', save_dir=out_dir))
    visualizer.dataset_meta = runner.test_dataloader.dataset.metainfo
    model = runner.model
    model.cfg = runner.cfg
    written = []
    for index in range(1, count + 1):
        image_path = osp.join(data_root, 'val', f'{index:05d}.png')
        result = inference_detector(model, image_path)
        out_file = osp.join(out_dir, f'{index:05d}.png')
        visualizer.add_datasample(
            f'{index:05d}', mmcv.imread(image_path, channel_order='rgb'), result,
            draw_gt=False, pred_score_thr=0.3, out_file=out_file)
        written.append(out_file)
    return written


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    data_root = osp.join(args.work_dir, 'data')
    make_shapes_coco(
        data_root, num_images=dict(train=args.train_images, val=args.val_images),
        image_size=256, seed=0)
    print_log(f'Shapes dataset written to {data_root} '
              f'({args.train_images} train, {args.val_images} val images) '
              f'in {time.time() - start:.0f} s', logger='current')

    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(shapes_coco_dataloaders(
        data_root, 256, batch_size=args.batch_size, with_mask=False))
    cfg.work_dir = args.work_dir
    if args.epochs is not None:
        cfg.train_cfg.max_epochs = args.epochs
        cfg.train_cfg.val_interval = args.epochs
        cfg.param_scheduler[-1].end = args.epochs
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    runner = build_runner(cfg)
    runner.train()  # ends with the val evaluation: CocoMetric prints the mAP table
    bbox_map = val_bbox_map(runner)

    if args.num_painted > 0:
        painted_dir = osp.join(args.work_dir, 'painted')
        paint_predictions(runner, data_root, painted_dir, args.num_painted)
        print_log(f'Val images with predictions drawn: {painted_dir}', logger='current')
    print_log(f'Demo finished in {(time.time() - start) / 60:.1f} min', logger='current')
    check_bbox_map(bbox_map)


if __name__ == '__main__':
    main()
