"""Pre-flight checks: fail before training on paths that do not exist.

Without them a missing pretrained checkpoint surfaces only after the data loaders and the
model are built (or, for ``init_cfg``, as a warning while training goes on from random
weights), and a missing dataset path as an error deep inside a dataset class.
:func:`describe_dataset` names a dataset's files in the errors of datasets that cannot be
read or are empty, and :func:`check_sample_files` finds, before any is loaded, the image
files of a built dataset that are missing or empty (see
:meth:`pola_mm.engine.PolaRunner.build_dataloader`).
"""
import os
import os.path as osp
from collections import defaultdict
from typing import Dict, Iterator, List, Optional, Tuple

from mmengine.config import Config, ConfigDict

DATALOADERS_CHECKED_BEFORE_TRAINING = ('train_dataloader', 'val_dataloader')
SAMPLE_FILE_KEYS = ('img_path', 'seg_map_path')  # the files of a sample, in data infos


def _is_remote(path: str) -> bool:
    return '://' in path


def _pretrained_checkpoints(node, where: str) -> Iterator[Tuple[str, str]]:
    """Yield ``(path, where)`` for every ``init_cfg=dict(type='Pretrained', ...)``."""
    if isinstance(node, dict):
        if node.get('type') == 'Pretrained' and isinstance(node.get('checkpoint'), str):
            yield node['checkpoint'], where
        for key, value in node.items():
            yield from _pretrained_checkpoints(value, f'{where}.{key}')
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _pretrained_checkpoints(value, f'{where}[{index}]')


def _datasets(node, where: str) -> Iterator[Tuple[dict, str]]:
    """Yield the leaf dataset configs of a dataset config (through dataset wrappers)."""
    if isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _datasets(value, f'{where}[{index}]')
    elif isinstance(node, dict):
        if 'dataset' in node:
            yield from _datasets(node['dataset'], f'{where}.dataset')
        elif 'datasets' in node:
            yield from _datasets(node['datasets'], f'{where}.datasets')
        else:
            yield node, where


def _dataset_paths(dataset: dict) -> Iterator[Tuple[str, str]]:
    data_root = dataset.get('data_root') or ''
    if data_root:
        yield data_root, 'data_root'

    def under_root(path: str) -> str:
        return path if osp.isabs(path) or _is_remote(path) else osp.join(data_root, path)

    if dataset.get('ann_file'):
        yield under_root(dataset['ann_file']), 'ann_file'
    prefixes = dataset.get('data_prefix')
    if isinstance(prefixes, str):
        prefixes = dict(data_prefix=prefixes)
    for key, prefix in (prefixes or {}).items():
        if isinstance(prefix, str) and prefix:
            yield under_root(prefix), f'data_prefix.{key}'


def describe_dataset(dataset) -> str:
    """``"CocoDataset (ann_file '/data/coco/annotations/x.json')"``: a dataset config's
    type and the annotation files (else the data paths) of the datasets it wraps."""
    if not isinstance(dataset, dict):
        return type(dataset).__name__
    files = []
    for leaf, _ in _datasets(dataset, 'dataset'):
        paths = list(_dataset_paths(leaf))
        files += [f'{key} {path!r}' for path, key in paths if key == 'ann_file'] or [
            f'{key} {path!r}' for path, key in paths]
    return f"{dataset.get('type', 'dataset')} ({', '.join(files) or 'no files named'})"


def missing_paths(cfg: Config,
                  dataloaders=DATALOADERS_CHECKED_BEFORE_TRAINING) -> List[str]:
    """Describe every local checkpoint or dataset path of ``cfg`` that does not exist."""
    problems = []
    for path, where in _pretrained_checkpoints(cfg.get('model', {}), 'model'):
        if not _is_remote(path) and not osp.exists(path):
            problems.append(f'pretrained checkpoint {path!r} (set in {where}) does not exist')
    load_from: Optional[str] = cfg.get('load_from')
    if load_from and not _is_remote(load_from) and not osp.exists(load_from):
        problems.append(f'load_from checkpoint {load_from!r} does not exist')
    for name in dataloaders:
        dataloader = cfg.get(name)
        if not isinstance(dataloader, (dict, ConfigDict)) or 'dataset' not in dataloader:
            continue
        for dataset, where in _datasets(dataloader['dataset'], f'{name}.dataset'):
            for path, key in _dataset_paths(dataset):
                if not _is_remote(path) and not osp.exists(path):
                    problems.append(f'{where}.{key}: {path!r} does not exist')
    return problems


def check_training_paths(cfg: Config,
                         dataloaders=DATALOADERS_CHECKED_BEFORE_TRAINING) -> None:
    """Raise :class:`FileNotFoundError` naming every missing path of ``cfg``."""
    problems = missing_paths(cfg, dataloaders)
    if problems:
        raise FileNotFoundError('Missing paths, nothing was run:\n  ' + '\n  '.join(problems))


def _file_sizes(directory: str) -> Dict[str, int]:
    """Size of every file of ``directory`` (one directory scan instead of a stat a file)."""
    try:
        with os.scandir(directory) as entries:
            return {entry.name: entry.stat().st_size for entry in entries if entry.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return {}


def check_sample_files(dataset, description: str, max_listed: int = 10) -> None:
    """Fail on samples whose image (or segmentation map) file is missing or empty.

    Reads the data infos of a built dataset (``get_data_info``) and scans each directory
    once: seconds for COCO's 118k images. A file that exists but does not decode is
    found when it is loaded, by the pipeline's ``LoadImageFromFile``.

    Raises:
        FileNotFoundError: when files are missing; ValueError: when files are empty
            (0 bytes). Both name ``description`` and the first ``max_listed`` files.
    """
    if not hasattr(dataset, 'get_data_info') or not hasattr(dataset, '__len__'):
        return
    by_directory = defaultdict(list)
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        for key in SAMPLE_FILE_KEYS:
            path = info.get(key)
            if isinstance(path, str) and not _is_remote(path):
                by_directory[osp.dirname(path)].append(path)
    missing, empty = [], []
    for directory, paths in by_directory.items():
        sizes = _file_sizes(directory or '.')
        for path in paths:
            size = sizes.get(osp.basename(path))
            if size is None:
                missing.append(path)
            elif size == 0:
                empty.append(path)
    if missing or empty:
        problems = [f'{len(found)} {what}: {sorted(set(found))[:max_listed]}'
                    for what, found in (('missing', missing), ('empty (0 bytes)', empty))
                    if found]
        error = FileNotFoundError if missing else ValueError
        raise error(f'{description}: sample files {"; ".join(problems)}')
