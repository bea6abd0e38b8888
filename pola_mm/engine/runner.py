"""``PolaRunner``: MMEngine's Runner with safe resume, CPU distributed training and
pre-flight checks.

* Resume and ``load_from`` read MMEngine checkpoints with ``weights_only=True`` loading,
  allowing only the objects MMEngine itself writes (see :mod:`.checkpoint_safety`).
* With the ``pytorch`` launcher on a machine without CUDA, the process group uses gloo and
  the model is wrapped in DDP without device ids (MMEngine assumes NCCL and a GPU).
* Before training, :func:`.preflight.check_training_paths` fails on a missing pretrained
  checkpoint or dataset path, naming it.
"""
import datetime

import torch
import torch.distributed as torch_dist
from mmengine.dist import is_distributed
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import RUNNERS, init_default_scope
from mmengine.runner import Runner

from .checkpoint_safety import mmengine_checkpoint_globals
from .preflight import check_training_paths


class PolaRunner(Runner):
    """Drop-in :class:`mmengine.runner.Runner`; build it with ``PolaRunner.from_cfg``."""

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

    def train(self):
        check_training_paths(self.cfg)
        return super().train()

    def resume(self, filename, *args, **kwargs):
        with mmengine_checkpoint_globals():
            return super().resume(filename, *args, **kwargs)

    def load_checkpoint(self, filename, *args, **kwargs):
        with mmengine_checkpoint_globals():
            return super().load_checkpoint(filename, *args, **kwargs)


def build_runner(cfg):
    """Initialise ``cfg.default_scope`` and build ``cfg.runner_type``, else a PolaRunner."""
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return PolaRunner.from_cfg(cfg)
