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

Resume then continues exactly, given a fixed ``randomness.seed``, deterministic
operations and data loading in the main process (``num_workers=0``) or in workers that are
not persistent (MMEngine seeds new workers from the seed alone). The states are those of
one process: in distributed runs, where the checkpoint holds rank 0's only, they are not
restored from it.
"""
import random
from typing import Optional

import numpy as np
import torch
from mmengine.hooks import Hook

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


@HOOKS.register_module()
class RandomStateHook(Hook):
    """Save the generators' states in checkpoints; set them at the start of each epoch to
    those of the end of the previous epoch, or of the checkpoint resumed from.

    Registered by :class:`~pola_mm.engine.PolaRunner` as ``default_hooks.random_state``
    (set it to None to switch it off).
    """

    priority = 'LOWEST'  # after_train_epoch: after the CheckpointHook has saved

    def __init__(self) -> None:
        self._epoch_start_state: Optional[dict] = None

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
        if self._epoch_start_state is not None:
            set_random_state(self._epoch_start_state)
            self._epoch_start_state = None
