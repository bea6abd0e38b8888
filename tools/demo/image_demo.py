"""Run a detection, segmentation or classification checkpoint on images and save the results.

The config's ``default_scope`` picks the OpenMMLab inferencer: mmdet's ``DetInferencer``,
mmseg's ``MMSegInferencer`` or mmpretrain's ``ImageClassificationInferencer``. For each
image ``<name>`` of INPUT (a file, or the images of a folder) it writes

* ``OUT/vis/<name>``: the image with the predictions drawn (boxes and masks, the
  label map, or the top-k classes; classification saves ``<stem>.png``),
* ``OUT/preds/<stem>.json``: the predictions (detections above ``--score-thr``, the
  classes present in the label map, or the top-k classes), and for segmentation
  ``OUT/preds/<stem>.png``, the label map (class index per pixel).

The checkpoint is read with weights-only unpickling (MMEngine's own objects allowed) and
must hold every weight of the config's model, with its shape, and no other (the
inferencers themselves only warn). For a classification config it may also be a
released PolaFormer / PolaFormer++ ImageNet file as it is, or ``tools/convert_checkpoint.py``'s
output: converted as the config's ``load_from`` is in ``tools/test.py``
(:func:`pola_mm.checkpoint.loading.load_model_checkpoint`), and refused, naming both
architectures, when it is of another one.

Example (the ``make demo`` detector)::

    python tools/demo/image_demo.py configs/demo/fcos_pola-pvt-mini_shapes-256.py \\
        work_dirs/demo_shapes_detection/epoch_12.pth \\
        work_dirs/demo_shapes_detection/data/val/00001.png --out-dir work_dirs/image_demo
"""
import argparse
import os.path as osp
from typing import Dict, List, Optional

import mmcv
import mmengine
import numpy as np
from mmdet.utils.misc import IMG_EXTENSIONS
from mmengine.config import Config, DictAction
from mmengine.utils import mkdir_or_exist, scandir
from PIL import Image

import pola_mm  # noqa: F401  (registers the Pola backbones)
from pola_mm.checkpoint import (checkpoint_globals, is_openmmlab_classifier, load_model_checkpoint,
                                local_checkpoint, read_checkpoint)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='detection, segmentation or classification config')
    parser.add_argument('checkpoint', help='checkpoint of that model (MMEngine format; for a '
                        'classification config also a released ImageNet file)')
    parser.add_argument('input', help='an image file or a folder of images')
    parser.add_argument('--out-dir', default='work_dirs/image_demo',
                        help='folder for vis/ and preds/')
    parser.add_argument('--device', default='cpu', help='e.g. cpu, cuda, cuda:1')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: smallest score drawn and saved')
    parser.add_argument('--topk', type=int, default=5,
                        help='classification: classes drawn and saved')
    parser.add_argument('--batch-size', type=int, default=1, help='images per forward')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, key=value pairs')
    return parser.parse_args(argv)


def list_images(path: str) -> List[str]:
    """``path`` itself, or the images of the folder ``path`` (sorted), each checked to be
    a readable image.

    Raises:
        FileNotFoundError: naming ``path`` when it does not exist, or a folder without
            images.
        ValueError: naming an image file that cannot be decoded.
    """
    if osp.isdir(path):
        images = [osp.join(path, name)
                  for name in sorted(scandir(path, IMG_EXTENSIONS, case_sensitive=False))]
        if not images:
            raise FileNotFoundError(f'no images ({", ".join(IMG_EXTENSIONS)}) in {path}')
    elif osp.isfile(path):
        images = [path]
    else:
        raise FileNotFoundError(f'image not found: {path}')
    for image in images:
        if mmcv.imread(image) is None:
            raise ValueError(f'cannot read image {image}: not an image, or a damaged file')
    return images


class DetectionDemo:
    """mmdet's ``DetInferencer``: boxes (and masks) above the score threshold."""

    task = 'detection'

    def __init__(self, cfg: Config, checkpoint: str, args):
        from mmdet.apis import DetInferencer
        self.inferencer = DetInferencer(model=cfg, weights=checkpoint, device=args.device)
        self.score_thr = args.score_thr

    def predict(self, images: List[str], out_dir: str, batch_size: int) -> List[Dict]:
        """Run the inferencer on ``images``, drawing into ``out_dir/vis``; returns one
        JSON-ready dict of predictions per image."""
        self.inferencer.show_progress = len(images) > 1
        samples = self.inferencer(
            images, batch_size=batch_size, return_datasamples=True,
            pred_score_thr=self.score_thr, out_dir=out_dir, no_save_pred=True)['predictions']
        classes = self.inferencer.model.dataset_meta['classes']
        results = []
        for image, sample in zip(images, samples):
            pred = self.inferencer.pred2dict(sample)
            keep = [i for i, score in enumerate(pred['scores']) if score >= self.score_thr]
            instances = []
            for i in keep:
                label = pred['labels'][i]
                instance = {'label': label, 'class': classes[label], 'score': pred['scores'][i],
                            'bbox': pred['bboxes'][i]}  # x1, y1, x2, y2 in image pixels
                if 'masks' in pred:
                    instance['mask'] = pred['masks'][i]  # COCO run-length encoding
                instances.append(instance)
            results.append(dict(visualization=osp.join(out_dir, 'vis', osp.basename(image)),
                                score_thr=self.score_thr, instances=instances))
        return results


class SegmentationDemo:
    """mmseg's ``MMSegInferencer``: the label map, drawn, saved and summarised."""

    task = 'segmentation'

    def __init__(self, cfg: Config, checkpoint: str, args):
        from mmseg.apis import MMSegInferencer
        self.inferencer = MMSegInferencer(model=cfg, weights=checkpoint, device=args.device)

    def predict(self, images: List[str], out_dir: str, batch_size: int) -> List[Dict]:
        """As :meth:`DetectionDemo.predict`; also writes the label maps to ``out_dir/preds``."""
        self.inferencer.show_progress = len(images) > 1
        samples = self.inferencer(images, batch_size=batch_size, return_datasamples=True,
                                  out_dir=out_dir, img_out_dir='vis')
        samples = samples if isinstance(samples, list) else [samples]
        classes = self.inferencer.model.dataset_meta['classes']
        results = []
        for image, sample in zip(images, samples):
            labels = sample.pred_sem_seg.data[0].cpu().numpy()
            label_file = osp.join(out_dir, 'preds', osp.splitext(osp.basename(image))[0] + '.png')
            mkdir_or_exist(osp.dirname(label_file))
            Image.fromarray(labels.astype(np.uint8 if len(classes) <= 256 else np.uint16)).save(
                label_file)
            present, pixels = np.unique(labels, return_counts=True)
            results.append(dict(
                visualization=osp.join(out_dir, 'vis', osp.basename(image)),
                label_map=label_file,
                height=int(labels.shape[0]),
                width=int(labels.shape[1]),
                classes_present=[
                    {'label': int(label), 'class': classes[label], 'pixels': int(count)}
                    for label, count in zip(present, pixels)]))
        return results


class ClassificationDemo:
    """mmpretrain's ``ImageClassificationInferencer``: the top-k classes."""

    task = 'classification'

    def __init__(self, cfg: Config, checkpoint: Optional[str], args):
        from mmpretrain.apis import ImageClassificationInferencer
        self.inferencer = ImageClassificationInferencer(  # False: not the config's load_from
            model=cfg, pretrained=checkpoint or False, device=args.device)
        self.topk = args.topk

    def predict(self, images: List[str], out_dir: str, batch_size: int) -> List[Dict]:
        """As :meth:`DetectionDemo.predict`, drawing the top-k classes."""
        samples = self.inferencer(images, batch_size=batch_size, return_datasamples=True)
        classes = self.inferencer.classes
        results = []
        for sample in samples:
            scores, labels = sample.pred_score.topk(min(self.topk, len(sample.pred_score)))
            sample.set_pred_label(labels)  # the visualiser draws every predicted label
            results.append(dict(topk=[
                {'label': int(label), 'class': classes[int(label)] if classes else None,
                 'score': float(score)} for score, label in zip(scores, labels)]))
        mkdir_or_exist(osp.join(out_dir, 'vis'))
        self.inferencer.visualize(images, samples, show_dir=osp.join(out_dir, 'vis'))
        for image, result in zip(images, results):
            result['visualization'] = osp.join(
                out_dir, 'vis', osp.splitext(osp.basename(image))[0] + '.png')
        return results


DEMOS = dict(mmdet=DetectionDemo, mmseg=SegmentationDemo, mmpretrain=ClassificationDemo)


def build_demo(config: str, checkpoint: str, args):
    """The demo of the config's scope, its inferencer holding every weight of the
    checkpoint.

    Raises:
        FileNotFoundError: naming a config or checkpoint that does not exist.
        ValueError: for a config of another scope.
        RuntimeError: naming the checkpoint when it is refused, unreadable, or does not
            fit the config's model (a classifier's may be a released file, see
            :func:`pola_mm.checkpoint.loading.load_model_checkpoint`).
    """
    for kind, path in (('config', config), ('checkpoint', checkpoint)):
        if '://' not in path and not osp.isfile(path):
            raise FileNotFoundError(f'{kind} file not found: {path}')
    cfg = Config.fromfile(config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    scope = cfg.get('default_scope')
    if scope not in DEMOS:
        raise ValueError(f'{config}: default_scope {scope!r} is none of {sorted(DEMOS)}')
    source = local_checkpoint(checkpoint)
    classifier = scope == 'mmpretrain'
    # A released classifier file is only read below: the inferencer would load none of
    # its keys (and warn about all of them), nor find class names in it.
    released = classifier and not is_openmmlab_classifier(read_checkpoint(source))
    with checkpoint_globals():  # the inferencer reads the file itself
        demo = DEMOS[scope](cfg, None if released else source, args)
    try:  # inferencers load non-strictly, only warning about keys that do not fit
        load_model_checkpoint(demo.inferencer.model, source, classifier=classifier)
    except RuntimeError as error:
        raise RuntimeError(f'{error} (the model of {config})') from None
    return demo


def main(argv=None):
    args = parse_args(argv)
    images = list_images(args.input)
    demo = build_demo(args.config, args.checkpoint, args)
    results = demo.predict(images, args.out_dir, args.batch_size)
    mkdir_or_exist(osp.join(args.out_dir, 'preds'))
    for image, result in zip(images, results):
        stem = osp.splitext(osp.basename(image))[0]
        mmengine.dump(dict(image=image, task=demo.task, **result),
                      osp.join(args.out_dir, 'preds', f'{stem}.json'), indent=2)
    print(f'{demo.task} of {len(images)} image(s): drawn in {osp.join(args.out_dir, "vis")}, '
          f'predictions in {osp.join(args.out_dir, "preds")}')
    return results


if __name__ == '__main__':
    main()
