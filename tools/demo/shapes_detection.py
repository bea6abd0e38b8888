"""The `make demo` job: a Pola-backbone detector learns the shapes dataset on CPU.

1. Writes the deterministic COCO-format shapes dataset (train and val, instance masks).
2. Trains ``configs/demo/fcos_pola-pvt-mini_shapes-256.py`` from random init.
3. Evaluates on val with mmdet's CocoMetric (the mAP table is printed).
4. Saves a few val images with the predictions drawn by mmdet's visualizer.

Example::

    python tools/demo/shapes_detection.py --work-dir work_dirs/demo
"""
import argparse
import os.path as osp
import time

import mmcv
from mmdet.apis import inference_detector
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import VISUALIZERS

from pola_mm.engine import build_runner
from pola_mm.testing import make_shapes_coco, shapes_coco_dataloaders

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO_CONFIG = osp.join(REPO, 'configs', 'demo', 'fcos_pola-pvt-mini_shapes-256.py')


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
    return parser.parse_args(argv)


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
    runner = build_runner(cfg)
    runner.train()  # ends with the val evaluation: CocoMetric prints the mAP table

    painted = paint_predictions(runner, data_root, osp.join(args.work_dir, 'painted'),
                                args.num_painted)
    print_log(f'Val images with predictions drawn: {osp.dirname(painted[0])}',
              logger='current')
    print_log(f'Demo finished in {(time.time() - start) / 60:.1f} min', logger='current')


if __name__ == '__main__':
    main()
