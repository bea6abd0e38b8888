"""What MMEngine needs adapted for pola_mm's tools: safe and atomic checkpoints, exact
resume, a stop at non-finite losses, CPU distributed training, pre-flight checks."""
from .atomic_write import atomic_write, write_text_atomic
from .checkpoint_hook import AtomicCheckpointHook
from .checkpoint_safety import (check_checkpoint_integrity, checkpoint_read_errors,
                                local_checkpoint, mmengine_checkpoint_globals,
                                read_checkpoint)
from .finite_loss import FiniteLossHook
from .preflight import (check_sample_files, check_training_paths, describe_dataset,
                        missing_paths)
from .random_state import RandomStateHook, get_random_state, set_random_state
from .runner import PolaRunner, build_runner

__all__ = [
    'AtomicCheckpointHook', 'FiniteLossHook', 'PolaRunner', 'RandomStateHook', 'atomic_write',
    'build_runner', 'check_checkpoint_integrity', 'check_sample_files', 'check_training_paths',
    'checkpoint_read_errors', 'describe_dataset', 'local_checkpoint',
    'get_random_state', 'mmengine_checkpoint_globals', 'missing_paths', 'read_checkpoint',
    'set_random_state',
    'write_text_atomic'
]
