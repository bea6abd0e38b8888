"""What MMEngine needs adapted for pola_mm's tools: safe and atomic checkpoints, exact
resume, a stop at non-finite losses, CPU distributed training, pre-flight checks, and
released classifier files as ``load_from``."""
from .atomic_write import atomic_write, write_text_atomic
from .checkpoint_hook import AtomicCheckpointHook
from .classifier_checkpoint_hook import OfficialClassifierCheckpointHook
from .finite_loss import FiniteLossHook
from .preflight import check_sample_files, check_training_paths, describe_dataset, missing_paths
from .random_state import RandomStateHook, get_random_state, set_random_state
from .runner import PolaRunner, build_runner

__all__ = [
    'AtomicCheckpointHook', 'FiniteLossHook', 'OfficialClassifierCheckpointHook', 'PolaRunner',
    'RandomStateHook', 'atomic_write', 'build_runner', 'check_sample_files',
    'check_training_paths', 'describe_dataset', 'get_random_state', 'missing_paths',
    'set_random_state', 'write_text_atomic'
]
