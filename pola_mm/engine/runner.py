"""``PolaRunner``: MMEngine's Runner with safe checkpoints, CPU distributed training and
pre-flight checks.

* Checkpoints are read with ``weights_only=True`` loading, allowing only the objects
  MMEngine itself writes, URLs too (see :mod:`pola_mm.checkpoint.reader`); a refused, truncated or
  corrupted file fails with an error naming it. Resuming and evaluating load strictly:
  a checkpoint of another model fails with the keys that do not fit.
* Checkpoints are written atomically (:mod:`.atomic_write`), ``last_checkpoint`` too
  (:class:`.AtomicCheckpointHook` replaces MMEngine's ``CheckpointHook``), so that a run
  killed at any moment resumes from a complete checkpoint.
* Two more default hooks: :class:`.FiniteLossHook` stops training at a NaN or infinite
  loss, :class:`.RandomStateHook` saves and restores the random generators' states.
* With the ``pytorch`` launcher on a machine without CUDA, the process group uses gloo and
  the model is wrapped in DDP without device ids (MMEngine assumes NCCL and a GPU).
* Before training, :func:`.preflight.check_training_paths` fails on a missing pretrained
  checkpoint or dataset path, naming it; a dataset that cannot be read, has no samples
  or has missing or empty image files fails when its data loader is built, naming its
  annotation file.
"""
import copy
import datetime
import os.path as osp

import torch
import torch.distributed as torch_dist
from mmengine.dist import is_distributed, master_only
from mmengine.fileio import LocalBackend, get_file_backend
from mmengine.hooks import CheckpointHook
from mmengine.model import MMDistributedDataParallel, is_model_wrapper
from mmengine.registry import RUNNERS, init_default_scope
from mmengine.runner import BaseLoop, Runner
from mmengine.runner.checkpoint import _load_checkpoint_to_model
from torch.utils.data import DataLoader

from ..checkpoint import key_listing, read_checkpoint
from ..registry import RUNNERS as POLA_RUNNERS
from .atomic_write import atomic_write
from .preflight import check_sample_files, check_training_paths, describe_dataset

# The default hooks PolaRunner adds to MMEngine's, or puts in place of them.
POLA_DEFAULT_HOOKS = dict(
    checkpoint=dict(type='pola_mm.AtomicCheckpointHook', interval=1),
    finite_loss=dict(type='pola_mm.FiniteLossHook'),
    random_state=dict(type='pola_mm.RandomStateHook'))
MMENGINE_DEFAULT_HOOKS = ('runtime_info', 'timer', 'sampler_seed', 'logger', 'param_scheduler',
                          'checkpoint')
MMENGINE_CHECKPOINT_HOOK = ('CheckpointHook', 'mmengine.CheckpointHook', CheckpointHook)
# What MMEngine's BaseDataset raises when it serialises an empty list of samples.
EMPTY_DATASET_ERROR = 'need at least one array to concatenate'


def _shorten_key_lists(message: str) -> str:
    """MMEngine's ``load_state_dict`` message with each list of keys ('unexpected key in
    source state_dict: a, b, ...') cut to a count and its first keys."""
    lines = []
    for line in message.splitlines():
        head, colon, keys = line.partition('state_dict: ')
        if colon and keys:
            line = f'{head}{colon}{key_listing(keys.split(", "))}'
        lines.append(line)
    return '\n'.join(line for line in lines if line)


@POLA_RUNNERS.register_module()
class PolaRunner(Runner):
    """Drop-in :class:`mmengine.runner.Runner`: set ``runner_type='pola_mm.PolaRunner'``
    in a config (every pola_mm config does), or build it with ``PolaRunner.from_cfg``."""

    def setup_env(self, env_cfg: dict) -> None:
        if (self.distributed and not is_distributed()
                and not torch.cuda.is_available()):
            if self.launcher != 'pytorch':
                raise RuntimeError(
                    f'No CUDA device: CPU distributed training supports the pytorch '
                    f'launcher only, got launcher={self.launcher!r}.')
            timeout = env_cfg.get('dist_cfg', {}).get('timeout', 1800)
            torch_dist.init_process_group(
                backend='gloo', timeout=datetime.timedelta(seconds=timeout))
        super().setup_env(env_cfg)

    def wrap_model(self, model_wrapper_cfg, model):
        if self.distributed and not torch.cuda.is_available() and model_wrapper_cfg is None:
            return MMDistributedDataParallel(
                module=model.to('cpu'),
                broadcast_buffers=False,
                find_unused_parameters=self.cfg.get('find_unused_parameters', False))
        return super().wrap_model(model_wrapper_cfg, model)

    def register_default_hooks(self, hooks=None) -> None:
        """MMEngine's default hooks plus :data:`POLA_DEFAULT_HOOKS`, each of which the
        config's ``default_hooks`` may set (or switch off with None).

        A ``checkpoint`` hook of MMEngine's ``CheckpointHook`` type becomes a
        ``pola_mm.AtomicCheckpointHook`` with the same arguments; another type or a built
        hook is kept as it is.
        """
        merged = {**copy.deepcopy(POLA_DEFAULT_HOOKS), **(hooks or {})}
        checkpoint = merged['checkpoint']
        if isinstance(checkpoint, dict) and checkpoint.get('type') in MMENGINE_CHECKPOINT_HOOK:
            merged['checkpoint'] = {**checkpoint, 'type': POLA_DEFAULT_HOOKS['checkpoint']['type']}
        super().register_default_hooks({
            name: hook for name, hook in merged.items()
            if hook is not None or name in MMENGINE_DEFAULT_HOOKS})

    def train(self):
        check_training_paths(self.cfg)
        return super().train()

    @staticmethod
    def build_dataloader(dataloader, seed=None, diff_rank_seed=False) -> DataLoader:
        """MMEngine's build; an error while building names the dataset's annotation files,
        and a dataset without samples (MMEngine would train on nothing, or fail when
        evaluating it) or with missing or empty image files
        (:func:`.preflight.check_sample_files`) is an error."""
        if isinstance(dataloader, DataLoader):
            return dataloader
        dataset = describe_dataset(dataloader.get('dataset'))
        no_samples = (f'{dataset} has no samples: the annotation file lists no images, or '
                      'filter_cfg filtered out all of them.')
        try:
            built = Runner.build_dataloader(dataloader, seed, diff_rank_seed)
        except Exception as error:
            if isinstance(error, ValueError) and str(error) == EMPTY_DATASET_ERROR:
                raise ValueError(no_samples) from None
            raise RuntimeError(f'cannot build the data loader of {dataset}: '
                               f'{type(error).__name__}: {error}') from error
        if hasattr(built.dataset, '__len__') and len(built.dataset) == 0:
            raise ValueError(no_samples)
        check_sample_files(built.dataset, dataset)
        return built

    def _fine_tuning(self) -> bool:
        """Whether a checkpoint is loaded to start training (``load_from``, not resume)."""
        return isinstance(self._train_loop, BaseLoop) and not self._resume

    def load_checkpoint(self, filename, map_location='cpu', strict=None,
                        revise_keys=((r'^module.', ''), )):
        """MMEngine's ``load_checkpoint`` with safe unpickling and clear errors.

        Args:
            strict (bool, optional): Whether every key of the model and the checkpoint
                must match. None: strict when resuming and evaluating; not when
                ``load_from`` starts a training, which may fine-tune with another head.

        Raises:
            RuntimeError: naming ``filename`` when it is refused (it holds objects other
                than plain data), truncated or corrupted (CRC-32 checked, see
                :func:`pola_mm.checkpoint.check_checkpoint_integrity`), or does not fit
                the model.
            ValueError: when resuming from a file that is no MMEngine training checkpoint.
        """
        if strict is None:
            strict = not self._fine_tuning()
        checkpoint = read_checkpoint(filename, map_location)
        if self._resume and 'meta' not in checkpoint:
            raise ValueError(
                f'cannot resume from {filename}: it has no training state (no "meta" entry); '
                'resume from a checkpoint written by tools/train.py, or start a training '
                'from these weights with load_from')
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        try:
            checkpoint = _load_checkpoint_to_model(
                model, checkpoint, strict, revise_keys=revise_keys)
        except RuntimeError as error:
            raise RuntimeError(f'{filename} does not fit the model ({type(model).__name__}): '
                               f'{_shorten_key_lists(str(error))}') from None
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint

    @master_only
    def save_checkpoint(self, out_dir, filename, file_client_args=None, *args,
                        backend_args=None, **kwargs):
        """MMEngine's ``save_checkpoint``, writing a local file atomically: a run killed
        while saving leaves the previous file, if any, untouched.

        Raises:
            OSError: naming the checkpoint when it cannot be written (a full disk).
        """
        if file_client_args is not None or not isinstance(
                get_file_backend(out_dir, backend_args=backend_args), LocalBackend):
            return super().save_checkpoint(out_dir, filename, file_client_args, *args,
                                           backend_args=backend_args, **kwargs)
        path = osp.join(out_dir, filename)
        try:
            with atomic_write(path) as temp:
                super().save_checkpoint(out_dir, osp.basename(temp), None, *args,
                                        backend_args=backend_args, **kwargs)
        except OSError as error:
            raise OSError(error.errno, f'{error.strerror}: checkpoint {path} was not saved; '
                          'the files saved before are unchanged') from error


def build_runner(cfg):
    """Initialise ``cfg.default_scope`` and build ``cfg.runner_type``, else a PolaRunner."""
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return PolaRunner.from_cfg(cfg)
