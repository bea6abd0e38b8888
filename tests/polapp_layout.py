"""Deterministic weights and inputs for PolaFormer++ (PolaPP b0..b5), shared by the
golden-fixture generator and the tests.

The goldens in ``tests/fixtures/polapp_golden`` were produced by loading
:func:`recipe_state_dict` into the authors' own models (classifier ``POLA`` and
dense backbone ``PolaPP`` with ``extra_norms``), converting them to float64 and
running :func:`polapp_input` through them. A test that builds the same tensors
here, loads them into pola_mm's models and compares with
:func:`assert_sampled_outputs_close` therefore checks the port against the
authors' code without any download or any copy of their code.

Everything is drawn with :func:`numpy.random.default_rng`, whose streams are
stable across numpy versions; each key has its own sub-stream
``default_rng([seed, crc32(key)])``, so adding or removing keys never changes
the others. Stage outputs are summarised at the positions chosen by
``official_layout.sample_stage`` (the PolaFormer v1 goldens use the same
positions), but kept in float64 so a float64 run can be checked to ~1e-12.
"""
import json
import zlib
from typing import Dict, Sequence, Union

import numpy as np
import torch

from official_layout import FIXTURES, sample_stage

SHAPES_FILE = FIXTURES / 'polapp_state_dict_shapes.json'
GOLDEN_DIR = FIXTURES / 'polapp_golden'

#: The variants, in order.
ARCHS = ('b0', 'b1', 'b2', 'b3', 'b4', 'b5')
#: ``kind`` values of :func:`polapp_shapes`: the ImageNet classifier and the
#: dense (detection / segmentation) backbone with ``extra_norms``.
KINDS = ('classifier', 'dense')
#: Input sizes of the goldens and the prefix of their arrays.
GOLDEN_INPUTS = {'s224': (2, 3, 224, 224), 's197x311': (1, 3, 197, 311)}
#: Head dims of the attention-module goldens: ``head_dim: (dim, num_heads)``.
ATTENTION_CASES = {32: (64, 2), 64: (64, 1), 96: (192, 2)}
#: Map size ``(H, W)`` of the attention-module goldens.
ATTENTION_HW = (7, 9)
#: Key suffix of the RoPE buffers, which the recipe leaves to the model.
ROPE_SUFFIX = '.angle'

#: Gain on ``N(0, 1)/sqrt(fan_in)`` of the per-block positional conv ``pos``:
#: ``x + pos(x)`` is applied in series in every block (no norm, no layer
#: scale), so a unit gain would double the variance per block (2**38 for b5).
POS_GAIN = 0.2


def polapp_shapes(arch: str, kind: str = 'classifier') -> Dict[str, tuple]:
    """Return ``{key: shape}`` of the authors' ``state_dict()`` of ``arch``.

    Args:
        arch: ``'b0'`` .. ``'b5'`` (a ``'polapp_'`` prefix is accepted).
        kind: ``'classifier'`` (``POLA``, the ImageNet checkpoint layout) or
            ``'dense'`` (the detection/segmentation ``PolaPP`` with
            ``extra_norms``).

    Returns:
        dict: keys in the authors' order; ``num_batches_tracked`` has shape ``()``.
    """
    entry = _shapes_entry(arch, kind)
    return {key: tuple(shape) for key, shape in entry['state_dict']}


def polapp_num_params(arch: str, kind: str = 'classifier') -> int:
    """Number of parameters (not buffers) of the authors' model ``arch``/``kind``."""
    return int(_shapes_entry(arch, kind)['num_params'])


def _shapes_entry(arch: str, kind: str) -> dict:
    arch = arch[len('polapp_'):] if arch.startswith('polapp_') else arch
    if arch not in ARCHS:
        raise ValueError(f'unknown PolaPP arch {arch!r}; expected one of {ARCHS}')
    if kind not in KINDS:
        raise ValueError(f'unknown kind {kind!r}; expected one of {KINDS}')
    return json.loads(SHAPES_FILE.read_text())[arch][kind]


def _key_values(key: str, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """Draw the recipe value of one key (see :func:`recipe_state_dict`)."""
    module, _, name = key.rpartition('.')
    if name == 'running_var':
        return rng.uniform(0.5, 1.5, shape)
    if name == 'running_mean':
        return 0.1 * rng.standard_normal(shape)
    if name in ('s1', 's2'):
        return rng.standard_normal(shape)
    if name in ('gamma_1', 'gamma_2'):
        return 0.5 + 0.1 * rng.standard_normal(shape)
    if name == 'bias':
        return 0.05 * rng.standard_normal(shape)
    if name == 'weight' and len(shape) == 1:  # LayerNorm and BatchNorm
        return 1.0 + 0.1 * rng.standard_normal(shape)
    if name == 'weight' and len(shape) >= 2:  # Linear and Conv2d
        gain = POS_GAIN if module.endswith('.pos') else 1.0
        fan_in = int(np.prod(shape[1:]))
        return gain / np.sqrt(fan_in) * rng.standard_normal(shape)
    raise ValueError(f'no recipe for PolaPP key {key!r} of shape {shape}')


def recipe_state_dict(shapes: dict, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random, well-conditioned weights for every key of ``shapes``.

    The values keep a deep random network (b5 has 38 blocks) finite and of
    moderate size in every stage, while making every part of every block
    matter:

    - Linear / Conv2d weights: ``N(0, 1)/sqrt(fan_in)``; the per-block
      positional depthwise conv ``*.pos.weight`` gets a gain of
      :data:`POS_GAIN` because it is applied in series, outside any residual
      branch scale;
    - all biases ``0.05*N``;
    - LayerNorm and BatchNorm weights ``1 + 0.1*N``;
    - BatchNorm ``running_mean`` ``0.1*N``, ``running_var`` ``U(0.5, 1.5)``,
      ``num_batches_tracked`` 0 (int64);
    - ``attn.s1`` / ``attn.s2`` ``N(0, 1)``, so ``sigmoid`` varies per channel;
    - ``gamma_1`` / ``gamma_2`` ``0.5 + 0.1*N`` (not the released init 1e-6,
      which would hide the attention and FFN branches).

    The RoPE ``angle`` buffers (keys ending in ``.angle``) are NOT in the
    result: they are deterministic and each model keeps its own computed ones,
    so load with ``strict=False`` and expect exactly those keys as missing.

    Args:
        shapes: ``{key: shape}``, e.g. from :func:`polapp_shapes`, or the state
            dict shapes of a single attention module.
        seed: base seed; each key uses ``default_rng([seed, crc32(key)])``.

    Returns:
        dict: ``{key: torch.Tensor}`` in the order of ``shapes``; float32,
        except ``num_batches_tracked`` (int64 scalar).
    """
    state_dict = {}
    for key, shape in shapes.items():
        if key.endswith(ROPE_SUFFIX):
            continue
        shape = tuple(shape)
        if key.endswith('num_batches_tracked'):
            state_dict[key] = torch.zeros(shape, dtype=torch.int64)
            continue
        rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
        values = _key_values(key, shape, rng)
        state_dict[key] = torch.from_numpy(values.astype(np.float32))
    return state_dict


def polapp_input(arch_or_seed: Union[str, int], size: Sequence[int]) -> torch.Tensor:
    """Deterministic standard-normal float32 image batch of ``size`` (B, 3, H, W).

    Args:
        arch_or_seed: a variant name (e.g. ``'b2'``; the goldens use this) or an
            int seed. The stream is ``default_rng([crc32(b'polapp-input'), s,
            *size])`` with ``s = crc32(arch)`` or the seed.
        size: ``(B, C, H, W)``, e.g. a value of :data:`GOLDEN_INPUTS`.
    """
    size = tuple(int(n) for n in size)
    if isinstance(arch_or_seed, str):
        stream = zlib.crc32(arch_or_seed.encode())
    else:
        stream = int(arch_or_seed)
    rng = np.random.default_rng([zlib.crc32(b'polapp-input'), stream, *size])
    return torch.from_numpy(rng.standard_normal(size).astype(np.float32))


def attention_input(head_dim: int) -> torch.Tensor:
    """Float32 ``(2, C, H, W)`` input of the attention golden with ``head_dim``."""
    dim, _ = ATTENTION_CASES[head_dim]
    return polapp_input(1000 + head_dim, (2, dim, *ATTENTION_HW))


def sample_outputs(outputs: Sequence, prefix: str = '') -> Dict[str, np.ndarray]:
    """Float64 summary of stage outputs, as stored in the PolaPP goldens.

    For stage ``i`` the positions are those of ``official_layout.sample_stage``
    (4096 flat indices drawn with ``default_rng(seed=i)``); the values and means
    are kept in float64.

    Args:
        outputs: the 4 stage maps ``(B, C, H, W)`` (tensors or arrays).
        prefix: prepended to every name, e.g. ``'s224_'``.

    Returns:
        dict with ``{prefix}stage{i}_index`` (int32), ``_values`` (4096,),
        ``_channel_mean`` (B, C), ``_position_mean`` (B, H, W) for each stage,
        and ``{prefix}stage_shapes`` (n, 4) int64.
    """
    summary = {}
    shapes = []
    for stage, output in enumerate(outputs):
        if isinstance(output, torch.Tensor):
            output = output.detach().cpu().double().numpy()
        output = np.asarray(output, dtype=np.float64)
        index = sample_stage(output, stage)[f'stage{stage}_index']
        name = f'{prefix}stage{stage}_'
        summary[name + 'index'] = index
        summary[name + 'values'] = output.reshape(-1)[index]
        summary[name + 'channel_mean'] = output.mean(axis=(2, 3))
        summary[name + 'position_mean'] = output.mean(axis=1)
        shapes.append(output.shape)
    summary[f'{prefix}stage_shapes'] = np.asarray(shapes, dtype=np.int64)
    return summary


def relative_error(ours, ref) -> float:
    """``||ours - ref|| / ||ref||`` (Frobenius), in float64."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def sampled_output_errors(golden, prefix: str, outputs: Sequence) -> Dict[str, float]:
    """Relative errors of ``outputs`` against the stored summary ``prefix``.

    Args:
        golden: a loaded golden (``np.load(...)`` or :func:`polapp_golden`).
        prefix: ``'s224_'`` or ``'s197x311_'``.
        outputs: our 4 stage outputs (B, C, H, W), tensors or arrays.

    Returns:
        dict: ``{array name: relative error}`` for each stored values / mean
        array.

    Raises:
        AssertionError: if the number of outputs, their shapes or the sampled
            positions differ from the golden.
    """
    ours = sample_outputs(outputs, prefix)
    shapes = f'{prefix}stage_shapes'
    assert ours[shapes].tolist() == golden[shapes].tolist(), (
        f'stage shapes {ours[shapes].tolist()} != golden {golden[shapes].tolist()}')
    errors = {}
    for name, value in ours.items():
        if name == shapes:
            continue
        if name.endswith('_index'):
            np.testing.assert_array_equal(value, golden[name], err_msg=name)
        else:
            errors[name] = relative_error(value, golden[name])
    return errors


def assert_sampled_outputs_close(golden, prefix: str, outputs: Sequence,
                                 rtol: float = 1e-5) -> None:
    """Assert our 4 stage outputs match the golden summary ``prefix``.

    Every stored values / channel-mean / position-mean array must be within
    relative (Frobenius) error ``rtol``; use ~1e-5 for a float32 run and
    ~1e-12 for a float64 run (the goldens are float64).

    Example::

        golden = polapp_golden('b2')
        model.load_state_dict(recipe_state_dict(polapp_shapes('b2', 'dense')),
                              strict=False)
        outs = model.eval()(polapp_input('b2', GOLDEN_INPUTS['s224']))
        assert_sampled_outputs_close(golden, 's224_', outs)
    """
    errors = sampled_output_errors(golden, prefix, outputs)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= rtol, (
        f'{worst}: relative error {errors[worst]:.3g} > {rtol:g}')


def polapp_golden(arch: str):
    """Load ``tests/fixtures/polapp_golden/polapp_{arch}.npz`` (see its README)."""
    return np.load(GOLDEN_DIR / f'polapp_{arch}.npz')


def attention_golden(kind: str, head_dim: int):
    """Load the attention-module golden ``kind`` (``'linear'`` or ``'vanilla'``)."""
    return np.load(GOLDEN_DIR / f'polapp_attention_{kind}_d{head_dim}.npz')


def golden_state_dict(golden, prefix: str = 'state.') -> Dict[str, torch.Tensor]:
    """The ``state.<key>`` arrays of an attention golden as a state dict."""
    return {key[len(prefix):]: torch.from_numpy(golden[key])
            for key in golden.files if key.startswith(prefix)}

