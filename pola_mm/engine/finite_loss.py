"""``pola_mm.FiniteLossHook``: stop training at the first NaN or infinite loss.

MMEngine has no such check, and MMDetection's ``CheckInvalidLossHook`` (mmdet scope only)
looks every 50 iterations by default and fails with an ``AssertionError`` whose message
is empty. A diverged run otherwise goes on logging ``loss: nan`` and saving checkpoints
of NaN weights for as long as it is allowed to run.
"""
from typing import Optional, Sequence

import torch
from mmengine.hooks import Hook

from ..registry import HOOKS


def _image_paths(data_batch) -> Sequence[str]:
    samples = data_batch.get('data_samples', ()) if isinstance(data_batch, dict) else ()
    return [sample.img_path for sample in samples or () if 'img_path' in sample]


@HOOKS.register_module()
class FiniteLossHook(Hook):
    """Raise :class:`FloatingPointError` after the first iteration whose loss (the total or
    any term) is NaN or infinite, naming the iteration, the loss terms and the images of
    the batch.

    It checks every iteration: the losses are copied to the CPU for logging every
    iteration anyway. Its priority is above the CheckpointHook's, so that no checkpoint is
    saved after the failing iteration. Registered by
    :class:`~pola_mm.engine.PolaRunner` as ``default_hooks.finite_loss`` (set it to None
    to switch it off).
    """

    priority = 'ABOVE_NORMAL'

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        losses = {name: value for name, value in (outputs or {}).items()
                  if 'loss' in name and isinstance(value, torch.Tensor)}
        if all(torch.isfinite(value).all() for value in losses.values()):
            return
        terms = ', '.join(f'{name}={value.detach().float().mean().item():.4g}'
                          for name, value in losses.items())
        last = runner.message_hub.get_info('last_ckpt')
        raise FloatingPointError(
            f'Non-finite loss at iteration {runner.iter + 1} (epoch {runner.epoch + 1}, batch '
            f'{batch_idx + 1}): {terms}. Training stopped; the last checkpoint is '
            f'{last or "none (none was saved)"}. Images of the batch: '
            f'{_image_paths(data_batch) or "unknown"}. Lower the learning rate, clip '
            'gradients (optim_wrapper.clip_grad) or check these images and their '
            'annotations.')
