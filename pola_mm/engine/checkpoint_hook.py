"""``pola_mm.AtomicCheckpointHook``: MMEngine's CheckpointHook that a kill cannot break.

:class:`~pola_mm.engine.PolaRunner` uses it in place of MMEngine's ``CheckpointHook``
(``default_hooks.checkpoint``), with the same arguments.
"""
import os.path as osp
from typing import List, Optional

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook

from ..registry import HOOKS
from .atomic_write import remove_stale_temp_files, write_text_atomic

LAST_CHECKPOINT = 'last_checkpoint'


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """Save checkpoints as MMEngine's CheckpointHook does, so that a run killed at any
    moment can resume from a complete checkpoint.

    Differences from :class:`mmengine.hooks.CheckpointHook`:

    * ``last_checkpoint`` (the file ``--resume`` reads) is replaced atomically, after the
      checkpoint it names is complete, instead of being truncated and rewritten;
    * with ``max_keep_ckpts``, an outdated checkpoint is deleted after the new one and
      ``last_checkpoint`` are on disk; MMEngine deletes it first, so that a run killed
      while saving could be left with no checkpoint at all;
    * with ``save_best``, the previous best checkpoint is likewise deleted only after the
      new best one is saved;
    * the temporary files of saves that an earlier run did not finish are deleted before
      training.

    The checkpoint file itself is written atomically by
    :meth:`pola_mm.engine.PolaRunner.save_checkpoint`.
    """

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if is_main_process() and isinstance(self.file_backend, LocalBackend):
            stale = [path for pattern in (self.filename_tmpl.format('*'), 'best_*')
                     for path in remove_stale_temp_files(self.out_dir, pattern)]
            stale += remove_stale_temp_files(runner.work_dir, LAST_CHECKPOINT)
            if stale:
                runner.logger.info(f'Removed files of interrupted checkpoint saves: {stale}')

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        outdated = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids
                                            and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        runner.save_checkpoint(
            self.out_dir,
            ckpt_filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)

        if not is_main_process():
            return
        write_text_atomic(osp.join(runner.work_dir, LAST_CHECKPOINT), self.last_ckpt)
        if outdated is not None:
            self._remove_checkpoint(
                self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(outdated)))

    def _remove_checkpoint(self, path: str) -> None:
        if self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif self.file_backend.isdir(path):  # DeepSpeed saves directories
            self.file_backend.rmtree(path)

    def _best_paths(self) -> List[Optional[str]]:
        """The best checkpoint's path per key indicator (None before the first)."""
        if len(self.key_indicators) == 1:  # MMEngine's attribute for one indicator
            return [self.best_ckpt_path]
        return [self.best_ckpt_path_dict.get(key) for key in self.key_indicators]

    def _set_best_paths(self, paths: List[Optional[str]]) -> None:
        if len(self.key_indicators) == 1:
            self.best_ckpt_path = paths[0]
        else:
            self.best_ckpt_path_dict.update(zip(self.key_indicators, paths))

    def _save_best_checkpoint(self, runner, metrics) -> None:
        """MMEngine's, with the paths of the previous best checkpoints hidden from it (so
        that it deletes none of them), then deleting those it replaced."""
        if not self.save_best:
            return
        previous = self._best_paths()
        self._set_best_paths([None] * len(previous))
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            current = self._best_paths()
            self._set_best_paths([new or old for new, old in zip(current, previous)])
        if not is_main_process():
            return
        for old, new in zip(previous, current):
            if old is not None and new is not None and new != old:
                self._remove_checkpoint(old)
                runner.logger.info(f'The previous best checkpoint {old} is removed')
