"""Parameters and FLOPs of every released PolaFormer model at 224 x 224 and 1333 x 800.

Counted with mmengine's ``get_model_complexity_info`` (jit tracing; one multiply-add counts
as one FLOP, as in mmdet/mmseg/mmpretrain's ``get_flops``; element-wise work such as the
polarity feature maps, softmax or activations is not counted). The linear attention's
matrix products are counted: the fast cores run inside autograd Functions that tracing
cannot see into, so the count runs the layers with the plain reference core
(``attn_impl='reference'``, :mod:`pola_mm.ops.pola_reference`), whose ``K^T V``,
``Q (K^T V)`` and normaliser products are ordinary matmuls and have the same multiply-add
count as the fast cores up to the normaliser (2d per query per stream).

At 224 x 224 the released ImageNet classifier is counted (Swin-B-384 at its 384 x 384);
at 1333 x 800 the backbone alone, as detection and segmentation use it (no neck or head).

Usage::

    python tools/analysis/get_flops.py                  # all archs, both sizes
    python tools/analysis/get_flops.py --archs pola_swin_tiny --sizes 224
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import torch
from mmengine.analysis import get_model_complexity_info
from mmengine.logging import print_log

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from timm import create_model  # noqa: E402

import pola_mm  # noqa: E402,F401  (registers the timm models)
from pola_mm.variants import RELEASED  # noqa: E402

ARCHS = tuple(model.name for model in RELEASED)
SIZES = {'224': (224, 224), '1333x800': (800, 1333)}


def complexity(arch: str, size: Tuple[int, int]) -> Dict[str, float]:
    """{'params', 'flops' (multiply-adds), 'size'} of one released model for one image,
    counted with the plain reference core (``attn_impl='reference'``), whose products
    tracing sees."""
    model = create_model(arch, attn_impl='reference').eval()
    if size == SIZES['224']:
        size = model.pretrained_cfg['input_size'][1:]  # 384 x 384 for Swin-B-384
    else:  # detection / segmentation use the backbone alone
        model = model.backbone
    with torch.no_grad():
        info = get_model_complexity_info(model, inputs=(torch.zeros(1, 3, *size), ),
                                         show_table=False, show_arch=False)
    return {'params': info['params'], 'flops': info['flops'], 'size': size}


def main(argv: List[str] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--archs', nargs='+', choices=ARCHS, default=list(ARCHS))
    parser.add_argument('--sizes', nargs='+', choices=sorted(SIZES), default=list(SIZES))
    args = parser.parse_args(argv)
    lines = ['| arch | input (H x W) | params (M) | GFLOPs |', '|---|---|---:|---:|']
    for arch in args.archs:
        for size_name in args.sizes:
            result = complexity(arch, SIZES[size_name])
            height, width = result['size']
            lines.append(f"| {arch} | {height} x {width} | {result['params'] / 1e6:.2f} | "
                         f"{result['flops'] / 1e9:.2f} |")
    table = '\n'.join(lines)
    print_log(table)
    return table


if __name__ == '__main__':
    main()
