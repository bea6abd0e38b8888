"""Kernel launches of a training step of the stage-1 attention layers (and, with
``--backbones``, of whole backbones), counted on CPU.

At 2 images per GPU the stage-1 attention layers are launch-bound: each of their kernels
runs for microseconds, so a training step takes about as long as its launches (and the
Python around them) do. This script counts those launches without a GPU: every ATen
operation that computes something (views, ``detach`` and bare allocations excluded) is
counted as one launch, as it is one kernel (or one library call) on CUDA, and every
Triton kernel launch as one. The Triton kernels run in Triton's CPU interpreter, whose
own tensor operations are not counted, and the depthwise convolutions take their CUDA
backward (PyTorch's own, one call) instead of pola_mm's CPU kernel gradient, so the count
is CUDA's up to the few operations whose CUDA form takes more than one kernel.

Rows: the Pola-Swin-T and Pola-PVT-T stage-1 layers with each implementation of the core
(``attn_impl`` 'torch' and 'triton') next to the softmax layers they replace (pola_mm's
window-7 attention and, where mmdet imports, mmdet's ``ShiftWindowMSA`` and PVT's
spatial-reduction attention), one training step (forward, backward of the sum of the
outputs) after a warm-up step, under bf16 autocast by default. Counts do not depend on the
token grid (a small one is used). ``--backbones`` adds Pola-Swin-T and Pola-PVT-T with
each core next to mmdet's Swin-T and PVT-T at 224 x 224 (about 4 minutes on 2 cores: the
interpreter is slow on the stage-1 maps).

Usage::

    python tools/analysis/launches.py            # bf16 autocast
    python tools/analysis/launches.py --dtype fp32 --ops   # also list the operations
    python tools/analysis/launches.py --backbones
"""
import argparse
import collections
import contextlib
import os
import sys
from pathlib import Path
from typing import Callable, Counter, Dict, List, Tuple

os.environ['TRITON_INTERPRET'] = '1'  # before Triton is imported: the kernels run on CPU

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from mmengine.logging import print_log  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pola_mm.models import (PolaLinearAttention, PolaPVT, PolaSwinTransformer,  # noqa: E402
                            ShiftWindowAttention)
from pola_mm.ops import depthwise_conv  # noqa: E402

# operations that launch no kernel: allocations and in-place metadata changes (views are
# told apart by their schema)
NO_LAUNCH = {'empty', 'empty_like', 'empty_strided', 'new_empty', 'new_empty_strided',
             'set_', 'lift_fresh', 'resize_', '_unsafe_view'}
GRID = (14, 21)  # a multiple of the window: no padding in the window layers
IMAGE_SIZE = 224  # of --backbones: the pretraining size (stage 3 shifts, stage 4 cannot)
BATCH = 2


class LaunchCounter(TorchDispatchMode):
    """Counts the ATen operations that launch a kernel (see the module docstring) and,
    within :meth:`count_as_on_cuda`, the Triton kernel launches."""

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = collections.Counter()
        self.triton: Counter[str] = collections.Counter()
        self._inside_kernel = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not (self._inside_kernel or func.is_view or name in NO_LAUNCH):
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def count_as_on_cuda(self):
        """Within: each launch of a Triton kernel (in the interpreter) counts once, and the
        interpreter's tensor operations inside it not at all; depthwise convolutions run as
        on CUDA (``F.conv2d`` and its own backward)."""
        run, cpu_conv = InterpretedFunction.run, depthwise_conv._DepthwiseConv2d.apply
        counter = self

        def counted_run(kernel, *args, **kwargs):
            counter.triton[kernel.fn.__name__] += 1
            counter._inside_kernel = True
            try:
                return run(kernel, *args, **kwargs)
            finally:
                counter._inside_kernel = False

        InterpretedFunction.run = counted_run
        depthwise_conv._DepthwiseConv2d.apply = staticmethod(
            lambda x, weight, bias, padding, fuse: F.conv2d(x, weight, bias, padding=padding,
                                                            groups=x.shape[1]))
        try:
            yield self
        finally:
            InterpretedFunction.run = run
            depthwise_conv._DepthwiseConv2d.apply = cpu_conv

    def total(self) -> int:
        return sum(self.ops.values()) + sum(self.triton.values())


Row = Tuple[str, Callable[[], nn.Module], Callable[[], Tuple]]  # name, module, its inputs


def tokens(channels: int) -> Callable[[], Tuple]:
    """Inputs of a stage-1 layer: (B, N, C) tokens that need gradients, and the grid."""
    return lambda: (torch.randn(BATCH, GRID[0] * GRID[1], channels, requires_grad=True), GRID)


def image() -> Tuple:
    return (torch.randn(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE), )


def layers() -> Dict[str, List[Row]]:
    """{group: rows}: the stage-1 attention layers."""
    groups = {
        'Pola-Swin-T stage 1 (C 96, 3 heads)': [
            (f"pola attn_impl='{impl}'",
             lambda impl=impl: PolaLinearAttention(96, 3, (56, 56), 'qkvg', attn_impl=impl),
             tokens(96)) for impl in ('torch', 'triton')] + [
            ("pola_mm softmax window 7, shift 3 ('S')",
             lambda: ShiftWindowAttention(96, 3, 7, shift=True), tokens(96))],
        'Pola-PVT-T stage 1 (C 64, 1 head)': [
            (f"pola attn_impl='{impl}'",
             lambda impl=impl: PolaLinearAttention(64, 1, (56, 56), 'qg_kv', attn_impl=impl),
             tokens(64)) for impl in ('torch', 'triton')]}
    try:
        from mmdet.models.backbones.pvt import SpatialReductionAttention
        from mmdet.models.backbones.swin import ShiftWindowMSA
    except ImportError as error:
        print_log(f'mmdet rows left out: {error}', level=30)
        return groups
    groups['Pola-Swin-T stage 1 (C 96, 3 heads)'] += [
        ('mmdet ShiftWindowMSA w7', lambda: MMDetCall(ShiftWindowMSA(96, 3, 7)), tokens(96)),
        ('mmdet ShiftWindowMSA w7 shift 3',
         lambda: MMDetCall(ShiftWindowMSA(96, 3, 7, shift_size=3)), tokens(96))]
    groups['Pola-PVT-T stage 1 (C 64, 1 head)'] += [
        ('mmdet SpatialReductionAttention sr 8',
         lambda: MMDetCall(SpatialReductionAttention(64, 1, sr_ratio=8), identity=0.),
         tokens(64))]
    return groups


def backbones() -> Dict[str, List[Row]]:
    """{group: rows}: whole backbones next to mmdet's."""
    groups = {
        f'Pola-Swin-T backbone ({IMAGE_SIZE} x {IMAGE_SIZE})': [
            (f"PolaSwinTransformer attn_impl='{impl}'",
             lambda impl=impl: PolaSwinTransformer('tiny', attn_impl=impl), image)
            for impl in ('torch', 'triton')],
        f'Pola-PVT-T backbone ({IMAGE_SIZE} x {IMAGE_SIZE})': [
            (f"PolaPVT attn_impl='{impl}'", lambda impl=impl: PolaPVT('tiny', attn_impl=impl),
             image) for impl in ('torch', 'triton')]}
    try:
        from mmdet.models.backbones import PyramidVisionTransformer, SwinTransformer
    except ImportError as error:
        print_log(f'mmdet rows left out: {error}', level=30)
        return groups
    swin, pvt = groups
    groups[swin].append(('mmdet SwinTransformer (Swin-T)', SwinTransformer, image))
    groups[pvt].append(('mmdet PyramidVisionTransformer (PVT-T)', PyramidVisionTransformer,
                        image))
    return groups


class MMDetCall(nn.Module):
    """An mmdet attention module called as the pola_mm layers are: ``(x, hw_shape)``."""

    def __init__(self, module: nn.Module, **kwargs):
        super().__init__()
        self.module, self.kwargs = module, kwargs

    def forward(self, x: Tensor, hw_shape: Tuple[int, int]) -> Tensor:
        return self.module(x, hw_shape, **self.kwargs)


def count_step(module: nn.Module, inputs: Callable[[], Tuple], dtype: torch.dtype) -> Tuple[
        LaunchCounter, LaunchCounter]:
    """(forward, backward) launch counters of one training step after a warm-up step; the
    loss is the sum of the outputs."""
    torch.manual_seed(0)
    args = inputs()
    autocast = torch.autocast('cpu', dtype=dtype, enabled=dtype != torch.float32)
    counters = []
    for warm_up in (True, False):
        forward, backward = LaunchCounter(), LaunchCounter()
        with forward, forward.count_as_on_cuda(), autocast:
            outs = module(*args)
            outs = outs if isinstance(outs, (tuple, list)) else [outs]
            loss = outs[0].float().sum()
            for out in outs[1:]:
                loss = loss + out.float().sum()
        with backward, backward.count_as_on_cuda():
            loss.backward()
        module.zero_grad(set_to_none=True)
        for arg in args:
            if isinstance(arg, Tensor):
                arg.grad = None
        if not warm_up:
            counters = [forward, backward]
    return counters[0], counters[1]


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--dtype', choices=('bf16', 'fp16', 'fp32'), default='bf16',
                        help='autocast dtype (fp32: no autocast)')
    parser.add_argument('--ops', action='store_true', help='also list the operations')
    parser.add_argument('--backbones', action='store_true',
                        help=f'also whole backbones at {IMAGE_SIZE} x {IMAGE_SIZE} (minutes: '
                        'the Triton kernels run in the interpreter)')
    args = parser.parse_args(argv)
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16, 'fp32': torch.float32}[args.dtype]
    lines = [f'kernel launches of one training step, {args.dtype}, batch {BATCH}',
             f"{'module':<48}{'forward':>9}{'backward':>10}{'total':>7}{'triton':>8}"]
    details = []
    groups = {**layers(), **(backbones() if args.backbones else {})}
    for group, rows in groups.items():
        lines.append(group)
        for name, make, inputs in rows:
            forward, backward = count_step(make(), inputs, dtype)
            triton = sum(forward.triton.values()) + sum(backward.triton.values())
            lines.append(f'  {name:<46}{forward.total():>9}{backward.total():>10}'
                         f'{forward.total() + backward.total():>7}{triton:>8}')
            details.append(f'{group} | {name}\n  forward: {dict(forward.ops.most_common())}'
                           f'\n  backward: {dict(backward.ops.most_common())}')
    report = '\n'.join(lines + (details if args.ops else []))
    print_log(report)
    return report


if __name__ == '__main__':
    main()
