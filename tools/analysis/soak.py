"""Memory soak: train a small detector on CPU and compare its peak memory early and late.

Trains the ``make demo`` detector (FCOS with the mini Pola-PVT of
``configs/demo/fcos_pola-pvt-mini_shapes-256.py``, random init) on generated shapes images
through :class:`pola_mm.engine.PolaRunner`, as ``tools/train.py`` does: default hooks,
logging, a checkpoint every ``--checkpoint-interval`` iterations (one in each window by
default). It reports the peak
resident set (``VmHWM``, reset through ``/proc/self/clear_refs``) over the first
``--window`` iterations after ``--warmup`` and over the last ``--window`` iterations. Memory
kept across iterations (tensors held by a hook, growing caches or logs) shows up as
growth between the two.

Usage::

    python tools/analysis/soak.py                    # 200 iterations, 64-px images
    python tools/analysis/soak.py --iters 2000 --image-size 256 --batch-size 4

Exits with status 1 when the growth exceeds ``--max-growth`` (10 %). Linux only (/proc).
"""
import argparse
import os.path as osp
import sys
import tempfile
import time
from pathlib import Path

import torch
from mmengine.config import Config
from mmengine.hooks import Hook

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pola_mm.engine import build_runner  # noqa: E402
from pola_mm.testing import make_shapes_coco, shapes_coco_dataloaders  # noqa: E402

DEMO_CONFIG = ROOT / 'configs' / 'demo' / 'fcos_pola-pvt-mini_shapes-256.py'
MIB = 1024 * 1024


def proc_status_kib(field: str) -> int:
    """A ``kB`` field of /proc/self/status, e.g. VmRSS or VmHWM."""
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith(field + ':'):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> None:
    """Set the peak resident set (VmHWM) to the current one."""
    Path('/proc/self/clear_refs').write_text('5')


class PeakMemoryWindows(Hook):
    """Peak RSS over iterations ``[first, first + window)`` and the last ``window`` ones,
    and the time per iteration over the whole run after ``first``."""

    priority = 'LOWEST'  # after the checkpoint hook: its saves are inside the windows

    def __init__(self, first: int, window: int, total: int):
        self.windows = {'start': first, 'end': total - window}
        self.window = window
        self.peaks_kib = {}
        self.rss_at_first_iter_kib = None
        self.timed_from = None

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter == 0:
            self.rss_at_first_iter_kib = proc_status_kib('VmRSS')
        if runner.iter in self.windows.values():
            reset_peak_rss()
        if runner.iter == self.windows['start']:
            self.timed_from = time.perf_counter()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        for name, first in self.windows.items():
            if runner.iter == first + self.window - 1:
                self.peaks_kib[name] = proc_status_kib('VmHWM')


def build_config(args, data_root: str, work_dir: str) -> Config:
    """The demo config on the generated data, trained by iterations without validation."""
    cfg = Config.fromfile(str(DEMO_CONFIG))
    cfg.merge_from_dict(shapes_coco_dataloaders(
        data_root, args.image_size, batch_size=args.batch_size, with_mask=False))
    cfg.merge_from_dict({
        'model.backbone.pretrain_img_size': args.image_size,
        'train_cfg': dict(_delete_=True, type='IterBasedTrainLoop', max_iters=args.iters,
                          val_interval=args.iters + 1),
        'param_scheduler': [dict(type='LinearLR', start_factor=0.01, by_epoch=False,
                                 begin=0, end=min(100, args.iters))],
        'default_hooks.checkpoint': dict(type='CheckpointHook', by_epoch=False,
                                         interval=args.checkpoint_interval, max_keep_ckpts=1),
        'default_hooks.logger.interval': 50,
        'log_processor': dict(by_epoch=False),
        'randomness': dict(seed=0),
    })
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.work_dir = work_dir
    return cfg


def at_least(minimum: int):
    """argparse type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not an integer') from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f'must be at least {minimum}, got {value}')
        return value

    return parse


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--iters', type=at_least(1), default=200, help='training iterations')
    parser.add_argument('--warmup', type=at_least(0), default=20,
                        help='iterations before the first window (allocator and caches '
                        'settle)')
    parser.add_argument('--window', type=at_least(1), default=20, help='iterations per window')
    parser.add_argument('--image-size', type=at_least(1), default=64)
    parser.add_argument('--batch-size', type=at_least(1), default=2)
    parser.add_argument('--train-images', type=at_least(1), default=16)
    parser.add_argument('--checkpoint-interval', type=at_least(1), default=20,
                        help='iterations between checkpoints; with the default window, each '
                        'window holds one save')
    parser.add_argument('--threads', type=at_least(1), default=2, help='torch CPU threads')
    parser.add_argument('--max-growth', type=float, default=0.10,
                        help='largest accepted growth of the peak RSS, end over start')
    parser.add_argument('--work-dir', help='kept afterwards; a temporary one by default')
    args = parser.parse_args(argv)
    if args.warmup + 2 * args.window > args.iters:
        parser.error(f'--iters must be at least --warmup + 2 * --window = '
                     f'{args.warmup + 2 * args.window}, got {args.iters}')
    return args


def soak(args, work_dir: str) -> dict:
    """Train; return the peaks (MiB), the RSS at the first iteration and s/iteration."""
    data_root = osp.join(work_dir, 'data')
    make_shapes_coco(data_root, num_images=dict(train=args.train_images, val=1),
                     image_size=args.image_size)
    runner = build_runner(build_config(args, data_root, work_dir))
    meter = PeakMemoryWindows(args.warmup, args.window, args.iters)
    runner.register_hook(meter)
    runner.train()
    elapsed = time.perf_counter() - meter.timed_from
    return dict(start=meter.peaks_kib['start'] * 1024 / MIB,
                end=meter.peaks_kib['end'] * 1024 / MIB,
                first_iter=meter.rss_at_first_iter_kib * 1024 / MIB,
                seconds_per_iter=elapsed / (args.iters - args.warmup))


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.work_dir:
        figures = soak(args, args.work_dir)
    else:
        with tempfile.TemporaryDirectory(prefix='pola_soak_') as work_dir:
            figures = soak(args, work_dir)
    growth = figures['end'] / figures['start'] - 1
    start = f'{args.warmup + 1}-{args.warmup + args.window}'
    end = f'{args.iters - args.window + 1}-{args.iters}'
    print(f'soak: {args.iters} training iterations of FCOS + mini Pola-PVT, '
          f'{args.image_size}-px images, batch {args.batch_size}, CPU, '
          f'{args.threads} threads, {figures["seconds_per_iter"]:.3f} s/iter')
    print(f'| RSS | MiB |\n|---|---|\n'
          f'| at iteration 1 | {figures["first_iter"]:.1f} |\n'
          f'| peak, iterations {start} (start) | {figures["start"]:.1f} |\n'
          f'| peak, iterations {end} (end) | {figures["end"]:.1f} |\n'
          f'| growth, end over start | {100 * growth:+.1f} % |')
    if growth > args.max_growth:
        print(f'FAIL: peak RSS grew by more than {100 * args.max_growth:.0f} %')
        return 1
    print(f'OK: peak RSS grew by at most {100 * args.max_growth:.0f} %')
    return 0


if __name__ == '__main__':
    sys.exit(main())
