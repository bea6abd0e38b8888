"""Detection learns: the ``make demo`` detector, trained for about a minute on CPU on the
generated shapes, reaches a bbox mAP@0.5 well above chance; ``make demo`` fails when its
own mAP is below the bar it states.
"""
import importlib.util
import json
import os.path as osp
import re
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MessageHub

from pola_mm.engine import build_runner
from pola_mm.testing import SHAPE_CLASSES, make_shapes_coco, shapes_coco_dataloaders
from subprocess_env import child_env

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO = osp.join(REPO, 'tools', 'demo', 'shapes_detection.py')
DEMO_CONFIG = osp.join(REPO, 'configs', 'demo', 'fcos_pola-pvt-mini_shapes-256.py')


def _load_demo():
    spec = importlib.util.spec_from_file_location('pola_demo_shapes_detection', DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_demo()

# Learning check: the demo's FCOS + mini Pola-PVT from random init on 128-px images, 6
# epochs over 256 training images (192 iterations of batch 8, about 0.35 s each on 2 idle
# cores), the demo's AdamW lr 2e-3 with a 20-iteration warm-up. A detector that sees no
# pixels scores mAP@0.5 0.006-0.008 on the 100 val images (chance_bbox_map50, computed in
# the test); the trained one reached 0.348 (seed 0) and 0.392 (seed 0, the demo's
# 100-iteration warm-up).
IMAGE_SIZE = 128
LEARN_TRAIN_IMAGES = 256
LEARN_VAL_IMAGES = 100
LEARN_EPOCHS = 6
LEARN_WARMUP_ITERS = 20
LEARN_MAP50_BAR = 0.25
CHANCE_BOXES = 100  # per image: the most detections CocoMetric's mAP counts


def coco_bbox_metrics(ann_file: str, predictions: dict) -> dict:
    """mmdet's CocoMetric (bbox) on ``{image id: (xyxy boxes, scores, labels)}``."""
    from mmdet.evaluation import CocoMetric
    metric = CocoMetric(ann_file=ann_file, metric='bbox')
    metric.dataset_meta = dict(classes=SHAPE_CLASSES)
    with open(ann_file) as f:
        sizes = {image['id']: (image['height'], image['width'])
                 for image in json.load(f)['images']}
    samples = [
        dict(img_id=image_id, ori_shape=sizes[image_id],
             pred_instances=dict(bboxes=torch.as_tensor(boxes, dtype=torch.float32),
                                 scores=torch.as_tensor(scores, dtype=torch.float32),
                                 labels=torch.as_tensor(labels)))
        for image_id, (boxes, scores, labels) in predictions.items()]
    metric.process({}, samples)
    return metric.evaluate(len(samples))


def chance_bbox_map50(data_root: str, seed: int = 0) -> float:
    """bbox mAP@0.5 on val of a detector that sees no pixels but knows the training boxes.

    For each val image it predicts :data:`CHANCE_BOXES` boxes, each a training box drawn
    at random (so the positions and sizes follow the data's statistics), with a uniformly
    random class and score, and is scored by the same CocoMetric as the trained model.
    """
    annotations = osp.join(data_root, 'annotations')
    with open(osp.join(annotations, 'instances_train.json')) as f:
        train_boxes = np.array([ann['bbox'] for ann in json.load(f)['annotations']])
    train_boxes[:, 2:] += train_boxes[:, :2]  # xywh -> xyxy
    val_file = osp.join(annotations, 'instances_val.json')
    with open(val_file) as f:
        val_ids = [image['id'] for image in json.load(f)['images']]
    rng = np.random.default_rng(seed)
    predictions = {
        image_id: (train_boxes[rng.integers(len(train_boxes), size=CHANCE_BOXES)],
                   rng.random(CHANCE_BOXES),
                   rng.integers(len(SHAPE_CLASSES), size=CHANCE_BOXES))
        for image_id in val_ids}
    return coco_bbox_metrics(val_file, predictions)['coco/bbox_mAP_50']


def learning_config(data_root: str, work_dir: str, seed: int = 0) -> Config:
    """The demo config at :data:`IMAGE_SIZE` px, trained :data:`LEARN_EPOCHS` epochs."""
    cfg = Config.fromfile(DEMO_CONFIG)
    cfg.merge_from_dict(shapes_coco_dataloaders(data_root, IMAGE_SIZE, batch_size=8,
                                                with_mask=False))
    cfg.merge_from_dict({
        'model.backbone.pretrain_img_size': IMAGE_SIZE,
        'train_cfg.max_epochs': LEARN_EPOCHS,
        'train_cfg.val_interval': LEARN_EPOCHS,
        'default_hooks.checkpoint': None,
        'randomness': dict(seed=seed),
    })
    cfg.param_scheduler[0].end = LEARN_WARMUP_ITERS
    cfg.param_scheduler[-1].end = LEARN_EPOCHS
    cfg.work_dir = work_dir
    return cfg


def test_short_training_detects_shapes_well_above_chance(tmp_path):
    """FCOS with the demo's mini Pola-PVT from random init, AdamW lr 2e-3, about a minute
    of training on CPU, then the val evaluation at the end of the training."""
    data_root = str(tmp_path / 'data')
    make_shapes_coco(data_root, image_size=IMAGE_SIZE,
                     num_images=dict(train=LEARN_TRAIN_IMAGES, val=LEARN_VAL_IMAGES))
    chance = chance_bbox_map50(data_root)
    runner = build_runner(learning_config(data_root, str(tmp_path / 'work')))
    start = time.perf_counter()
    runner.train()
    elapsed = time.perf_counter() - start
    map50 = runner.message_hub.get_scalar('val/coco/bbox_mAP_50').current()
    assert map50 >= LEARN_MAP50_BAR > 3 * chance, (map50, chance, elapsed)


def test_demo_exits_non_zero_below_its_bar(tmp_path):
    """``make demo``'s script with a detector that cannot learn (lr 0), on a few images for
    one epoch: it exits with status 1 and an error naming the measured mAP and the bar."""
    command = [sys.executable, DEMO, '--work-dir', str(tmp_path), '--train-images', '4',
               '--val-images', '4', '--batch-size', '4', '--epochs', '1', '--num-painted', '1',
               '--cfg-options', 'optim_wrapper.optimizer.lr=0',
               # keep the untrained detector's low-score boxes, so that a mAP is computed
               'model.test_cfg.score_thr=0']
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300,
                            env=child_env(REPO))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    failure = re.search(r'^Demo failed: val bbox mAP (\d\.\d{3}) is below the bar of '
                        + re.escape(f'{demo.BBOX_MAP_BAR} '), output, re.MULTILINE)
    assert failure, output[-3000:]
    assert 0 <= float(failure.group(1)) < demo.BBOX_MAP_BAR
    assert osp.isfile(tmp_path / 'painted' / '00001.png')


def test_demo_bar_check():
    """The verdict of the demo on the runner's bbox mAP: passed at the bar, failed below
    it and when CocoMetric computed none."""
    runner = SimpleNamespace(message_hub=MessageHub.get_instance('demo_bar_check'))
    assert demo.val_bbox_map(runner) is None
    with pytest.raises(SystemExit, match=r'no bbox mAP \(no detection at all\); the bar is '
                       + re.escape(str(demo.BBOX_MAP_BAR))):
        demo.check_bbox_map(None)
    runner.message_hub.update_scalar(demo.BBOX_MAP_SCALAR, demo.BBOX_MAP_BAR)
    demo.check_bbox_map(demo.val_bbox_map(runner))
    with pytest.raises(SystemExit, match=r'val bbox mAP 0\.100 is below the bar of 0\.2 '):
        demo.check_bbox_map(0.1, bar=0.2)
