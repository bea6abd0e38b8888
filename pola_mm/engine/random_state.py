"""``pola_mm.RandomStateHook``: a resumed run draws the random numbers the interrupted
run would have drawn.

MMEngine's checkpoints keep the seed but not the generators' states: a resumed run starts
its next epoch with freshly seeded generators, so that its augmentations (flips, crops)
and stochastic depth differ from those of an uninterrupted run. This hook stores the
states of Python's, NumPy's and PyTorch's (CPU and CUDA) global generators in every
checkpoint (``checkpoint['random_state']``) and, on resume, restores them at the start of
the next epoch. An uninterrupted run also starts each epoch from the states saved at the
end of the previous one, so that whatever draws numbers in between (validation creates a
data loader iterator, which draws a seed) does not make the two runs differ.

Iteration-based runs (MMSegmentation's) are one long epoch, which a resumed run enters by
fetching and dropping the batches trained before (MMEngine's ``IterBasedTrainLoop``), and
so by running their random transforms: the states are restored after those, right
before the first new batch is fetched. Validation within the epoch gives the training
the generators' states back as it found them.

Resume then continues exactly, given a fixed ``randomness.seed``, deterministic
operations and data loading in the main process (``num_workers=0``) or in workers that are
not persistent (MMEngine seeds new workers from the seed alone). The states are those of
one process: in distributed runs, where the checkpoint holds rank 0's only, they are not
restored from it.
"""
import random
from typing import Iterator, Optional

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.runner import IterBasedTrainLoop

from ..registry import HOOKS


def get_random_state() -> dict:
    """States of Python's, NumPy's and PyTorch's global random number generators."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return dict(
        python=random.getstate(),
        numpy=np.random.get_state(),
        torch=torch.get_rng_state(),
        cuda=torch.cuda.get_rng_state_all() if cuda else [])


def set_random_state(state: dict) -> None:
    """Restore states returned by :func:`get_random_state` (CUDA ones for the devices
    present)."""
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if state['cuda'] and torch.cuda.is_available():
        for device, cuda_state in enumerate(state['cuda'][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


class _RestoreAfterSkipping:
    """An ``IterBasedTrainLoop``'s data iterator that sets the generators to ``state``
    right before batch ``skipped`` (0-based) is fetched: after the batches a resumed loop
    fetches only to skip them."""

    def __init__(self, iterator: Iterator, skipped: int, state: dict):
        self._iterator, self._remaining, self._state = iterator, skipped, state

    def __iter__(self):
        return self

    def __next__(self):
        if self._remaining == 0 and self._state is not None:
            set_random_state(self._state)
            self._state = None
        self._remaining -= 1
        return next(self._iterator)


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Save the generators' states in checkpoints; set them at the start of each epoch to
    those of the end of the previous epoch, or of the checkpoint resumed from (resuming an
    iteration-based run, after the skipped batches); give them back to training after
    each validation.

    Registered by :class:`~pola_mm.engine.PolaRunner` as ``default_hooks.random_state``
    (set it to None to switch it off).
    """

    priority = 'LOWEST'  # after_train_epoch: after the CheckpointHook has saved

    def __init__(self) -> None:
        self._epoch_start_state: Optional[dict] = None
        self._state_before_val: Optional[dict] = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['random_state'] = get_random_state()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not runner._resume or 'random_state' not in checkpoint:  # as EMAHook tells
            return
        if runner.world_size > 1:
            runner.logger.info('Random states are not restored in distributed runs: the '
                               "checkpoint holds rank 0's only.")
            return
        self._epoch_start_state = checkpoint['random_state']

    def after_train_epoch(self, runner) -> None:
        self._epoch_start_state = get_random_state()

    def before_train_epoch(self, runner) -> None:
        if self._epoch_start_state is None:
            return
        loop = runner.train_loop
        if isinstance(loop, IterBasedTrainLoop) and loop.iter > 0:
            loop.dataloader_iterator = _RestoreAfterSkipping(
                loop.dataloader_iterator, loop.iter, self._epoch_start_state)
        else:
            set_random_state(self._epoch_start_state)
        self._epoch_start_state = None

    def before_val(self, runner) -> None:
        self._state_before_val = get_random_state()

    def after_val(self, runner) -> None:
        if self._state_before_val is not None:
            set_random_state(self._state_before_val)
            self._state_before_val = None
