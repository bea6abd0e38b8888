"""Checkpoints, in one place: reading files safely, selecting and converting weights,
loading them into models with a report.

Dependencies run one way: :mod:`.reader` (the one weights-only reader and its
allow-list) <- :mod:`.weights` (which weights of a file) <- :mod:`.classifier` (released
ImageNet classifiers) <- :mod:`.loading`. Nothing here imports :mod:`pola_mm.models`; each
backbone family brings its own name converter (``convert_official_state_dict``, next to the
model).
"""
from .classifier import (describe_official_arch, official_classifier_state_dict,
                         official_neck_weights)
from .loading import (fit_state_dict, is_openmmlab_classifier, key_listing, load_into,
                      load_model_checkpoint, load_pretrained_backbone, released_classifier_weights)
from .reader import (CheckpointReadError, check_checkpoint_integrity, checkpoint_globals,
                     checkpoint_read_errors, local_checkpoint, read_checkpoint)
from .weights import (describe_location, drop_classifier_and_buffers, select_model_weights,
                      weights_location)

__all__ = [
    'CheckpointReadError', 'check_checkpoint_integrity', 'checkpoint_globals',
    'checkpoint_read_errors', 'describe_location', 'describe_official_arch',
    'drop_classifier_and_buffers', 'fit_state_dict', 'is_openmmlab_classifier', 'key_listing',
    'load_into', 'load_model_checkpoint', 'load_pretrained_backbone', 'local_checkpoint',
    'official_classifier_state_dict', 'official_neck_weights', 'read_checkpoint',
    'released_classifier_weights', 'select_model_weights', 'weights_location'
]
