"""Pre-flight checks: fail before training on paths that do not exist.

Without them a missing pretrained checkpoint surfaces only after the data loaders and the
model are built (or, for ``init_cfg``, as a warning while training goes on from random
weights), and a missing dataset path as an error deep inside a dataset class.
"""
import os.path as osp
from typing import Iterator, List, Optional, Tuple

from mmengine.config import Config, ConfigDict

DATALOADERS_CHECKED_BEFORE_TRAINING = ('train_dataloader', 'val_dataloader')


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
