"""Check pola_mm's GPU path on a CUDA machine in one command (a few minutes on one GPU).

Needs a CUDA device (the first visible one is used), PyTorch with Triton, and for the
training step mmdet with a compiled mmcv; without a CUDA device it exits with status 2
and does nothing else. It runs, in order:

1. ``kernels``: the compiled Triton kernels (``attn_impl='triton'``) against the plain
   official math (:mod:`pola_mm.ops.pola_reference`), forward and gradients, for every
   supported head dim, in fp32, bf16, fp16 and bf16 q/v with fp32 k (as bf16 autocast
   hands them over); IEEE products, and TF32 with
   ``torch.set_float32_matmul_precision('high')``; with a per-channel ``scale`` (folded
   into the kernels' mixing matrices) against the reference on q/scale and k/scale.
   Relative error of the output and of the q, k, v, power and scale gradients against
   float64 (fp32, IEEE), else against the reference on the same inputs.
2. ``backbones``: every released PolaFormer backbone at its pretraining size, batch 2,
   forward and backward with ``attn_impl='triton'`` against ``'torch'`` on the same
   weights, in fp32: relative error of the four outputs, of all parameter gradients
   together and of each Pola layer's ``power`` and ``scale`` gradients.
3. ``polapp``: every released PolaFormer++ backbone at 224, batch 2, forward and backward
   with its lean PyTorch core (``attn_impl='torch'``) against the plain official math
   (``'reference'``) on the same weights, in fp32, with the same figures.
4. ``training``: 50 iterations of the demo detector
   (``configs/demo/fcos_pola-pvt-mini_shapes-256.py``, generated shapes data) under AMP
   (``AmpOptimWrapper``, fp16 by default) with the default ``attn_impl='auto'``: every loss
   finite, the mean of the last 10 below that of the first 10, and every kernel
   configuration verified (none fell back to PyTorch).
5. ``benchmark``: ``tools/analysis/benchmark.py``'s stage-1 attention and backbone rows at
   detection size (2 images of 800 x 1344, bf16 autocast), printed as its table.

Then prints one table (check, result, worst figure, seconds). Everything goes to a JSON
file, rewritten after each check (so a run stopped part-way leaves the checks it
finished). Exits 1 when a check fails.

Usage::

    python tools/analysis/gpu_check.py                        # all five, JSON to work_dirs/
    python tools/analysis/gpu_check.py --skip benchmark --json /tmp/gpu_check.json
"""
import argparse
import contextlib
import json
import logging
import math
import os.path as osp
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, ContextManager, Dict, List, Optional, Tuple
from unittest import mock

import torch
import torch.nn.functional as F
from mmengine.logging import print_log

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

CHECKS = ('kernels', 'backbones', 'polapp', 'training', 'benchmark')
DEMO_CONFIG = ROOT / 'configs' / 'demo' / 'fcos_pola-pvt-mini_shapes-256.py'
# (batch, heads, queries, keys, chunk): odd token counts, several chunks, keys != queries
KERNEL_SHAPES = [(2, 3, 333, 333, 256), (1, 2, 97, 70, 32), (2, 5, 1000, 250, 256)]
# q, k, v dtypes; 'autocast': as bf16 autocast hands them over (k fp32 after the fp32
# positional encoding is added)
KERNEL_DTYPES = {'fp32': (torch.float32, ) * 3, 'bf16': (torch.bfloat16, ) * 3,
                 'fp16': (torch.float16, ) * 3,
                 'autocast': (torch.bfloat16, torch.float32, torch.bfloat16)}
KERNEL_TOLERANCE = {'fp32': 1e-4, 'tf32': 5e-3, 'half': 2e-2}
BACKBONE_TOLERANCE = 1e-3
TRAIN_ITERS = 50


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return ((ours.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def forward_backward(fn: Callable, inputs: List[torch.Tensor], grad: torch.Tensor):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out.backward(grad.to(out.dtype))
    return out, [t.grad for t in leaves]


def check_kernels(device: torch.device, shapes: List[Tuple[int, ...]] = KERNEL_SHAPES,
                  head_dims: Optional[Tuple[int, ...]] = None) -> Dict:
    """Compiled kernels against the plain reference: worst relative error per setting, for
    ``shapes`` (batch, heads, queries, keys, chunk) and ``head_dims`` (default: all
    supported)."""
    from pola_mm.ops.pola_reference import plain_polarity_attention
    from pola_mm.ops.pola_triton import polarity_linear_attention_triton
    from pola_mm.ops.triton_compile import SUPPORTED_HEAD_DIMS
    settings = {}
    for precision in ('highest', 'high'):  # IEEE, then TF32 products
        torch.set_float32_matmul_precision(precision)
        try:
            for dtype_name, (q_dtype, k_dtype, v_dtype) in KERNEL_DTYPES.items():
                for dims in head_dims or SUPPORTED_HEAD_DIMS:
                    worst = 0.
                    for seed, (batch, heads, queries, keys, chunk) in enumerate(shapes):
                        gen = torch.Generator().manual_seed(seed)
                        q = torch.randn(batch, heads, queries, dims, generator=gen)
                        k, v = (torch.randn(batch, heads, keys, dims, generator=gen)
                                for _ in range(2))
                        power = 1 + 4 * torch.rand(1, heads, 1, dims, generator=gen)
                        scale = 0.5 + torch.rand(1, heads, 1, dims, generator=gen)
                        grad = torch.randn(batch, heads, queries, dims, generator=gen)
                        inputs = [q.to(device, q_dtype), k.to(device, k_dtype),
                                  v.to(device, v_dtype), power.to(device), scale.to(device)]
                        out, grads = forward_backward(
                            lambda q, k, v, p, s: polarity_linear_attention_triton(
                                q, k, v, p, chunk=chunk, scale=s), inputs, grad.to(device))
                        exact = dtype_name == 'fp32'
                        ref_inputs = [t.double() for t in inputs] if exact else inputs
                        ref, ref_grads = forward_backward(
                            lambda q, k, v, p, s: plain_polarity_attention(q / s, k / s, v, p),
                            ref_inputs, grad.to(device))
                        worst = max([worst, relative_error(out, ref)] +
                                    [relative_error(a, b) for a, b in zip(grads, ref_grads)])
                    tolerance = KERNEL_TOLERANCE['half' if dtype_name != 'fp32' else
                                                 'fp32' if precision == 'highest' else 'tf32']
                    name = f"{'ieee' if precision == 'highest' else 'tf32'} {dtype_name} d{dims}"
                    settings[name] = {'error': worst, 'tolerance': tolerance,
                                      'passed': worst < tolerance}
        finally:
            torch.set_float32_matmul_precision('highest')
    worst = max(setting['error'] / setting['tolerance'] for setting in settings.values())
    return {'passed': all(s['passed'] for s in settings.values()), 'settings': settings,
            'figure': f'worst error {worst:.2f} of its tolerance'}


def compare_backbones(device: torch.device, families, impls, core_params) -> Dict:
    """Every released backbone of ``families``, ``impls[0]`` against ``impls[1]`` on the same
    weights (fp32): the four outputs, all parameter gradients together and each core
    parameter's gradient (names ending in ``core_params``)."""
    from pola_mm.models import released_backbone
    from pola_mm.variants import RELEASED
    models = {}
    for model in (m for m in RELEASED if m.family in families):
        torch.manual_seed(0)
        image = torch.randn(2, 3, model.img_size, model.img_size, device=device)
        results = []
        state = None
        for impl in impls:
            backbone = released_backbone(model.name, attn_impl=impl, drop_path_rate=0.)
            if state is None:  # weights away from their init, where the core's are ~0
                with torch.no_grad():
                    for param in backbone.parameters():
                        param.add_(torch.randn_like(param) * 0.05)
                state = backbone.state_dict()
            backbone.load_state_dict(state)
            backbone.to(device)
            outs = backbone(image)
            sum(out.float().square().mean() for out in outs).backward()
            grads = {name: param.grad.detach().clone()
                     for name, param in backbone.named_parameters() if param.grad is not None}
            results.append(([out.detach() for out in outs], grads))
            del backbone
        (outs, grads), (ref_outs, ref_grads) = results
        # the outputs, all parameter gradients together (single ones can be ~0 and all
        # rounding), and the core's own parameters (their gradients come from the core)
        names = sorted(ref_grads)
        errors = [relative_error(a, b) for a, b in zip(outs, ref_outs)]
        errors.append(relative_error(torch.cat([grads[name].flatten() for name in names]),
                                     torch.cat([ref_grads[name].flatten() for name in names])))
        errors += [relative_error(grads[name], ref_grads[name]) for name in names
                   if name.endswith(core_params)]
        models[model.name] = {'error': max(errors), 'passed': max(errors) < BACKBONE_TOLERANCE
                              and sorted(grads) == names}
    worst = max(result['error'] for result in models.values())
    return {'passed': all(r['passed'] for r in models.values()), 'models': models,
            'figure': f'worst relative error {worst:.1e} (bar {BACKBONE_TOLERANCE:g})'}


def check_backbones(device: torch.device) -> Dict:
    """Every released PolaFormer backbone (the family with Triton kernels), 'triton'
    against 'torch'."""
    from pola_mm.variants import V1_FAMILIES
    return compare_backbones(device, V1_FAMILIES, ('triton', 'torch'),
                             ('attn.power', 'attn.scale'))


def check_polapp(device: torch.device) -> Dict:
    """Every released PolaFormer++ backbone: its lean PyTorch core ('torch', all rows at
    once off CPU) against the plain official math ('reference')."""
    from pola_mm.variants import POLAPP
    return compare_backbones(device, (POLAPP, ), ('torch', 'reference'), ('attn.s1', 'attn.s2'))


def check_training(device: torch.device, work_dir: str, iters: int, amp_dtype: str) -> Dict:
    """``iters`` AMP iterations of the demo detector with ``attn_impl='auto'``."""
    from mmengine.config import Config

    from pola_mm.engine import build_runner
    from pola_mm.ops import polarity_attention
    from pola_mm.testing import make_shapes_coco, shapes_coco_dataloaders
    data_root = osp.join(work_dir, 'data')
    make_shapes_coco(data_root, num_images=dict(train=200), image_size=256, seed=0,
                     splits=('train', ))
    cfg = Config.fromfile(str(DEMO_CONFIG))
    cfg.merge_from_dict(shapes_coco_dataloaders(data_root, 256, batch_size=8, with_mask=False))
    cfg.work_dir = osp.join(work_dir, 'run')
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=iters + 1)
    for key in ('val_cfg', 'val_dataloader', 'val_evaluator', 'test_cfg', 'test_dataloader',
                'test_evaluator'):
        cfg[key] = None
    cfg.param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
                                end=10)]
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.dtype = amp_dtype
    cfg.default_hooks.logger.interval = 10
    cfg.default_hooks.checkpoint = None
    cfg.randomness = dict(seed=0)
    polarity_attention._KERNEL_STATUS.clear()
    focal_loss, focal_loss_form = gpu_focal_loss()
    with warnings.catch_warnings(record=True) as caught, focal_loss:
        warnings.simplefilter('always')
        runner = build_runner(cfg)
        runner.train()
    losses = [float(value) for value in runner.message_hub.get_scalar('train/loss').data[0]]
    fallbacks = [str(w.message) for w in caught if 'Triton kernels failed' in str(w.message)]
    status = {str(key): value for key, value in polarity_attention._KERNEL_STATUS.items()}
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    finite = all(math.isfinite(loss) for loss in losses)
    passed = (len(losses) == iters and finite and last < first and not fallbacks and status
              and all(value == 'verified' for value in status.values()))
    return {'passed': bool(passed), 'losses': losses, 'kernel_status': status,
            'fallback_warnings': fallbacks, 'focal_loss': focal_loss_form,
            'figure': f'loss {first:.3f} -> {last:.3f} (means of first / last 10), '
                      f'{len(status)} kernel configurations, {len(fallbacks)} fallbacks'}


def gpu_focal_loss() -> Tuple[ContextManager, str]:
    """(context, description): within the context the demo detector's focal loss runs on GPU
    tensors. mmdet takes mmcv's CUDA op there, which an mmcv compiled without CUDA ops
    (built on a machine without a GPU, as by ``tools/gpu_wheelhouse.sh``) lacks; then
    mmdet's PyTorch form of the same loss, the one it takes for CPU tensors, stands in."""
    from mmcv.ops import get_compiling_cuda_version
    if get_compiling_cuda_version() != 'not available':
        return contextlib.nullcontext(), "mmcv's CUDA op"
    from mmdet.models.losses import focal_loss

    def torch_sigmoid_focal_loss(pred, target, *args, **kwargs):
        one_hot = F.one_hot(target, pred.shape[1] + 1)[:, :pred.shape[1]]
        return focal_loss.py_sigmoid_focal_loss(pred, one_hot, *args, **kwargs)

    return (mock.patch.object(focal_loss, 'sigmoid_focal_loss', torch_sigmoid_focal_loss),
            "mmdet's PyTorch form (mmcv has no CUDA ops)")


def check_benchmark() -> Dict:
    """The benchmark's stage-1 attention and backbone groups at detection size."""
    import benchmark
    rows, label = benchmark.run(['--device', 'cuda', '--dtype', 'bf16', '--batch', '2',
                                 '--sizes', 'det', '--filter', 'stage-1', 'backbone'])
    print_log(benchmark.format_table(rows, label))
    triton_rows = [row for row in rows if 'triton' in row['name']]
    return {'passed': bool(triton_rows), 'label': label, 'rows': rows,
            'figure': '; '.join(f"{row['group'].split(' ', 2)[2]} {row['name']}: "
                                f"{row['fwd_bwd']:.1f} ms" for row in triton_rows)}


def write_report(report: Dict, path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=1, default=str))


def parse_args(argv: Optional[List[str]] = None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--json', default='work_dirs/gpu_check.json',
                        help='where to write all results (default %(default)s)')
    parser.add_argument('--skip', nargs='+', choices=CHECKS, default=[],
                        help='checks to leave out')
    parser.add_argument('--iters', type=int, default=TRAIN_ITERS,
                        help='training iterations of the demo detector (default %(default)s)')
    parser.add_argument('--amp-dtype', default='float16', choices=('float16', 'bfloat16'),
                        help='AMP dtype of the training check (default %(default)s)')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print_log('gpu_check: no CUDA device; it checks the GPU path and needs one',
                  level=logging.ERROR)
        return 2
    device = torch.device('cuda', torch.cuda.current_device())
    import triton

    from pola_mm.ops.triton_compile import BLOCK_TOKENS, CHUNK_TOKENS, LAUNCH_OPTIONS
    report = {'device': torch.cuda.get_device_name(device),
              'capability': '.'.join(map(str, torch.cuda.get_device_capability(device))),
              'torch': torch.__version__, 'triton': triton.__version__,
              'kernel_launch': dict(LAUNCH_OPTIONS, block_tokens=BLOCK_TOKENS,
                                    chunk_tokens=CHUNK_TOKENS), 'checks': {}}
    write_report(report, args.json)  # the device is on record even if a check kills Python
    with tempfile.TemporaryDirectory() as work_dir:
        runs = {'kernels': lambda: check_kernels(device),
                'backbones': lambda: check_backbones(device),
                'polapp': lambda: check_polapp(device),
                'training': lambda: check_training(device, work_dir, args.iters,
                                                   args.amp_dtype),
                'benchmark': check_benchmark}
        for name in CHECKS:
            if name in args.skip:
                continue
            print_log(f'gpu_check: {name} ...')
            start = time.perf_counter()
            try:
                result = runs[name]()
            except Exception as error:  # noqa: BLE001 (report it, run the other checks)
                result = {'passed': False, 'figure': f'{type(error).__name__}: {error}'}
            result['seconds'] = time.perf_counter() - start
            report['checks'][name] = result
            write_report(report, args.json)  # what is done survives a later time-out
    lines = [f"{report['device']} (sm {report['capability']}), torch {report['torch']}, "
             f"triton {report['triton']}, kernel launch {report['kernel_launch']}", '',
             '| check | result | figure | s |',
             '|---|---|---|---:|']
    for name, result in report['checks'].items():
        lines.append(f"| {name} | {'pass' if result['passed'] else 'FAIL'} | "
                     f"{result['figure']} | {result['seconds']:.0f} |")
    print_log('\n'.join(lines))
    print_log(f'gpu_check: results written to {args.json}')
    return 0 if all(result['passed'] for result in report['checks'].values()) else 1


if __name__ == '__main__':
    sys.exit(main())
