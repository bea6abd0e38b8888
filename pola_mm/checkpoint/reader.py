"""The one reader of checkpoint files: ``torch.load(weights_only=True)`` with a short
allow-list, for the schemes MMEngine reads.

Since torch 2.6, ``torch.load`` refuses every Python object outside a small allowlist.
Two kinds of files this project reads pickle a few more:

* MMEngine 0.10.7's checkpoints: the message hub's :class:`~mmengine.logging.HistoryBuffer`
  (which pickles its statistics methods as ``getattr(HistoryBuffer, 'min')``) and numpy
  arrays, scalars and dtypes; stock MMEngine resume therefore fails on torch >= 2.6;
* the released PolaFormer training files: the authors' yacs ``CfgNode`` config (and numpy
  scalars). ``yacs.config.CfgNode`` is read as an inert :class:`collections.OrderedDict`,
  so no yacs import is needed and nothing from the file runs.

:func:`checkpoint_globals` allows exactly those objects for the duration of a ``with``
block; any other object in a file is still refused. numpy's array and scalar constructors
are allowed under both their names, ``numpy._core.multiarray`` (numpy 2) and
``numpy.core.multiarray`` (numpy 1), so that files written under either numpy load.
``builtins.getattr`` is not allowed as such: the name is bound to
:func:`history_buffer_statistic`, which only returns the four statistics methods of
``HistoryBuffer``.

Importing this module registers a weights-only loader, with these objects allowed, in place
of MMEngine's for each of its schemes (``CheckpointLoader.register_scheme(...,
force=True)``), so that code that builds MMEngine's stock ``Runner`` or a ``Pretrained``
init_cfg never unpickles a file without restriction:

* local files;
* ``http(s)://`` URLs, which MMEngine reads through ``torch.hub.load_state_dict_from_url``,
  whose unpickling is unrestricted (``weights_only=False``), and its model zoos, which it
  resolves to URLs read the same way: ``torchvision://`` and ``modelzoo://``,
  ``open-mmlab://`` and ``openmmlab://``, ``mmcls://``. URLs are downloaded into
  torch.hub's cache (:func:`local_checkpoint`), where MMEngine and torch.hub keep them too;
* file backends' URIs (``s3://``, ``petrel://``), which MMEngine reads with ``torch.load``'s
  default.

MMEngine's ``pavi://`` loader stays: it reads with ``torch.load``'s default, weights-only
since torch 2.6. :func:`checkpoint_read_errors` turns what ``torch.load`` raises for a
refused, truncated or corrupted file into an error that names the file and says what is
wrong with it, a file that is no PyTorch checkpoint at all is named as such, and
:func:`check_checkpoint_integrity` finds the corruption ``torch.load`` does not see. A
``map_location`` naming a device the tensors cannot be mapped to here (``'cuda'`` without
CUDA) is refused as such before the file is unpickled (:func:`check_map_location`), not
taken for a damaged file.
"""
import collections
import errno
import http.client
import io
import logging
import os
import os.path as osp
import pickle
import zipfile
from contextlib import contextmanager
from typing import BinaryIO, Iterator, Mapping, Optional, Union
from urllib.parse import urlparse

import numpy as np
import torch
from mmengine.dist import barrier, get_dist_info
from mmengine.fileio import get_file_backend
from mmengine.logging import HistoryBuffer, print_log
from mmengine.runner.checkpoint import (CheckpointLoader, _get_mmengine_home, _load_checkpoint,
                                        _process_mmcls_checkpoint, get_deprecated_model_names,
                                        get_external_models, get_mmcls_models,
                                        get_torchvision_models)

HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')

NUMPY_DTYPES = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                np.uint32, np.uint64, np.float16, np.float32, np.float64)
# where numpy 2 and numpy 1 define (and pickles name) _reconstruct and scalar
NUMPY_MULTIARRAY_MODULES = ('numpy._core.multiarray', 'numpy.core.multiarray')

# How the files torch.load reads begin: a zip archive (torch >= 1.6) or, in the legacy
# format, torch's magic number pickled with any protocol; the oldest format is a tar archive.
PYTORCH_FILE_HEADS = (b'PK', *(pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol)[:-1]
                               for protocol in range(pickle.HIGHEST_PROTOCOL + 1)))
HEAD_SIZE = 512


class CheckpointReadError(RuntimeError):
    """A checkpoint cannot be read; the message names the file and says why."""


def checkpoint_name(filename: Union[str, os.PathLike], argument: str = 'filename') -> str:
    """``filename`` (a file name or URL: a str or an ``os.PathLike`` such as a
    :class:`pathlib.Path`) as a str.

    Raises:
        ValueError: naming ``argument`` and the type received for anything else (None, a
            number, bytes).
    """
    name = os.fspath(filename) if isinstance(filename, os.PathLike) else filename
    if not isinstance(name, str):
        raise ValueError(f'the checkpoint {argument} must be a file name or URL (a str or an '
                         f'os.PathLike), got {type(filename).__name__}: {filename!r}')
    return name


def check_map_location(map_location, name: str) -> None:
    """Refuse a ``map_location`` naming a device (a str or a :class:`torch.device`) that
    tensors cannot be mapped to here (CUDA where it is unavailable, an unknown device), as
    ``torch.load`` would when restoring the first tensor; dicts and callables pass.

    Raises:
        CheckpointReadError: naming ``name``, ``map_location`` and the device.
    """
    if not isinstance(map_location, (str, torch.device)):
        return
    try:  # torch.load's own restoring, for an empty storage
        torch.serialization.default_restore_location(torch.UntypedStorage(0),
                                                     str(map_location))
    except RuntimeError as error:
        reason = str(error).split('. ')[0]
        raise CheckpointReadError(
            f'cannot load checkpoint {name} with map_location={map_location!r}: its tensors '
            f'cannot be mapped to device {str(map_location)!r} here ({reason}); pass a '
            "map_location this machine has, e.g. 'cpu'") from None


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
        *((function, f'{module}.{function.__name__}')
          for function in (multiarray._reconstruct, multiarray.scalar)
          for module in NUMPY_MULTIARRAY_MODULES),
        *(type(np.dtype(dtype)) for dtype in NUMPY_DTYPES),
    ]


@contextmanager
def checkpoint_globals() -> Iterator[None]:
    """Allow, inside the block, the objects MMEngine and the released files pickle.

    Blocks may nest (a loader called inside a block enters its own): leaving a block
    removes only the globals that it added, never those of an enclosing block or of
    ``torch.serialization.add_safe_globals``.
    """
    allowed = set(torch.serialization.get_safe_globals())
    added = [item for item in _allowed_globals() if item not in allowed]
    with torch.serialization.safe_globals(added):
        yield


def _check_pytorch_file(head: bytes, name: str) -> None:
    """Refuse a file whose first bytes ``head`` are those of no PyTorch checkpoint.

    Empty heads pass: ``torch.load`` says the file is truncated.

    Raises:
        CheckpointReadError: naming ``name``.
    """
    if not head or head.startswith(PYTORCH_FILE_HEADS) or head[257:262] == b'ustar':
        return
    raise CheckpointReadError(
        f'cannot read checkpoint {name}: it is not a PyTorch checkpoint at all (it begins '
        f'{head[:24]!r}; torch.save writes a zip archive)')


def _read_weights_only(source: Union[str, BinaryIO], map_location, name: str):
    """Unpickle the checkpoint ``source`` (a local file or a binary buffer) weights-only
    with :func:`checkpoint_globals` allowed; errors name ``name``."""
    if isinstance(source, str):
        with open(source, 'rb') as file:
            head = file.read(HEAD_SIZE)
    else:
        head = source.read(HEAD_SIZE)
        source.seek(0)
    _check_pytorch_file(head, name)
    check_map_location(map_location, name)
    with checkpoint_globals(), checkpoint_read_errors(name):
        return torch.load(source, map_location=map_location, weights_only=True)


@CheckpointLoader.register_scheme(prefixes='', force=True)
def load_from_local(filename: str, map_location=None) -> dict:
    """MMEngine's loader of local checkpoint files, weights-only with
    :func:`checkpoint_globals` allowed.

    Registered in place of MMEngine's own local loader when pola_mm is imported, so that
    code which builds MMEngine's stock ``Runner`` whatever the config says (e.g.
    MMSegmentation's ``tools/test.py``) can read the checkpoints MMEngine writes; the
    loading stays weights-only.

    Raises:
        FileNotFoundError: when ``filename`` is no file.
        CheckpointReadError: naming ``filename`` (see :func:`checkpoint_read_errors`).
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return _read_weights_only(filename, map_location, filename)


@CheckpointLoader.register_scheme(prefixes=('http://', 'https://'), force=True)
def load_from_http(filename: str, map_location=None, model_dir: Optional[str] = None,
                   progress: Optional[bool] = None) -> dict:
    """MMEngine's loader of ``http(s)://`` URLs, weights-only with
    :func:`checkpoint_globals` allowed.

    MMEngine's own reads the file with ``torch.hub.load_state_dict_from_url``, which
    unpickles anything. This one downloads it into the same cache (``model_dir``, by
    default ``<torch.hub.get_dir()>/checkpoints``) unless it is there already
    (:func:`local_checkpoint`), then reads the cached file like a local one.

    Args:
        progress (bool, optional): Whether to show a progress bar while downloading.
            None (the default): when the standard input is a terminal, as in MMEngine.

    Raises:
        CheckpointReadError: naming the URL when the download fails or the file is
            refused, truncated or no PyTorch checkpoint.
    """
    if progress is None:
        progress = os.isatty(0)
    cached = local_checkpoint(filename, model_dir=model_dir, progress=progress)
    return _read_weights_only(cached, map_location, filename)


def _model_zoo_url(filename: str, urls: Mapping[str, str]) -> str:
    """The URL (or file name) that the model zoo ``urls`` gives for ``filename``."""
    scheme, name = filename.split('://', 1)
    if name not in urls:
        raise CheckpointReadError(
            f'cannot read checkpoint {filename}: MMEngine knows no {scheme}:// checkpoint '
            f'named {name!r}')
    return urls[name]


@CheckpointLoader.register_scheme(prefixes=('modelzoo://', 'torchvision://'), force=True)
def load_from_torchvision(filename: str, map_location=None) -> dict:
    """MMEngine's loader of ``torchvision://NAME`` (and the deprecated ``modelzoo://NAME``):
    the URL torchvision gives for ``NAME``, read by :func:`load_from_http`."""
    return load_from_http(_model_zoo_url(filename, get_torchvision_models()), map_location)


@CheckpointLoader.register_scheme(prefixes=('open-mmlab://', 'openmmlab://'), force=True)
def load_from_openmmlab(filename: str, map_location=None) -> dict:
    """MMEngine's loader of ``open-mmlab://NAME`` and ``openmmlab://NAME``, weights-only.

    ``NAME`` is looked up as MMEngine does (deprecated names renamed; MMEngine's table,
    updated by ``$MMENGINE_HOME/open_mmlab.json``): a URL is read by
    :func:`load_from_http`, a file name as a file under MMEngine's home directory.

    Raises:
        FileNotFoundError: when that file does not exist.
    """
    scheme, name = filename.split('://', 1)
    deprecated = get_deprecated_model_names()
    if name in deprecated:
        print_log(f'{scheme}://{name} is deprecated in favor of {scheme}://{deprecated[name]}',
                  logger='current', level=logging.WARNING)
        name = deprecated[name]
    url = _model_zoo_url(f'{scheme}://{name}', get_external_models())
    if url.startswith(('http://', 'https://')):
        return load_from_http(url, map_location)
    path = osp.join(_get_mmengine_home(), url)
    if not osp.isfile(path):
        raise FileNotFoundError(f'{path} can not be found.')
    return _read_weights_only(path, map_location, filename)


@CheckpointLoader.register_scheme(prefixes='mmcls://', force=True)
def load_from_mmcls(filename: str, map_location=None) -> dict:
    """MMEngine's loader of ``mmcls://NAME``: the URL of MMClassification's model zoo,
    read by :func:`load_from_http`; the result keeps the backbone's weights, as
    MMEngine's."""
    checkpoint = load_from_http(_model_zoo_url(filename, get_mmcls_models()), map_location)
    return _process_mmcls_checkpoint(checkpoint)


@CheckpointLoader.register_scheme(prefixes=[r'(\S+\:)?s3://', r'(\S+\:)?petrel://'],
                                  force=True)
def load_from_ceph(filename: str, map_location=None, backend: str = 'petrel') -> dict:
    """MMEngine's loader of file backends' URIs (``s3://``, ``petrel://``), weights-only
    with :func:`checkpoint_globals` allowed: the bytes MMEngine's file backend gets."""
    file_backend = get_file_backend(filename, backend_args={'backend': backend})
    with io.BytesIO(file_backend.get(filename)) as buffer:
        return _read_weights_only(buffer, map_location, filename)


def _refusal_reason(error: pickle.UnpicklingError) -> str:
    """torch's reason for refusing a file, without its preamble and advice."""
    preamble = ('Weights only load failed', 'Please file an issue', 'Check the documentation')
    lines = str(error).split('WeightsUnpickler error:')[-1].splitlines()
    reasons = [line.strip() for line in lines
               if line.strip() and not line.strip().startswith(preamble)]
    return reasons[0] if reasons else 'refused by the weights-only unpickler'


def _is_damaged_content_error(error: OSError) -> bool:
    """Whether ``error`` is the ``OSError`` that ``torch.load`` raises for a damaged file
    rather than one of reading it: a zip archive cut off after a few KB (about 5 to 66 KB
    with torch 2.x) sends its zip reader to seek before the file's start, which Python's
    file objects refuse with a plain ``OSError`` ``EINVAL`` naming no file. Missing or
    unreadable files (``FileNotFoundError``, ``PermissionError``, ... subclasses) and other
    errnos (``EIO`` of a failing disk) are left as they are."""
    return type(error) is OSError and error.errno == errno.EINVAL and error.filename is None


@contextmanager
def checkpoint_read_errors(path: str) -> Iterator[None]:
    """Re-raise the errors of reading the checkpoint ``path`` in the block as
    :class:`CheckpointReadError` (a :class:`RuntimeError`) naming the file.

    A file that the weights-only unpickler refuses (one that would run code, or one whose
    pickle is corrupted) and a file that is truncated or is no PyTorch checkpoint each get
    their own message; torch's advice to retry with ``weights_only=False`` is left out.
    A :class:`CheckpointReadError` raised in the block (by a loader naming the file
    itself) passes unchanged.
    """
    try:
        yield
    except CheckpointReadError:
        raise
    except pickle.UnpicklingError as error:
        reason = _refusal_reason(error)
        raise CheckpointReadError(
            f'refusing to load {path}: it is not a plain weights file ({reason}). pola_mm '
            'only unpickles tensors and plain data, since unpickling anything else can run '
            'code; re-save the weights of a file you trust as a plain state dict') from None
    except (RuntimeError, EOFError, ValueError, OSError) as error:
        if isinstance(error, OSError) and not _is_damaged_content_error(error):
            raise  # a missing or unreadable file, a failing disk: the error says which
        raise CheckpointReadError(
            f'cannot read checkpoint {path}: it is truncated or not a PyTorch checkpoint '
            f'({type(error).__name__}: {error})') from None


def _download(url: str, path: str, progress: bool) -> None:
    """Download ``url`` to ``path`` unless it is there already."""
    if osp.exists(path):
        return
    os.makedirs(osp.dirname(path), exist_ok=True)
    print_log(f'Downloading {url} to {path}', logger='current')
    try:  # writes a temporary file, renamed when complete
        torch.hub.download_url_to_file(url, path, progress=progress)
    except (OSError, ValueError, http.client.HTTPException) as error:  # URLError: OSError
        raise CheckpointReadError(f'cannot download checkpoint {url}: {error}') from error


def local_checkpoint(filename: Union[str, os.PathLike], model_dir: Optional[str] = None,
                     progress: bool = False) -> str:
    """The name to read ``filename`` from with weights-only unpickling.

    An ``http(s)://`` URL is downloaded into ``model_dir``, by default torch.hub's cache
    (``<torch.hub.get_dir()>/checkpoints``, where torch.hub and MMEngine keep it too),
    unless it is there already, and the cached file is returned: by rank 0 first, then,
    after a barrier, by the other ranks that do not see it (another node's cache). Other
    names (local paths, file backends' URIs, MMEngine's model zoos such as
    ``torchvision://``, which this module's loaders read weights-only) are returned as
    they are.

    Raises:
        ValueError: ``filename`` is neither a str nor an ``os.PathLike``.
        CheckpointReadError: naming the URL when the download fails.
    """
    filename = checkpoint_name(filename)
    if not filename.startswith(('http://', 'https://')):
        return filename
    cache_dir = model_dir or osp.join(torch.hub.get_dir(), 'checkpoints')
    cached = osp.join(cache_dir, osp.basename(urlparse(filename).path))
    rank, world_size = get_dist_info()
    if rank == 0:
        _download(filename, cached, progress)
    if world_size > 1:
        barrier()
        if rank > 0:
            _download(filename, cached, progress)
    return cached


def check_checkpoint_integrity(path: str) -> None:
    """Check the CRC-32 of every entry of the local checkpoint ``path`` (a zip file).

    ``torch.load`` does not check them: a checkpoint whose tensor bytes were damaged (a
    failing disk, an incomplete copy) loads with wrong weights. Entries saved without a
    CRC (``torch.utils.serialization.config.save.compute_crc32 = False``) and files that
    are no zip archive (the legacy format; truncated files, which ``torch.load`` refuses
    itself) are not checked. Reading costs about as much as loading.

    Raises:
        CheckpointReadError: naming ``path`` and the damaged entry.
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
        raise CheckpointReadError(
            f'cannot read checkpoint {path}: it is corrupted ({error})') from None


def read_checkpoint(filename: Union[str, os.PathLike], map_location='cpu') -> dict:
    """Read a checkpoint as MMEngine does (local files, file backends' URIs, URLs, model
    zoos), but safely: an ``http(s)://`` URL is downloaded first (:func:`local_checkpoint`),
    a local file's CRC-32 codes are checked (:func:`check_checkpoint_integrity`), and it is
    unpickled weights-only with :func:`checkpoint_globals` allowed, by this module's
    loaders; errors name ``filename`` (:func:`checkpoint_read_errors`). Globals allowed by
    an enclosing ``torch.serialization.safe_globals`` block are allowed too.

    ``filename`` is a str or an ``os.PathLike`` (a :class:`pathlib.Path`, say).

    Raises:
        ValueError: ``filename`` is neither a str nor an ``os.PathLike``.
        FileNotFoundError: for a local path that does not exist.
        RuntimeError: naming ``filename`` when it cannot be downloaded, is refused,
            truncated, corrupted or no PyTorch checkpoint, holds something other than a
            dict, or its tensors cannot be mapped to ``map_location``
            (:func:`check_map_location`).
    """
    filename = checkpoint_name(filename)
    if '://' not in filename and not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint file not found: {filename}')
    source = local_checkpoint(filename)
    check_checkpoint_integrity(source)
    with checkpoint_globals(), checkpoint_read_errors(filename):
        if source != filename:  # a downloaded URL, named as such
            checkpoint = _read_weights_only(source, map_location, filename)
        else:
            checkpoint = _load_checkpoint(filename, map_location=map_location)
    if not isinstance(checkpoint, Mapping):
        raise RuntimeError(f'checkpoint {filename} holds a {type(checkpoint).__name__}, '
                           'not a dict of weights')
    return checkpoint
