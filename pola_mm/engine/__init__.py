"""What MMEngine needs adapted for pola_mm's tools: safe resume, CPU distributed, pre-flight."""
from .checkpoint_safety import mmengine_checkpoint_globals
from .preflight import check_training_paths, missing_paths
from .runner import PolaRunner, build_runner

__all__ = ['PolaRunner', 'build_runner', 'check_training_paths', 'missing_paths', 'mmengine_checkpoint_globals']
