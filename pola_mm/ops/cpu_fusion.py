"""Elementwise steps fused into one loop each on CPU by ``torch.compile``.

A chain of eager operations reads and writes its whole operands once per operation; on
CPU that, not the arithmetic, is what a chain of a dozen operations costs. Inductor
(``torch.compile``'s CPU backend) turns the chain into one vectorised C++ loop (a few with
reductions) that reads its inputs once. It needs a C++ compiler and Python's headers at
run time; where compiling fails, :func:`run_fused` warns once, naming the error, and runs
the eager form from then on: the same numbers, more slowly.
"""
import functools
import threading
import warnings
from typing import Callable, TypeVar

import torch

Result = TypeVar('Result')
RECOMPILE_LIMIT = 64
# maps of at least this many elements (a 512 x 512 image's stage 1) are worth fusing; on
# smaller ones compiling (seconds per step and form of the inputs, once per process)
# outweighs what it saves
FUSE_MIN_ELEMENTS = 1 << 20


class CompiledStep:
    """``fn`` compiled with ``torch.compile(dynamic=True)`` at its first call: one
    compilation serves all sizes; a new dtype or memory layout compiles once more. It
    carries ``fn``'s name and docstring."""

    def __init__(self, fn: Callable):
        functools.update_wrapper(self, fn)
        self._compiled = None
        self._lock = threading.Lock()

    def __call__(self, *args):
        with self._lock:
            if self._compiled is None:
                self._compiled = torch.compile(self.__wrapped__, dynamic=True)
        # sizes of 1 (batch, heads), dtypes and layouts each compile once more: allow more
        # than dynamo's default of 8 forms per function before it stops compiling
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            return self._compiled(*args)


class FusableStep:
    """One step in two forms of one signature, called with ``fuse`` saying which; it
    carries the eager form's name and docstring.

    Args:
        eager (Callable): the step as in-place operations on buffers it is given: fast
            without compilation.
        fused (Callable): the same step written as plain math (elementwise operations and
            reductions, results copied into the given outputs), run as a
            :class:`CompiledStep`.
    """

    def __init__(self, eager: Callable, fused: Callable):
        functools.update_wrapper(self, eager)
        self.eager, self.fused = eager, CompiledStep(fused)

    def __call__(self, *args, fuse: bool):
        return self.fused(*args) if fuse else self.eager(*args)


_failure = []  # the first error of a fused run in this process, if any


def run_fused(body: Callable[[bool], Result], fuse: bool) -> Result:
    """``body(True)`` (its steps fused) if ``fuse`` and no fused run has failed in this
    process, else ``body(False)``. A failing fused run is run again eagerly, after one
    ``RuntimeWarning`` naming the error; ``body`` must write all of its results afresh
    each run. Memory errors are raised: eager runs need more memory, not less."""
    if fuse and not _failure:
        try:
            return body(True)
        except (MemoryError, torch.OutOfMemoryError):
            raise
        except Exception as error:  # no or a failing C++ compiler on this machine, ...
            _failure.append(error)
            warnings.warn(f'the compiled (fused) CPU steps of the PolaFormer++ layers failed: '
                          f'{type(error).__name__}: {error}\nRunning them eagerly from '
                          "now on (same numbers, slower); attn_impl='torch' does so from "
                          'the start.', RuntimeWarning, stacklevel=2)
    return body(False)
