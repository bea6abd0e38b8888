"""Semantic-segmentation label loading that refuses broken annotations.

mmseg's ``LoadAnnotations`` reads whatever PNG it is given: a missing file surfaces as a
bare ``FileNotFoundError`` deep in a worker, a label map of the wrong size is silently
cropped or padded by later transforms, and a value above the class range becomes an
out-of-range target for the loss (a CUDA assert, or a wrong mIoU). This transform checks
all three and names the offending file.
"""
import os.path as osp

import numpy as np
from mmcv.transforms import BaseTransform

from ..registry import TRANSFORMS


@TRANSFORMS.register_module()
class LoadCheckedSegAnnotations(BaseTransform):
    """mmseg's ``LoadAnnotations`` plus checks of file, size and label range.

    Semantics are mmseg's: with ``reduce_zero_label`` the raw label 0 becomes the ignore
    index and every other label drops by one; a ``label_map`` from the dataset applies
    afterwards. After that every value must lie in ``[0, num_classes)`` or equal
    ``ignore_index``. Image-only inputs (no ``seg_map_path`` key, as built by
    ``mmseg.apis.inference_model``) pass through unchanged.

    Args:
        num_classes (int): number of classes the model predicts (150 for ADE20K).
        ignore_index (int): label value excluded from loss and metrics. Defaults to 255.
        **kwargs: passed to mmseg's ``LoadAnnotations`` (``reduce_zero_label``,
            ``backend_args``, ``imdecode_backend``).

    Raises:
        FileNotFoundError: the label file does not exist.
        ValueError: the label map's (H, W) differs from the image's ``ori_shape``, or it
            holds values outside the class range.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, **kwargs) -> None:
        # imported here so that importing pola_mm does not import mmseg
        from mmseg.datasets.transforms import LoadAnnotations
        self.loader = LoadAnnotations(**kwargs)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f'num_classes must be a positive int, got {num_classes!r}')
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def transform(self, results: dict) -> dict:
        """Load ``results['gt_seg_map']`` (H, W) uint8 as mmseg does, then check it."""
        if 'seg_map_path' not in results:
            return results
        path = results['seg_map_path']
        if self.loader.backend_args is None and not osp.isfile(path):
            raise FileNotFoundError(
                f'label file {path} does not exist (image: {results.get("img_path")})')
        results = self.loader(results)
        labels = results['gt_seg_map']
        image_shape = results.get('ori_shape')
        if image_shape is not None and tuple(labels.shape[:2]) != tuple(image_shape[:2]):
            raise ValueError(
                f'label file {path} has size (H, W) = {tuple(labels.shape[:2])} but its image '
                f'{results.get("img_path")} has {tuple(image_shape[:2])}')
        values = np.unique(labels)
        bad = values[(values >= self.num_classes) & (values != self.ignore_index)]
        if bad.size:
            raw = ' (raw value - 1, after reduce_zero_label)' if self.loader.reduce_zero_label \
                else ''
            raise ValueError(
                f'label file {path} holds labels {bad.tolist()}{raw} outside the class '
                f'range [0, {self.num_classes}) and not the ignore index {self.ignore_index}')
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(loader={self.loader!r}, '
                f'num_classes={self.num_classes}, ignore_index={self.ignore_index})')
