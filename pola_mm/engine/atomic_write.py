"""Atomic file writes: a reader never finds a partly written file.

The new content goes to ``<path>.tmp`` in the same directory, is flushed to the disk
(``fsync``) and renamed over ``path`` with :func:`os.replace`, which is atomic within a
file system; the directory is synced too, so that the rename survives a power cut. A
process killed at any moment leaves the old file or the new one, never a mix, and at most
a stray ``.tmp`` file (see :func:`remove_stale_temp_files`).
"""
import contextlib
import glob
import os
import os.path as osp
from typing import Iterator, List

TEMP_SUFFIX = '.tmp'


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str) -> Iterator[str]:
    """Yield the temporary path to write ``path``'s new content to; publish it on exit.

    If the block raises, the temporary file is removed and ``path`` is left as it was.
    """
    temp = path + TEMP_SUFFIX
    try:
        yield temp
        _fsync(temp)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)
        raise
    if os.name == 'posix':  # a directory cannot be opened for fsync on Windows
        _fsync(osp.dirname(osp.abspath(path)))


def write_text_atomic(path: str, text: str) -> None:
    """Replace the content of the text file ``path`` by ``text`` atomically."""
    with atomic_write(path) as temp:
        with open(temp, 'w') as f:
            f.write(text)


def remove_stale_temp_files(directory: str, pattern: str) -> List[str]:
    """Delete the temporary files of writes that were interrupted (by a kill, a full disk)
    for the files of ``directory`` matching the glob ``pattern``; return their paths."""
    stale = sorted(glob.glob(osp.join(glob.escape(directory), pattern + TEMP_SUFFIX)))
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    return stale
