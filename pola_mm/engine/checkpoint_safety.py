"""Load MMEngine's own checkpoints with ``torch.load(weights_only=True)``.

Since torch 2.6, ``torch.load`` refuses every Python object outside a small allowlist.
MMEngine 0.10.7 saves a few such objects in its checkpoints: the message hub's
:class:`~mmengine.logging.HistoryBuffer` (which pickles its statistics methods as
``getattr(HistoryBuffer, 'min')``) and numpy arrays, scalars and dtypes. Resuming a
training run therefore fails on torch >= 2.6.

:func:`mmengine_checkpoint_globals` allows exactly those objects for the duration of a
``with`` block; any other object in a file is still refused. ``builtins.getattr`` is not
allowed as such: the name is bound to :func:`history_buffer_statistic`, which only returns
the four statistics methods of ``HistoryBuffer``.
"""
import pickle
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')

NUMPY_DTYPES = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                np.uint32, np.uint64, np.float16, np.float32, np.float64)


def history_buffer_statistic(owner: type, name: str):
    """Stand-in for ``getattr`` while unpickling: ``HistoryBuffer.<statistic>`` only.

    Raises:
        pickle.UnpicklingError: for any other owner or attribute, so that a file which
            uses ``getattr`` for anything else is refused.
    """
    if owner is not HistoryBuffer or name not in HISTORY_BUFFER_STATISTICS:
        raise pickle.UnpicklingError(
            f'Refusing getattr({owner!r}, {name!r}) in a checkpoint: only the '
            f'HistoryBuffer statistics {HISTORY_BUFFER_STATISTICS} are allowed.')
    return getattr(HistoryBuffer, name)


def _allowed_globals() -> list:
    multiarray = (np._core if hasattr(np, '_core') else np.core).multiarray
    return [
        HistoryBuffer,
        (history_buffer_statistic, 'builtins.getattr'),
        (history_buffer_statistic, '__builtin__.getattr'),
        np.ndarray,
        np.dtype,
        multiarray._reconstruct,
        multiarray.scalar,
        *(type(np.dtype(dtype)) for dtype in NUMPY_DTYPES),
    ]


@contextmanager
def mmengine_checkpoint_globals() -> Iterator[None]:
    """Allow, inside the block, the objects MMEngine writes into its checkpoints."""
    with torch.serialization.safe_globals(_allowed_globals()):
        yield
