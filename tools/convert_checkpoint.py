"""Turn a released PolaFormer checkpoint into a plain weights file.

The released training checkpoints pickle the authors' yacs config and the optimizer
state next to the weights. This reads them safely (weights-only unpickling; see
pola_mm.checkpoint), keeps the model weights (classifier included, as released) and
writes them as safetensors (``.safetensors``) or a weights-only ``.pth`` (``{'model': ...}``),
printing what was kept and dropped.

    python tools/convert_checkpoint.py pola_swin_tiny.pth checkpoints/pola_swin_tiny.pth
"""
import argparse
import sys
from pathlib import Path

import torch

from pola_mm.checkpoint import read_checkpoint, select_model_weights, weights_location


def convert(src: str, dst: str) -> dict:
    """Write the model weights of ``src`` to ``dst``; return what was kept and dropped."""
    checkpoint = read_checkpoint(src)
    weights = select_model_weights(checkpoint, src)
    location = weights_location(checkpoint)
    dropped = sorted(k for k in checkpoint if k != location) if location else []
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in weights.items()}
    if dst.endswith('.safetensors'):
        from safetensors.torch import save_file
        save_file(tensors, dst)
    else:
        torch.save({'model': tensors}, dst)
    return dict(kept=len(tensors), parameters=sum(v.numel() for v in tensors.values()),
                dropped=dropped)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='released checkpoint (.pth)')
    parser.add_argument('dst', help='output file: .safetensors or .pth')
    args = parser.parse_args(argv)
    try:
        result = convert(args.src, args.dst)
    except (OSError, RuntimeError) as error:  # OSError: missing, unreadable, a full disk
        print(f'error: {error}', file=sys.stderr)
        return 1
    print(f'kept {result["kept"]} weight tensors ({result["parameters"] / 1e6:.2f}M values) '
          f'-> {args.dst}')
    print(f'dropped entries: {", ".join(result["dropped"]) or "none"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
