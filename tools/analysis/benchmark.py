"""Speed and peak memory of Pola attention and backbones against mmdet's softmax ones.

Measures, side by side in one run, forward (no grad) and forward + backward time and the
peak memory of a training step of

* the attention core alone: the plain reference of the official math
  (``pola_mm/ops/pola_reference.py``), the lean PyTorch path and, on CUDA, the Triton
  kernels;
* the stage-1 attention layers: Pola-Swin-T (C 96, 3 heads, global) and Pola-PVT-T
  (C 64, 1 head, global) with each of the models' implementations of the core
  (``attn_impl='reference'`` for the plain core, ``'torch'``, and ``'triton'`` on CUDA),
  pola_mm's softmax window-7 attention
  (Pola-Swin's 'S' stages, the same math as mmdet's), mmdet's Swin-T window-7 attention
  (``ShiftWindowMSA``, plain and shifted) and PVT-T spatial-reduction attention
  (``SpatialReductionAttention``, sr 8), all on the same stage-1 token grid;
* whole backbones: Pola-Swin-T, mmdet Swin-T, Pola-PVT-T, mmdet PVT-T;
* PolaFormer++ b2: its stage-1 linear-attention layer (C 64, 1 head, d 64) with the plain
  form of the authors' core (``attn_impl='reference'``) and the lean one, eager
  (``'torch'``) and with its elementwise steps fused (``'auto'``: compiled on CPU), and the
  whole PolaPP-b2 backbone (``'auto'``) next to mmdet's PVTv2-b2 and Swin-T;

at a detection size (800 x 1344, the 1333 x 800 resize padded to 32), a segmentation size
(512 x 512) and half the detection size per side (400 x 672, so that the detection size has
4x its pixels: the scaling column is time(800 x 1344) / time(400 x 672)).

Times are taken with the allocator as a training process has it, the cases of a group in
turn (round-robin over the repeats), so that drift of the machine's speed during a run
affects each side of a ratio alike; next to the ratio of the medians the table gives the
range of the ratios of the times taken side by side in each round, which shows how much
the machine's noise leaves of a ratio. Peak memory is measured in a child process (started
with ``--peaks-only``): on CUDA ``torch.cuda.max_memory_allocated``; on CPU the process's
peak resident set (``VmHWM``, reset before each step through ``/proc/self/clear_refs``)
minus the resident set before the step, with glibc told to serve every allocation >= 1 MiB
by mmap so that freed tensors leave the resident set at once (which makes every large
allocation fault its pages in anew and would distort the times, hence the second
process). Allocations are not sampled, so nothing is missed, but small (< 1 MiB) heap
churn is counted at its high-water mark.

mmdet's rows are left out, with a warning, where mmdet does not import (a GPU machine
without a compiled mmcv). On CUDA the times are wall-clock per call after a
``torch.cuda.synchronize()``, so at small batches they include the Python launch overhead.

Usage::

    python tools/analysis/benchmark.py                   # CPU, 2 threads, fp32
    python tools/analysis/benchmark.py --device cuda --dtype bf16 --batch 2
    python tools/analysis/benchmark.py --quick           # tiny shapes, smoke test
    python tools/analysis/benchmark.py --filter stage-1 backbone   # only those groups
"""
import argparse
import ctypes
import json
import logging
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
from mmengine.logging import print_log
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pola_mm.models import (PolaLinearAttention, PolaPP, PolaPPLinearAttention,  # noqa: E402
                            PolaPVT, PolaSwinTransformer, ShiftWindowAttention)
from pola_mm.ops.pola_reference import plain_polarity_attention  # noqa: E402
from pola_mm.ops.pola_torch import polarity_linear_attention_torch  # noqa: E402
from pola_mm.ops.rope import AxisTables, RotaryTable  # noqa: E402

try:  # mmdet's softmax baselines; a GPU box without a compiled mmcv still benchmarks Pola
    from mmdet.models.backbones.pvt import (PyramidVisionTransformer, PyramidVisionTransformerV2,
                                            SpatialReductionAttention)
    from mmdet.models.backbones.swin import ShiftWindowMSA, SwinTransformer
    MMDET_ERROR = None
except ImportError as error:
    MMDET_ERROR = error

SIZES = {'det': (800, 1344), 'seg': (512, 512), 'half-det': (400, 672)}
QUICK_SIZES = {'det': (64, 128), 'seg': (64, 64), 'half-det': (32, 64)}
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
PEAKS_MARK = 'peaks: '


def core_functions(device: str) -> Dict[str, Callable]:
    """The attention cores to compare: name -> f(q, k, v, power)."""
    cores = {'plain': plain_polarity_attention, 'lean': polarity_linear_attention_torch}
    if device == 'cuda':
        from pola_mm.ops.pola_triton import polarity_linear_attention_triton
        cores['triton'] = polarity_linear_attention_triton
    return cores


def fast_impls(device: str) -> Dict[str, str]:
    """The models' own fast implementations (``attn_impl``) to compare: core name -> impl."""
    return {'lean': 'torch', 'triton': 'triton'} if device == 'cuda' else {'lean': 'torch'}


class MemoryMeter:
    """Peak extra memory (bytes) of a callable, on CPU (resident set) or CUDA. On CPU the
    process's allocator is switched for good to mmap for >= 1 MiB: time nothing after."""

    def __init__(self, device: str):
        self.device = device
        if device == 'cpu':
            ctypes.CDLL('libc.so.6').mallopt(M_MMAP_THRESHOLD, 1 << 20)

    @staticmethod
    def _status(field: str) -> int:
        text = Path('/proc/self/status').read_text()
        return int(re.search(rf'{field}:\s+(\d+)', text).group(1)) * 1024

    def measure(self, fn: Callable[[], None]) -> int:
        if self.device == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - before
        Path('/proc/self/clear_refs').write_text('5')  # VmHWM := current RSS
        before = self._status('VmRSS')
        fn()
        return self._status('VmHWM') - before


def time_call_ms(fn: Callable[[], None], device: str) -> float:
    """Wall time of one call of ``fn`` in ms (after a CUDA synchronisation on CUDA)."""
    if device == 'cuda':
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == 'cuda':
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def time_group(steps: List[Callable[[], None]], device: str,
               repeat: int) -> List[List[float]]:
    """Times (ms) of ``repeat`` calls of each of ``steps`` after one warm-up call each,
    the steps taken in turn (round-robin) so that a machine that slows down or speeds up
    over the minutes of a run affects every step of a group alike: the i-th times of two
    steps were taken side by side."""
    for step in steps:
        step()
    times = [[] for _ in steps]
    for _ in range(repeat):
        for step, step_times in zip(steps, times):
            step_times.append(time_call_ms(step, device))
    return times


def outputs_sum(out) -> Tensor:
    """A scalar that depends on every output (tuple of stages or one tensor)."""
    if isinstance(out, (tuple, list)):
        return sum(o.float().sum() for o in out)
    return out.float().sum()


class Case:
    """One measured thing: builds its module and inputs on demand; its steps run it."""

    def __init__(self, name: str, group: str, build: Callable[[], Tuple[nn.Module, Callable]]):
        self.name, self.group, self.build = name, group, build

    def steps(self, device: str, dtype: torch.dtype) -> Tuple[Callable, Callable]:
        """A forward (no grad) and a training step (forward + backward) of the case."""
        module, call = self.build()
        module = module.to(device)
        autocast = torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32)

        def forward():
            with torch.no_grad(), autocast:
                call(module)

        def train_step():
            with autocast:
                loss = outputs_sum(call(module))
            loss.backward()
            module.zero_grad(set_to_none=True)

        return forward, train_step

    def peak(self, device: str, dtype: torch.dtype, meter: MemoryMeter) -> int:
        """Peak memory (bytes) of a training step, after one warm-up step."""
        _, train_step = self.steps(device, dtype)
        train_step()
        return meter.measure(train_step)


def time_cases(cases: List['Case'], device: str, dtype: torch.dtype,
               repeat: int) -> List[Dict]:
    """fwd and fwd_bwd medians (ms) of the cases and the fwd_bwd time of every round
    (``fwd_bwd_rounds``), each group's cases timed round-robin."""
    results = {}
    for group in dict.fromkeys(case.group for case in cases):
        members = [case for case in cases if case.group == group]
        steps = [case.steps(device, dtype) for case in members]
        forward_times = time_group([forward for forward, _ in steps], device, repeat)
        train_times = time_group([train for _, train in steps], device, repeat)
        del steps
        for case, fwd_rounds, fwd_bwd_rounds in zip(members, forward_times, train_times):
            fwd, fwd_bwd = statistics.median(fwd_rounds), statistics.median(fwd_bwd_rounds)
            results[case] = {'fwd': fwd, 'fwd_bwd': fwd_bwd, 'fwd_bwd_rounds': fwd_bwd_rounds}
            print_log(f'{case.group} | {case.name}: fwd {fwd:.1f} ms, fwd+bwd '
                      f'{fwd_bwd:.1f} ms')
    return [results[case] for case in cases]


def tokens_input(batch: int, hw: Tuple[int, int], channels: int, device: str) -> Tensor:
    return torch.randn(batch, hw[0] * hw[1], channels, device=device, requires_grad=True)


def build_cases(sizes: Dict[str, Tuple[int, int]], batch: int, device: str,
                dtype: torch.dtype) -> List[Case]:
    """All cases; the stage-1 grid of an H x W image is (H / 4, W / 4)."""
    cases = []
    cores = core_functions(device)
    for size_name, (height, width) in sizes.items():
        grid = (height // 4, width // 4)
        tag = f'{size_name} {height}x{width}'

        def attention(make, channels, grid=grid):
            def build():
                module = make()
                x = tokens_input(batch, grid, channels, device)
                return module, lambda m: m(x, grid)
            return build

        def mmdet_sra(grid=grid):
            module = SpatialReductionAttention(64, 1, sr_ratio=8)
            x = tokens_input(batch, grid, 64, device)
            return module, lambda m: m(x, grid, identity=0.)

        def core_inputs(heads, dims, num_keys_div, grid=grid):
            # as inside the layer under autocast: q and v come from the autocast Linear, k
            # is fp32 after the addition of the fp32 positional encoding
            tokens = grid[0] * grid[1]
            q, k, v = (torch.randn(batch, heads, count, dims, device=device, dtype=t_dtype,
                                   requires_grad=True)
                       for count, t_dtype in ((tokens, dtype),
                                              (tokens // num_keys_div, torch.float32),
                                              (tokens // num_keys_div, dtype)))
            power = (1 + 4 * torch.rand(1, heads, 1, dims, device=device)).requires_grad_()
            return q, k, v, power

        def core_case(fn, heads, dims, grid=grid):
            def build():
                q, k, v, power = core_inputs(heads, dims, 1, grid)
                return nn.Identity(), lambda m: fn(q, k, v, power)
            return build

        def swin_pola(impl='torch'):
            return lambda: PolaLinearAttention(96, 3, (56, 56), 'qkvg', attn_impl=impl)

        def pvt_pola(impl='torch'):
            return lambda: PolaLinearAttention(64, 1, (56, 56), 'qg_kv', attn_impl=impl)

        def polapp_layer(impl, grid=grid):
            def build():
                x = torch.randn(batch, 64, *grid, device=device, requires_grad=True)
                tables = AxisTables(*(t.to(device) for t in RotaryTable(128).axes(grid)))
                return PolaPPLinearAttention(64, 1, attn_impl=impl), lambda m: m(x, tables)
            return build

        def image_backbone(make, height=height, width=width):
            def build():
                x = torch.randn(batch, 3, height, width, device=device)
                return make(), lambda m: m(x)
            return build

        group = f'{tag} core swin-t (3 heads, d 32)'
        for core_name, fn in cores.items():
            cases.append(Case(f'core {core_name}', group, core_case(fn, 3, 32)))
        group = f'{tag} core pvt-t (1 head, d 64)'
        for core_name, fn in cores.items():
            cases.append(Case(f'core {core_name}', group, core_case(fn, 1, 64)))

        impls = fast_impls(device)
        group = f'{tag} stage-1 attention swin-t'
        if MMDET_ERROR is None:
            cases.append(Case('mmdet ShiftWindowMSA w7', group,
                              attention(lambda: ShiftWindowMSA(96, 3, 7), 96)))
            cases.append(Case('mmdet ShiftWindowMSA w7 shift 3', group,
                              attention(lambda: ShiftWindowMSA(96, 3, 7, shift_size=3), 96)))
        cases.append(Case('pola_mm softmax window w7 shift 3', group,
                          attention(lambda: ShiftWindowAttention(96, 3, 7, shift=True), 96)))
        cases.append(Case('pola (plain core)', group, attention(swin_pola('reference'), 96)))
        for core_name, impl in impls.items():
            cases.append(Case(f'pola ({core_name} core)', group, attention(swin_pola(impl), 96)))
        group = f'{tag} stage-1 attention pvt-t'
        if MMDET_ERROR is None:
            cases.append(Case('mmdet SRA sr8', group, mmdet_sra))
        cases.append(Case('pola (plain core)', group, attention(pvt_pola('reference'), 64)))
        for core_name, impl in impls.items():
            cases.append(Case(f'pola ({core_name} core)', group, attention(pvt_pola(impl), 64)))

        group = f'{tag} backbone swin-t'
        if MMDET_ERROR is None:
            cases.append(Case('mmdet SwinTransformer', group, image_backbone(
                lambda: SwinTransformer(drop_path_rate=0.))))
        for core_name, impl in impls.items():
            cases.append(Case(f'PolaSwinTransformer ({core_name} core)', group, image_backbone(
                lambda impl=impl: PolaSwinTransformer('tiny', drop_path_rate=0.,
                                                      attn_impl=impl))))
        group = f'{tag} backbone pvt-t'
        if MMDET_ERROR is None:
            cases.append(Case('mmdet PVT-T', group, image_backbone(
                lambda: PyramidVisionTransformer(num_layers=[2, 2, 2, 2], drop_path_rate=0.))))
        for core_name, impl in impls.items():
            cases.append(Case(f'PolaPVT ({core_name} core)', group, image_backbone(
                lambda impl=impl: PolaPVT('tiny', drop_path_rate=0., attn_impl=impl))))

        group = f'{tag} stage-1 attention polapp-b2'
        cases.append(Case('polapp (plain core)', group, polapp_layer('reference')))
        cases.append(Case('polapp (lean core, eager)', group, polapp_layer('torch')))
        cases.append(Case('polapp (lean core, fused)', group, polapp_layer('auto')))
        group = f'{tag} backbone polapp-b2'
        if MMDET_ERROR is None:
            cases.append(Case('mmdet PVTv2-b2', group, image_backbone(
                lambda: PyramidVisionTransformerV2(embed_dims=64, num_layers=[3, 4, 6, 3],
                                                   drop_path_rate=0.))))
            cases.append(Case('mmdet SwinTransformer', group, image_backbone(
                lambda: SwinTransformer(drop_path_rate=0.))))
        cases.append(Case('PolaPP-b2 (lean core)', group, image_backbone(
            lambda: PolaPP('b2', drop_path_rate=0.))))
    return cases


def ratio_range(rounds: List[float], base_rounds: List[float]) -> str:
    """Lowest and highest ratio of times taken side by side in the same round."""
    ratios = [time / base for time, base in zip(rounds, base_rounds)]
    return f'{min(ratios):.2f}-{max(ratios):.2f}'


def format_table(rows: List[Dict], device_label: str) -> str:
    """Markdown table; ratios are against the first row of each group (the baseline):
    that of the medians and, for the time, the range of the ratios within one round."""
    unit = 'GiB'
    lines = [f'device: {device_label}', '',
             '| group | case | fwd ms | fwd+bwd ms | ratio fwd+bwd | range over rounds | '
             'peak ' + unit + ' | ratio peak |', '|---|---|---:|---:|---:|---:|---:|---:|']
    baselines = {}
    for row in rows:
        base = baselines.setdefault(row['group'], row)
        spread = '' if row is base else ratio_range(row['fwd_bwd_rounds'],
                                                    base['fwd_bwd_rounds'])
        lines.append(
            f"| {row['group']} | {row['name']} | {row['fwd']:.1f} | {row['fwd_bwd']:.1f} | "
            f"{row['fwd_bwd'] / base['fwd_bwd']:.2f} | {spread} | {row['peak'] / 2**30:.3f} | "
            f"{row['peak'] / max(base['peak'], 1):.2f} |")
    return '\n'.join(lines)


def scaling_table(rows: List[Dict]) -> str:
    """time(det) / time(half-det) per case: 4x the pixels, linear scaling gives 4.0."""
    by_key = {(row['group'].split(' ', 2)[2], row['name'], row['group'].split(' ')[0]): row
              for row in rows}
    lines = ['| thing | case | fwd+bwd det / half-det (4x pixels) |', '|---|---|---:|']
    for (group, name, size), row in by_key.items():
        half = by_key.get((group, name, 'half-det'))
        if size == 'det' and half:
            lines.append(f"| {group} | {name} | {row['fwd_bwd'] / half['fwd_bwd']:.2f} |")
    return '\n'.join(lines)


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not an integer') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be at least 1, got {value}')
    return value


def selected_sizes(args) -> Dict[str, Tuple[int, int]]:
    """The image sizes the arguments ask for: name -> (height, width)."""
    return {name: (QUICK_SIZES if args.quick else SIZES)[name] for name in args.sizes}


def group_names(sizes: Dict[str, Tuple[int, int]]) -> List[str]:
    """The groups of cases at ``sizes``, in their order (no module is built)."""
    return list(dict.fromkeys(case.group for case in build_cases(sizes, 1, 'cpu',
                                                                 torch.float32)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu',
                        choices=('cpu', 'cuda'))
    parser.add_argument('--threads', type=positive_int, default=2,
                        help='CPU threads (default 2)')
    parser.add_argument('--dtype', default='fp32', choices=sorted(DTYPES),
                        help='autocast dtype of the layers (the Pola core stays fp32)')
    parser.add_argument('--batch', type=positive_int, default=1)
    parser.add_argument('--repeat', type=positive_int, default=5, help='timed runs (median)')
    parser.add_argument('--sizes', nargs='+', choices=sorted(SIZES), default=list(SIZES))
    parser.add_argument('--filter', nargs='+', default=[''],
                        help='only groups containing one of these texts; each must be in '
                        'some group')
    parser.add_argument('--peaks-only', action='store_true',
                        help='measure only the peaks and print them as JSON (the child pass)')
    parser.add_argument('--quick', action='store_true',
                        help='tiny shapes and one timed run: a smoke test, not a measurement')
    args = parser.parse_args(argv)
    sizes = selected_sizes(args)
    groups = group_names(sizes)
    unmatched = [text for text in args.filter if not any(text in group for group in groups)]
    if unmatched:
        tags = [f'{name} {height}x{width}' for name, (height, width) in sizes.items()]
        things = dict.fromkeys(group.split(' ', 2)[2] for group in groups)
        parser.error(f'--filter {" ".join(map(repr, unmatched))}: no group contains '
                     f'{"it" if len(unmatched) == 1 else "them"}; '
                     f'the groups are "SIZE THING" for SIZE in {", ".join(tags)} and THING in '
                     f'{"; ".join(things)}')
    return args


def measure_peaks(argv: Optional[List[str]]) -> List[int]:
    """Peak memory of every case, from a child process run with ``--peaks-only``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    child = subprocess.run([sys.executable, __file__, *argv, '--peaks-only'],
                           capture_output=True, text=True)
    for line in child.stdout.splitlines():
        if line.startswith(PEAKS_MARK):
            return json.loads(line[len(PEAKS_MARK):])
    raise RuntimeError(f'the peak-memory pass failed:\n{child.stderr[-3000:]}')


def select_cases(args) -> List[Case]:
    """The cases the arguments ask for."""
    sizes = selected_sizes(args)
    return [case for case in build_cases(sizes, args.batch, args.device, DTYPES[args.dtype])
            if any(text in case.group for text in args.filter)]


def run(argv: Optional[List[str]] = None) -> Tuple[List[Dict], str]:
    """Benchmark what ``argv`` asks for (the command-line arguments).

    Returns:
        tuple: one dict per case (``name``, ``group``, ``fwd`` and ``fwd_bwd`` medians in
        ms, ``fwd_bwd_rounds``, ``peak`` in bytes, from a child process given ``argv``),
        and a label of the device and settings.
    """
    args = parse_args(argv)
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError('--device cuda but CUDA is not available')
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if MMDET_ERROR is not None:
        print_log(f'mmdet baselines left out (mmdet does not import: {MMDET_ERROR})',
                  level=logging.WARNING)
    cases = select_cases(args)
    repeat = 1 if args.quick else args.repeat
    rows = [dict(result, name=case.name, group=case.group) for case, result in
            zip(cases, time_cases(cases, args.device, DTYPES[args.dtype], repeat))]
    for row, peak in zip(rows, measure_peaks(argv)):
        row['peak'] = peak
    label = (torch.cuda.get_device_name() if args.device == 'cuda' else
             f'cpu, {args.threads} threads') + f', {args.dtype}, batch {args.batch}'
    return rows, label


def main(argv=None) -> str:
    args = parse_args(argv)
    if args.peaks_only:
        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        meter = MemoryMeter(args.device)
        peaks = [case.peak(args.device, DTYPES[args.dtype], meter)
                 for case in select_cases(args)]
        print_log(PEAKS_MARK + json.dumps(peaks))
        return ''
    rows, label = run(argv)
    report = format_table(rows, label) + '\n\n' + scaling_table(rows)
    print_log(report)
    return report


if __name__ == '__main__':
    main()
