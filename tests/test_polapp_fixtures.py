"""The PolaFormer++ fixtures are consistent with the design note and with themselves.

These tests need only the fixtures and ``tests/polapp_layout.py`` (no pola_mm model):
parameter counts and key layout of the authors' models (design note
``polaformer-pp.md`` 2.1 and 3.1), determinism of the weight recipe, and the
structure of the golden arrays that the model tests compare against.
"""
import re

import numpy as np
import pytest
import torch

from polapp_layout import (ARCHS, ATTENTION_CASES, ATTENTION_HW, GOLDEN_INPUTS,
                           assert_sampled_outputs_close, attention_golden, attention_input,
                           golden_state_dict, polapp_golden, polapp_input, polapp_num_params,
                           polapp_shapes, recipe_state_dict, sample_outputs, sampled_output_errors)

#: design note 2.1: (classifier, dense backbone) parameter counts
PARAMS = {
    'b0': (7_548_712, 4_708_352), 'b1': (9_227_496, 6_387_264),
    'b2': (16_450_664, 13_348_864), 'b3': (27_145_896, 24_044_224),
    'b4': (49_798_792, 46_697_440), 'b5': (97_773_000, 93_568_672),
}
#: design note 3.1: classifier state-dict entries (dense: one fewer)
KEYS = {'b0': 234, 'b1': 274, 'b2': 314, 'b3': 482, 'b4': 646, 'b5': 848}
#: design note 2.1: stage widths
EMBED_DIMS = {
    'b0': (32, 64, 128, 384), 'b1': (32, 64, 192, 384), 'b2': (64, 128, 256, 512),
    'b3': (64, 128, 320, 512), 'b4': (96, 192, 384, 512), 'b5': (96, 192, 448, 640),
}
CLASSIFIER_KEYS = re.compile(r'^(proj|norm|head)\.')
#: stage sizes (design note 4): ceil(H / 2**(i+2)) x ceil(W / 2**(i+2))
STAGE_HW = {'s224': [(56, 56), (28, 28), (14, 14), (7, 7)],
            's197x311': [(50, 78), (25, 39), (13, 20), (7, 10)]}


@pytest.mark.parametrize('arch', ARCHS)
def test_parameter_counts(arch):
    assert (polapp_num_params(arch, 'classifier'),
            polapp_num_params(arch, 'dense')) == PARAMS[arch]


@pytest.mark.parametrize('arch', ARCHS)
def test_key_layout(arch):
    classifier = polapp_shapes(arch, 'classifier')
    dense = polapp_shapes(arch, 'dense')
    assert (len(classifier), len(dense)) == (KEYS[arch], KEYS[arch] - 1)
    extra = {f'extra_norms.{i}.norm.{name}': (dim,)
             for i, dim in enumerate(EMBED_DIMS[arch]) for name in ('weight', 'bias')}
    expected = {key: shape for key, shape in classifier.items()
                if not CLASSIFIER_KEYS.match(key)}
    expected.update(extra)
    assert dense == expected
    assert sum(1 for key in classifier if CLASSIFIER_KEYS.match(key)) == 9
    # 32 buffers: 8 RoPE angles, 8 BNs x 3 (stem 4, downsample 3, classifier 1)
    buffers = [k for k in classifier
               if k.endswith(('.angle', 'running_mean', 'running_var', 'num_batches_tracked'))]
    assert len(buffers) == 32


@pytest.mark.parametrize('arch', ['b0', 'b2'])
def test_recipe_covers_everything_but_rope(arch):
    shapes = polapp_shapes(arch, 'dense')
    weights = recipe_state_dict(shapes)
    assert set(shapes) - set(weights) == {k for k in shapes if k.endswith('.angle')}
    for key, value in weights.items():
        assert tuple(value.shape) == shapes[key], key
        if key.endswith('num_batches_tracked'):
            assert value.dtype == torch.int64 and int(value) == 0
        else:
            assert value.dtype == torch.float32 and torch.isfinite(value).all(), key
    var = torch.cat([v for k, v in weights.items() if k.endswith('running_var')])
    assert 0.5 <= float(var.min()) and float(var.max()) <= 1.5
    gammas = torch.cat([v.flatten() for k, v in weights.items() if '.gamma_' in k])
    assert 0 < float(gammas.min()) and float(gammas.max()) < 1
    assert abs(float(gammas.mean()) - 0.5) < 0.02
    s1 = weights['layers.0.blocks.0.attn.s1']
    assert float(s1.std()) > 0.5


def test_recipe_is_deterministic_and_per_key():
    shapes = polapp_shapes('b1', 'classifier')
    first, second = recipe_state_dict(shapes), recipe_state_dict(shapes)
    assert list(first) == [k for k in shapes if not k.endswith('.angle')]
    for key in first:
        assert torch.equal(first[key], second[key]), key
    other_seed = recipe_state_dict(shapes, seed=1)
    assert not torch.equal(first['head.weight'], other_seed['head.weight'])
    # adding or removing keys does not change the others
    fewer = dict(list(shapes.items())[::2])
    fewer['extra.weight'] = (4, 4)
    subset = recipe_state_dict(fewer)
    for key, value in subset.items():
        if key != 'extra.weight':
            assert torch.equal(value, first[key]), key


def test_inputs_are_deterministic():
    size = GOLDEN_INPUTS['s197x311']
    x = polapp_input('b2', size)
    assert x.dtype == torch.float32 and tuple(x.shape) == size
    assert torch.equal(x, polapp_input('b2', size))
    assert not torch.equal(x, polapp_input('b3', size))
    assert not torch.equal(x, polapp_input(0, size))


@pytest.mark.parametrize('arch', ARCHS)
def test_model_golden_structure(arch):
    golden = polapp_golden(arch)
    for prefix, size in GOLDEN_INPUTS.items():
        assert golden[f'{prefix}_input_shape'].tolist() == list(size)
        expected = [[size[0], dim, h, w]
                    for dim, (h, w) in zip(EMBED_DIMS[arch], STAGE_HW[prefix])]
        assert golden[f'{prefix}_stage_shapes'].tolist() == expected
        logits = golden[f'{prefix}_logits']
        assert logits.shape == (size[0], 1000) and logits.dtype == np.float64
        assert np.isfinite(logits).all() and 0.1 < logits.std() < 10
        for stage in range(4):
            values = golden[f'{prefix}_stage{stage}_values']
            assert values.shape == (4096,) and values.dtype == np.float64
            assert np.isfinite(values).all() and np.abs(values).max() < 100
            assert 0.3 < values.std() < 3  # outputs of a LayerNorm with weight ~1


def test_sampled_outputs_helper_roundtrip():
    golden = polapp_golden('b0')
    rng = np.random.default_rng(0)
    outputs = [rng.standard_normal(shape) for shape in golden['s224_stage_shapes']]
    fake = {**sample_outputs(outputs, 's224_'), 's224_logits': golden['s224_logits']}
    assert_sampled_outputs_close(fake, 's224_', outputs, rtol=0)
    errors = sampled_output_errors(fake, 's224_', [o * (1 + 1e-3) for o in outputs])
    assert max(errors.values()) == pytest.approx(1e-3)
    with pytest.raises(AssertionError):
        assert_sampled_outputs_close(fake, 's224_', [o * 1.01 for o in outputs])
    with pytest.raises(AssertionError):
        assert_sampled_outputs_close(fake, 's224_', outputs[:3])


@pytest.mark.parametrize('kind', ['linear', 'vanilla'])
@pytest.mark.parametrize('head_dim', sorted(ATTENTION_CASES))
def test_attention_golden_structure(kind, head_dim):
    golden = attention_golden(kind, head_dim)
    dim, heads = ATTENTION_CASES[head_dim]
    assert (int(golden['dim']), int(golden['num_heads'])) == (dim, heads)
    assert int(golden['head_dim']) == head_dim == dim // heads
    assert golden['hw'].tolist() == list(ATTENTION_HW)
    x = attention_input(head_dim)
    np.testing.assert_array_equal(golden['input'], x.numpy())
    assert golden['output'].shape == (2, dim, *ATTENTION_HW)
    rope_channels = 2 * head_dim if kind == 'linear' else head_dim
    n = ATTENTION_HW[0] * ATTENTION_HW[1]
    assert golden['sin'].shape == golden['cos'].shape == (n, rope_channels)
    state = golden_state_dict(golden)
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    for key, value in recipe_state_dict(shapes).items():
        assert torch.equal(value, state[key]), key
    qkv = 'qkvg' if kind == 'linear' else 'qkvo'
    assert shapes[f'{qkv}.weight'] == (4 * dim, dim)
    assert ('s1' in shapes) == (kind == 'linear')
