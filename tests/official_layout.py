"""Deterministic weights and inputs in the layout of the official PolaFormer
checkpoints, shared by the golden-fixture generator and the tests.

The official release (``ZacharyMeng/PolaFormer``) stores ImageNet classifiers
as ``{'model': state_dict, ...}``. The goldens in
``tests/fixtures/official_golden`` were produced by loading
:func:`official_layout_state_dict` into the authors' own models and running
:func:`official_input` through them; a test that builds the same tensors here,
converts them with our checkpoint loader and compares against the stored
numbers therefore checks our port against the official code without any
download. Everything is generated with :func:`numpy.random.default_rng`, whose
streams are stable across numpy versions, and each key has its own sub-stream
so adding or removing keys never changes the others.
"""
import json
import zlib
from pathlib import Path

import numpy as np
import torch

from pola_mm.variants import released_model

FIXTURES = Path(__file__).parent / 'fixtures'
GOLDEN_DIR = FIXTURES / 'official_golden'
SHAPES_FILE = FIXTURES / 'official_state_dict_shapes.json'

#: Buffers recomputed by the model itself; they are not part of the recipe.
BUFFER_SUFFIXES = ('relative_position_index', 'attn_mask')

#: Number of flat positions sampled per stage output by :func:`sample_stage`.
NUM_STAGE_SAMPLES = 4096


def official_shapes(arch: str) -> dict:
    """Return ``{key: shape}`` of the official checkpoint of ``arch``.

    Args:
        arch: an architecture name of the JSON file, e.g. ``'pola_swin_tiny'``
            or ``'pola_pvt_large'``.
    """
    shapes = json.loads(SHAPES_FILE.read_text())
    if arch not in shapes:
        raise ValueError(f'unknown official arch {arch!r}; '
                         f'expected one of {sorted(shapes)}')
    return {key: tuple(shape) for key, shape in shapes[arch].items()}


def _key_scale_and_offset(key: str, shape: tuple) -> tuple:
    """Return ``(scale, offset)`` so that the value is ``offset + scale*N``."""
    name = key.rsplit('.', 1)[-1]
    is_norm = ('norm' in key) and len(shape) == 1
    if is_norm and name == 'weight':
        return 0.1, 1.0
    if name in ('power', 'scale'):
        return 0.5, 0.0
    if name == 'relative_position_bias_table':
        return 0.5, 0.0
    if name == 'positional_encoding' or name.startswith('pos_embed'):
        return 0.1, 0.0
    if name == 'bias':
        return 0.05, 0.0
    if len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        return 1.0 / np.sqrt(fan_in), 0.0
    raise ValueError(f'no recipe for official key {key!r} of shape {shape}')


def official_layout_state_dict(arch: str, seed: int = 0) -> dict:
    """Random float32 weights for every learnable key of the official ``arch``.

    Magnitudes are realistic so a comparison is sensitive: LayerNorm weights
    ``1 + 0.1*N``, biases ``0.05*N``, ``attn.power``/``attn.scale`` and
    relative position bias tables ``0.5*N``, positional encodings ``0.1*N``,
    weight matrices/kernels (head included) ``N/sqrt(fan_in)``.
    The buffers ``relative_position_index`` and ``attn_mask`` are skipped.

    Args:
        arch: official architecture name (see :func:`official_shapes`).
        seed: base seed; each key uses ``default_rng([seed, crc32(key)])``.

    Returns:
        dict: ``{key: torch.Tensor}`` in the official key order and layout.
    """
    return recipe_state_dict(official_shapes(arch), seed)


def recipe_state_dict(shapes: dict, seed: int = 0) -> dict:
    """Apply the weight recipe of :func:`official_layout_state_dict` to
    ``{key: shape}`` (also used for the attention-module goldens).

    Keys ending in a buffer name of ``BUFFER_SUFFIXES`` are skipped.
    """
    state_dict = {}
    for key, shape in shapes.items():
        if key.endswith(BUFFER_SUFFIXES):
            continue
        shape = tuple(shape)
        scale, offset = _key_scale_and_offset(key, shape)
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        values = offset + scale * rng.standard_normal(shape)
        state_dict[key] = torch.from_numpy(values.astype(np.float32))
    return state_dict


def official_checkpoint(state_dict: dict) -> dict:
    """Wrap ``state_dict`` the way the released ``.pth`` files store it."""
    return {'model': state_dict, 'epoch': 299, 'max_accuracy': 0.0}


def official_input_size(arch: str) -> int:
    """Input resolution of the released model ``arch`` (384 for ``pola_swin_base_384``)."""
    return released_model(arch).img_size


def official_input(arch: str, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Standard-normal image batch ``(batch, 3, S, S)`` used for the goldens."""
    size = official_input_size(arch)
    rng = np.random.default_rng([seed, zlib.crc32(b'input')])
    values = rng.standard_normal((batch, 3, size, size))
    return torch.from_numpy(values.astype(np.float32))


def sample_stage(output, stage: int) -> dict:
    """Reproducible summary of one stage output, as stored in the goldens.

    Args:
        output: stage feature map ``(B, C, H, W)`` (tensor or array).
        stage: stage index 0..3; seeds the choice of sampled positions.

    Returns:
        dict with ``stage{i}_index`` (int32 flat indices into the
        ``(B, C, H, W)`` tensor), ``stage{i}_values`` (the values there),
        ``stage{i}_channel_mean`` ``(B, C)`` and ``stage{i}_position_mean``
        ``(B, H, W)`` (mean over channels), all float32 except the indices.
    """
    if isinstance(output, torch.Tensor):
        output = output.detach().cpu().float().numpy()
    output = np.asarray(output, dtype=np.float32)
    if output.ndim != 4:
        raise ValueError(f'stage output must be (B, C, H, W), got {output.shape}')
    rng = np.random.default_rng(seed=stage)
    index = rng.integers(0, output.size, NUM_STAGE_SAMPLES).astype(np.int32)
    prefix = f'stage{stage}_'
    return {
        prefix + 'index': index,
        prefix + 'values': output.reshape(-1)[index],
        prefix + 'channel_mean': output.mean(axis=(2, 3)),
        prefix + 'position_mean': output.mean(axis=1),
    }
