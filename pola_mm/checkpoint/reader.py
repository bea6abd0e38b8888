"""The one reader of checkpoint files: ``torch.load(weights_only=True)`` with a short
allow-list.

Since torch 2.6, ``torch.load`` refuses every Python object outside a small allowlist.
Two kinds of files this project reads pickle a few more:

* MMEngine 0.10.7's checkpoints: the message hub's :class:`~mmengine.logging.HistoryBuffer`
  (which pickles its statistics methods as ``getattr(HistoryBuffer, 'min')``) and numpy
  arrays, scalars and dtypes; stock MMEngine resume therefore fails on torch >= 2.6;
* the released PolaFormer training files: the authors' yacs ``CfgNode`` config (and numpy
  scalars). ``yacs.config.CfgNode`` is read as an inert :class:`collections.OrderedDict`,
  so no yacs import is needed and nothing from the file runs.

:func:`checkpoint_globals` allows exactly those objects for the duration of a ``with``
block; any other object in a file is still refused. ``builtins.getattr`` is not allowed
as such: the name is bound to :func:`history_buffer_statistic`, which only returns the
four statistics methods of ``HistoryBuffer``.

:func:`local_checkpoint` gives, for a URL, a downloaded copy to read with these rules:
MMEngine reads URLs through ``torch.hub.load_state_dict_from_url``, whose unpickling is
unrestricted (``weights_only=False``). :func:`checkpoint_read_errors` turns what
``torch.load`` raises for a refused, truncated or corrupted file into an error that names
the file and says what is wrong with it, and :func:`check_checkpoint_integrity` finds the
corruption ``torch.load`` does not see.
"""
import collections
import os
import os.path as osp
import pickle
import zipfile
from contextlib import contextmanager
from typing import Iterator, Mapping
from urllib.parse import urlparse

import numpy as np
import torch
from mmengine.dist import barrier, get_dist_info
from mmengine.logging import HistoryBuffer, print_log
from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint

# MMEngine's schemes that resolve to URLs read by torch.hub with unrestricted unpickling.
UNSAFE_SCHEMES = ('modelzoo://', 'torchvision://', 'open-mmlab://', 'openmmlab://', 'mmcls://')
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
        (collections.OrderedDict, 'yacs.config.CfgNode'),
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
def checkpoint_globals() -> Iterator[None]:
    """Allow, inside the block, the objects MMEngine and the released files pickle."""
    with torch.serialization.safe_globals(_allowed_globals()):
        yield


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_from_local(filename: str, map_location=None) -> dict:
    """MMEngine's loader of local checkpoint files, weights-only with
    :func:`checkpoint_globals` allowed.

    Registered in place of MMEngine's own local loader when pola_mm is imported, so that
    code which builds MMEngine's stock ``Runner`` whatever the config says (e.g.
    MMSegmentation's ``tools/test.py``) can read the checkpoints MMEngine writes; the
    loading stays weights-only.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    with checkpoint_globals():
        return torch.load(filename, map_location=map_location, weights_only=True)


def _refusal_reason(error: pickle.UnpicklingError) -> str:
    """torch's reason for refusing a file, without its preamble and advice."""
    preamble = ('Weights only load failed', 'Please file an issue', 'Check the documentation')
    lines = str(error).split('WeightsUnpickler error:')[-1].splitlines()
    reasons = [line.strip() for line in lines
               if line.strip() and not line.strip().startswith(preamble)]
    return reasons[0] if reasons else 'refused by the weights-only unpickler'


@contextmanager
def checkpoint_read_errors(path: str) -> Iterator[None]:
    """Re-raise the errors of reading the checkpoint ``path`` in the block as
    :class:`RuntimeError` naming the file.

    A file that the weights-only unpickler refuses (one that would run code, or one whose
    pickle is corrupted) and a file that is truncated or is no PyTorch checkpoint each get
    their own message; torch's advice to retry with ``weights_only=False`` is left out.
    """
    try:
        yield
    except pickle.UnpicklingError as error:
        reason = _refusal_reason(error)
        raise RuntimeError(
            f'refusing to load {path}: it is not a plain weights file ({reason}). pola_mm '
            'only unpickles tensors and plain data, since unpickling anything else can run '
            'code; re-save the weights of a file you trust as a plain state dict') from None
    except (RuntimeError, EOFError, ValueError) as error:
        raise RuntimeError(f'cannot read checkpoint {path}: it is truncated or not a '
                           f'PyTorch checkpoint ({type(error).__name__}: {error})') from None


def local_checkpoint(filename: str) -> str:
    """The name to read ``filename`` from with weights-only unpickling.

    An ``http(s)://`` URL is downloaded into torch.hub's cache (``<hub dir>/checkpoints``,
    where torch.hub and MMEngine keep it too; by rank 0 first) unless it is there already,
    and the cached file is returned. Local paths and file backends' URIs (``s3://``...)
    are returned as they are.

    Raises:
        ValueError: for MMEngine's model-zoo schemes (``torchvision://``...), which resolve
            to URLs inside MMEngine and are read with unrestricted unpickling.
        RuntimeError: naming the URL when the download fails.
    """
    if filename.startswith(UNSAFE_SCHEMES):
        raise ValueError(
            f'refusing to load {filename}: MMEngine reads {filename.split("://")[0]}:// '
            'checkpoints with unrestricted unpickling; give their https URL or a downloaded '
            'file instead')
    if not filename.startswith(('http://', 'https://')):
        return filename
    cache_dir = osp.join(torch.hub.get_dir(), 'checkpoints')
    cached = osp.join(cache_dir, osp.basename(urlparse(filename).path))
    rank, world_size = get_dist_info()
    if rank == 0 and not osp.exists(cached):
        os.makedirs(cache_dir, exist_ok=True)
        print_log(f'Downloading {filename} to {cached}', logger='current')
        try:  # writes a temporary file, renamed when complete
            torch.hub.download_url_to_file(filename, cached, progress=False)
        except (OSError, ValueError) as error:  # URLError is an OSError
            raise RuntimeError(f'cannot download checkpoint {filename}: {error}') from error
    if world_size > 1:
        barrier()
    return cached


def check_checkpoint_integrity(path: str) -> None:
    """Check the CRC-32 of every entry of the local checkpoint ``path`` (a zip file).

    ``torch.load`` does not check them: a checkpoint whose tensor bytes were damaged (a
    failing disk, an incomplete copy) loads with wrong weights. Entries saved without a
    CRC (``torch.utils.serialization.config.save.compute_crc32 = False``) and files that
    are no zip archive (the legacy format; truncated files, which ``torch.load`` refuses
    itself) are not checked. Reading costs about as much as loading.

    Raises:
        RuntimeError: naming ``path`` and the damaged entry.
    """
    if not osp.isfile(path) or not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.CRC:
                    with archive.open(info) as entry:
                        while entry.read(1 << 24):
                            pass
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise RuntimeError(f'cannot read checkpoint {path}: it is corrupted ({error})') from None


def read_checkpoint(filename: str, map_location='cpu') -> dict:
    """Read a checkpoint as MMEngine does (local files, file backends' URIs, URLs), but
    safely: an ``http(s)://`` URL is downloaded first (:func:`local_checkpoint`), a local
    file's CRC-32 codes are checked (:func:`check_checkpoint_integrity`), and it is
    unpickled weights-only with :func:`checkpoint_globals` allowed; errors name
    ``filename`` (:func:`checkpoint_read_errors`). Globals allowed by an enclosing
    ``torch.serialization.safe_globals`` block are allowed too.

    Raises:
        FileNotFoundError: for a local path that does not exist.
        RuntimeError: naming ``filename`` when it is refused, truncated, corrupted or
            holds something other than a dict.
    """
    if '://' not in filename and not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint file not found: {filename}')
    source = local_checkpoint(filename)
    check_checkpoint_integrity(source)
    with checkpoint_globals(), checkpoint_read_errors(filename):
        checkpoint = _load_checkpoint(source, map_location=map_location)
    if not isinstance(checkpoint, Mapping):
        raise RuntimeError(f'checkpoint {filename} holds a {type(checkpoint).__name__}, '
                           'not a dict of weights')
    return checkpoint
