"""The PolaFormer++ linear-attention core and its rotary tables: the lean path against the
plain form of the authors' math, precision under half inputs, bad input."""
import pytest
import torch

from pola_mm.ops import plain_polapp_linear_attention, polapp_linear_attention
from pola_mm.ops.rope import RotaryTable, apply_rope, rope_angles


def inputs(batch, heads, hw, dims, dtype=torch.float32, seed=0, key_scale=1.):
    generator = torch.Generator().manual_seed(seed)
    tokens = hw[0] * hw[1]

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)

    q, k, v = randn(batch, heads, tokens, dims), randn(batch, heads, tokens, dims) * key_scale, \
        randn(batch, heads, tokens, dims)
    s1, s2 = (torch.sigmoid(randn(1, heads, 1, 2 * dims)) for _ in range(2))
    cos, sin = (t.to(dtype) for t in RotaryTable(2 * dims)(hw))
    return q, k, v, s1, s2, cos, sin


def relative(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize('batch, heads, hw, dims', [
    (2, 1, (7, 9), 32), (1, 2, (5, 11), 64), (2, 2, (6, 4), 96), (1, 1, (2, 3), 4)])
@pytest.mark.parametrize('dtype, tolerance', [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_lean_core_matches_the_plain_form_with_gradients(batch, heads, hw, dims, dtype,
                                                         tolerance):
    args = [t.requires_grad_() for t in inputs(batch, heads, hw, dims, dtype)]
    q, k, v, s1, s2, cos, sin = args
    lean = polapp_linear_attention(q, k, v, s1, s2, cos, sin)
    plain = plain_polapp_linear_attention(q, k, v, s1, s2, cos, sin)
    assert lean.dtype == dtype and lean.shape == q.shape
    assert relative(lean, plain) < tolerance
    upstream = torch.randn_like(plain)
    for name, g_lean, g_plain in zip('q k v s1 s2'.split(),
                                     torch.autograd.grad(lean, (q, k, v, s1, s2), upstream),
                                     torch.autograd.grad(plain, (q, k, v, s1, s2), upstream)):
        assert relative(g_lean, g_plain) < tolerance, name


def test_shared_temperatures_get_summed_gradients():
    q, k, v, s1, s2, cos, sin = inputs(1, 2, (4, 5), 8, torch.float64)
    s1, s2 = (s[:, :1].clone().requires_grad_() for s in (s1, s2))  # one for both heads
    lean = polapp_linear_attention(q, k, v, s1, s2, cos, sin)
    plain = plain_polapp_linear_attention(q, k, v, s1, s2, cos, sin)
    for g_lean, g_plain in zip(torch.autograd.grad(lean.sum(), (s1, s2)),
                               torch.autograd.grad(plain.sum(), (s1, s2))):
        assert g_lean.shape == (1, 1, 1, 16) and relative(g_lean, g_plain) < 1e-12


def test_half_inputs_run_in_float32():
    """Keys above 11.1 overflow exp in fp16; the core computes in float32 and returns the
    input dtype, equal to the float32 computation on the same (rounded) inputs."""
    args = inputs(2, 1, (6, 7), 32, torch.float16, key_scale=8.)
    assert args[1].abs().max() > 12
    out = polapp_linear_attention(*args)
    reference = plain_polapp_linear_attention(*(t.float() for t in args))
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert relative(out.float(), reference) < 2e-3
    naive = plain_polapp_linear_attention(*args)  # the plain form in fp16 overflows
    assert not torch.isfinite(naive).all()


def test_bad_inputs_are_named():
    q, k, v, s1, s2, cos, sin = inputs(1, 2, (3, 4), 8)
    with pytest.raises(ValueError, match='one .* shape'):
        polapp_linear_attention(q, k[:, :, :5], v, s1, s2, cos, sin)
    with pytest.raises(ValueError, match='divisible by 4'):
        polapp_linear_attention(q[..., :6], k[..., :6], v[..., :6], s1[..., :12],
                                s2[..., :12], cos[:, :12], sin[:, :12])
    with pytest.raises(ValueError, match='s2 must broadcast'):
        polapp_linear_attention(q, k, v, s1, s2[..., :8], cos, sin)
    with pytest.raises(ValueError, match='rotary table cos'):
        polapp_linear_attention(q, k, v, s1, s2, cos[:5], sin)
    with pytest.raises(ValueError, match='attn_impl'):
        polapp_linear_attention(q, k, v, s1, s2, cos, sin, impl='triton')


def test_rotary_frequencies_and_layout():
    angle = rope_angles(16)
    assert angle.shape == (8, ) and angle[0] == 1 and torch.isclose(angle[-1], torch.tensor(1e-4))
    assert torch.equal(angle[0::2], angle[1::2])  # one frequency per channel pair
    cos, sin = RotaryTable(16)((3, 5))
    phase = torch.atan2(sin, cos)
    token = 2 * 5 + 3  # row 2, column 3
    torch.testing.assert_close(phase[token, :8], 2 * angle)  # rows in the first half
    torch.testing.assert_close(phase[token, 8:], 3 * angle)  # columns in the second
    with pytest.raises(ValueError, match='divisible by 4'):
        rope_angles(6)


def test_rotated_products_depend_on_offsets_only():
    cos, sin = RotaryTable(8)((6, 6))
    a, b = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    rotated = [apply_rope(x.expand(36, 8), cos.double(), sin.double()) for x in (a, b)]

    def product(i, j):
        return rotated[0][i] @ rotated[1][j]

    # (0, 0) -> (1, 2) and (3, 1) -> (4, 3): the same offset
    torch.testing.assert_close(product(0, 1 * 6 + 2), product(3 * 6 + 1, 4 * 6 + 3))


def test_tables_stay_float32_in_a_half_model():
    table = RotaryTable(8).half()
    cos, _ = table((3000, 1))
    assert cos.dtype == torch.float32
    torch.testing.assert_close(cos[2999, 0], torch.cos(torch.tensor(2999.)))
