"""pola_mm's PolaFormer++ against the numbers of the authors' own code.

The goldens (``tests/fixtures/polapp_golden``, see its README) come from the authors'
models with the weights of ``polapp_layout.recipe_state_dict``; loading the same weights
here must give the same dense outputs (224 and 197 x 311, not a multiple of 32) and the
same attention-module outputs.
"""
import pytest
import torch

from pola_mm.models import PolaPP, PolaPPLinearAttention, RoPESoftmaxAttention
from pola_mm.ops.rope import RotaryTable
from polapp_layout import (ARCHS, ATTENTION_CASES, ATTENTION_HW, GOLDEN_INPUTS,
                           assert_sampled_outputs_close, attention_golden, attention_input,
                           golden_state_dict, polapp_golden, polapp_input, polapp_shapes,
                           recipe_state_dict, relative_error)


def recipe_backbone(arch: str, dtype=torch.float32) -> PolaPP:
    model = PolaPP(arch, drop_path_rate=0.).eval()
    missing, unexpected = model.load_state_dict(
        recipe_state_dict(polapp_shapes(arch, 'dense')), strict=False)
    assert unexpected == [] and len(missing) == 8  # the rotary frequencies, kept
    assert all(key.endswith('.angle') for key in missing)
    return model.to(dtype)


@pytest.mark.parametrize('arch', ARCHS)
def test_dense_outputs_match_the_authors(arch):
    model, golden = recipe_backbone(arch), polapp_golden(arch)
    for prefix, size in GOLDEN_INPUTS.items():
        with torch.no_grad():
            outs = model(polapp_input(arch, size))
        assert_sampled_outputs_close(golden, f'{prefix}_', outs, rtol=1e-4)


def test_dense_outputs_match_the_authors_in_float64():
    model, golden = recipe_backbone('b0', torch.float64), polapp_golden('b0')
    with torch.no_grad():
        outs = model(polapp_input('b0', GOLDEN_INPUTS['s197x311']).double())
    assert_sampled_outputs_close(golden, 's197x311_', outs, rtol=1e-10)


@pytest.mark.parametrize('head_dim', sorted(ATTENTION_CASES))
@pytest.mark.parametrize('kind', ['linear', 'vanilla'])
def test_attention_modules_match_the_authors(kind, head_dim):
    golden = attention_golden(kind, head_dim)
    dim, heads = ATTENTION_CASES[head_dim]
    module = (PolaPPLinearAttention if kind == 'linear' else RoPESoftmaxAttention)(dim, heads)
    module.load_state_dict(golden_state_dict(golden))
    module.double()
    table = RotaryTable(2 * head_dim if kind == 'linear' else head_dim).double()
    cos, sin = table(ATTENTION_HW)
    assert relative_error(cos.numpy(), golden['cos']) < 1e-15
    assert relative_error(sin.numpy(), golden['sin']) < 1e-15
    rope = table.axes(ATTENTION_HW) if kind == 'linear' else (cos, sin)
    with torch.no_grad():
        out = module(attention_input(head_dim).double(), rope)
    assert relative_error(out.numpy(), golden['output']) < 1e-12
