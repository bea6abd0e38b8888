"""The lean PyTorch polarity attention core against the plain reference of the official math."""
import pytest
import torch

from pola_mm.ops.pola_reference import plain_polarity_attention
from pola_mm.ops.pola_torch import mixing_matrix, polarity_linear_attention_torch, signed_power
from pola_mm.ops.polarity_attention import polarity_linear_attention

# (batch, heads, queries N, keys n, head dims d)
SHAPES = [(2, 3, 33, 33, 32), (1, 1, 1, 3, 32), (2, 2, 7, 5, 64), (1, 2, 97, 12, 64),
          (3, 1, 33, 97, 8)]


def make_inputs(batch, heads, num_queries, num_keys, dims, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, num_queries, dims, generator=gen)
    k = torch.randn(batch, heads, num_keys, dims, generator=gen)
    v = torch.randn(batch, heads, num_keys, dims, generator=gen)
    power = 1 + 4 * torch.rand(1, heads, 1, dims, generator=gen)
    grad = torch.randn(batch, heads, num_queries, dims, generator=gen)
    return [t.to(dtype) for t in (q, k, v)] + [power], grad


def forward_backward(fn, inputs, grad):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out.backward(grad.to(out.dtype))
    return out, [t.grad for t in leaves]


def rel_err(ours, ref):
    return ((ours.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.mark.parametrize('shape', SHAPES)
def test_fp32_forward_and_gradients_match_reference(shape):
    inputs, grad = make_inputs(*shape, torch.float32, seed=sum(shape))
    out, grads = forward_backward(polarity_linear_attention_torch, inputs, grad)
    # the reference in float64 is the ground truth for both fp32 implementations
    ref, ref_grads = forward_backward(plain_polarity_attention,
                                      [t.double() for t in inputs], grad.double())
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert rel_err(out, ref) < 1e-5
    for name, ours, theirs in zip('qkvp', grads, ref_grads):
        assert ours.shape == theirs.shape, name
        assert rel_err(ours, theirs) < 1e-5, name


@pytest.mark.parametrize('scale_shape', [(1, 2, 1, 32), (1, 1, 1, 32), (1, 2, 1, 1)])
def test_scale_is_folded_exactly(scale_shape):
    """``scale`` divides q and k before the maps; folded into the small matrices it must give
    the reference's output and gradients, the scale's own included."""
    inputs, grad = make_inputs(2, 2, 21, 13, 32, torch.float32, seed=11)
    scale = 0.3 + 2 * torch.rand(scale_shape, generator=torch.Generator().manual_seed(12))
    out, grads = forward_backward(
        lambda q, k, v, power, scale: polarity_linear_attention_torch(q, k, v, power,
                                                                      scale=scale),
        inputs + [scale], grad)
    ref, ref_grads = forward_backward(
        lambda q, k, v, power, scale: plain_polarity_attention(q / scale, k / scale, v, power),
        [t.double() for t in inputs + [scale]], grad.double())
    assert rel_err(out, ref) < 1e-5
    for name, ours, theirs in zip(('q', 'k', 'v', 'power', 'scale'), grads, ref_grads):
        assert ours.shape == theirs.shape, name
        assert rel_err(ours, theirs) < 1e-5, name


def mixing_by_definition(state, row_weight):
    """``[W_top; W_bot]`` spelled out from the key state ``[[P, m+], [M, m-]]``."""
    dims = state.shape[-1] - 1
    half = dims // 2
    pos_v, neg_v = state[..., :dims, :dims], state[..., dims:, :dims]
    pos_mean, neg_mean = state[..., :dims, dims:], state[..., dims:, dims:]
    top = torch.cat([pos_v[..., :half], neg_v[..., half:], pos_mean, neg_mean], dim=-1)
    bottom = torch.cat([neg_v[..., :half], pos_v[..., half:], neg_mean, pos_mean], dim=-1)
    weight = 1 if row_weight is None else row_weight.transpose(-2, -1)
    return torch.cat([top * weight, bottom * weight], dim=-2)


@pytest.mark.parametrize('weight_shape', [None, (1, 3, 1, 6), (1, 1, 1, 6), (1, 3, 1, 1)])
def test_mixing_matrix_matches_its_definition(weight_shape):
    """The key state's re-arrangement into the mixing matrices, forward and gradients
    (float64), with per-head, shared and per-head scalar row weights."""
    gen = torch.Generator().manual_seed(5)
    state = torch.randn(2, 3, 12, 7, generator=gen, dtype=torch.float64)
    inputs = [state] if weight_shape is None else [
        state, torch.rand(weight_shape, generator=gen, dtype=torch.float64) + 0.5]
    grad = torch.randn(2, 3, 12, 8, generator=gen, dtype=torch.float64)
    out, grads = forward_backward(lambda s, *w: mixing_matrix(s, *w), inputs, grad)
    ref, ref_grads = forward_backward(lambda s, *w: mixing_by_definition(s, *w or [None]),
                                      inputs, grad)
    assert out.shape == (2, 3, 12, 8) and out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    for ours, theirs in zip(grads, ref_grads):
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_heads_split_and_merge_without_copies():
    """Heads split off (B, L, h*d) maps, as the layers pass them: the output is laid out as
    (B, N, h, d) (merging the heads is a view) and the gradients follow the inputs' memory
    order (autograd's backward of the split is a view too); values equal the contiguous
    inputs'."""
    inputs, grad = make_inputs(2, 3, 10, 10, 8, torch.float32, seed=13)
    maps = torch.cat([t.transpose(1, 2).flatten(2) for t in inputs[:3]], dim=-1)
    maps.requires_grad_()
    q, k, v = (t.unflatten(-1, (3, 8)).transpose(1, 2) for t in maps.chunk(3, dim=-1))
    out = polarity_linear_attention_torch(q, k, v, inputs[3])
    merged = out.transpose(1, 2).reshape(2, 10, 24)
    assert merged.data_ptr() == out.data_ptr() and merged.is_contiguous()
    grads = torch.autograd.grad(out, (q, k, v), grad)
    for name, ours in zip('qkv', grads):
        assert ours.transpose(1, 2).is_contiguous(), name
    ref, ref_grads = forward_backward(polarity_linear_attention_torch, inputs, grad)
    torch.testing.assert_close(out, ref)
    for ours, theirs in zip(grads, ref_grads):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_half_inputs_match_reference(dtype):
    inputs, grad = make_inputs(2, 2, 33, 17, 32, dtype, seed=3)
    out, grads = forward_backward(polarity_linear_attention_torch, inputs, grad)
    ref, ref_grads = forward_backward(plain_polarity_attention, inputs, grad)
    assert out.dtype == dtype
    assert rel_err(out, ref) < 2e-2
    for name, ours, theirs in zip('qkvp', grads, ref_grads):
        assert ours.dtype == theirs.dtype, name
        assert rel_err(ours, theirs) < 2e-2, name


def test_autocast_does_not_lower_precision():
    inputs, _ = make_inputs(1, 2, 9, 9, 32, torch.float32, seed=5)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = polarity_linear_attention_torch(*inputs)
    assert out.dtype == torch.float32
    assert rel_err(out, plain_polarity_attention(*inputs)) < 1e-6


def test_zero_inputs_give_finite_gradients():
    """|x|^p and its log at x == 0 must not produce NaN (the reference's autograd gives 0)."""
    inputs, grad = make_inputs(1, 1, 6, 6, 8, torch.float32, seed=7)
    inputs[0][..., :3, :2] = 0
    inputs[1][..., 2:, 1:4] = 0
    _, grads = forward_backward(polarity_linear_attention_torch, inputs, grad)
    _, ref_grads = forward_backward(plain_polarity_attention, inputs, grad)
    for name, ours, theirs in zip('qkvp', grads, ref_grads):
        assert torch.isfinite(ours).all(), name
        assert rel_err(ours, theirs) < 1e-5, name


def nonfinite_gradient_case():
    """Inputs (no zeros) and an incoming gradient holding one NaN and one inf."""
    inputs, grad = make_inputs(1, 2, 6, 5, 16, torch.float32, seed=21)
    grad[0, 0, 2, 3] = float('nan')
    grad[0, 1, 4, 1] = float('inf')
    return inputs, grad


def test_nonfinite_incoming_gradient_is_kept():
    """A NaN or inf in the incoming gradient reaches every gradient it flows into, as in the
    reference (and so AMP's scaler and anomaly checks see it); it must not turn into 0 or
    the largest float in the gradients of q and k."""
    inputs, grad = nonfinite_gradient_case()
    _, grads = forward_backward(polarity_linear_attention_torch, inputs, grad)
    _, ref_grads = forward_backward(plain_polarity_attention, inputs, grad)
    for name, ours, theirs in zip('qkvp', grads, ref_grads):
        finite = torch.isfinite(theirs)
        assert (~finite).any(), name
        assert torch.equal(torch.isfinite(ours), finite), name
        if finite.any():  # every key's gradient meets the NaN
            assert rel_err(ours[finite], theirs[finite]) < 1e-5, name


def test_signed_power_matches_pow_elementwise():
    """``sign(x) |x|^p`` (computed as ``exp(p log|x|)``) equals float64 ``pow`` to 1e-5
    relative in every element whose result is a normal float32, for magnitudes from 1e-6 to
    1e3 of both signs and exponents from 1 to 5; exactly 0 at x == 0."""
    gen = torch.Generator().manual_seed(17)
    magnitude = 10 ** (9 * torch.rand(2, 3, 500, 8, generator=gen) - 6)
    x = torch.where(torch.rand(magnitude.shape, generator=gen) < 0.5, -magnitude, magnitude)
    x[..., :5, :] = 0
    power = 1 + 4 * torch.rand(1, 3, 1, 8, generator=gen)
    signed = signed_power(x, power)
    x64 = x.double()
    ref = x64.abs().pow(power.double()) * x64.sign()
    assert signed.dtype == torch.float32 and signed.shape == x.shape
    assert (signed[..., :5, :] == 0).all()
    normal = ref.abs() >= torch.finfo(torch.float32).tiny
    normal &= ref.abs() <= torch.finfo(torch.float32).max
    assert normal.float().mean() > 0.9
    assert (torch.sign(signed) == torch.sign(ref.float()))[normal].all()
    error = ((signed.double() - ref).abs() / ref.abs())[normal]
    assert error.max() < 1e-5


def test_gradients_only_where_required():
    inputs, grad = make_inputs(1, 2, 5, 5, 8, torch.float32, seed=9)
    q, k, v, power = inputs
    v = v.clone().requires_grad_()
    polarity_linear_attention_torch(q, k, v, power).backward(grad)
    ref_v = v.detach().clone().requires_grad_()
    plain_polarity_attention(q, k, ref_v, power).backward(grad)
    assert rel_err(v.grad, ref_v.grad) < 1e-5


@pytest.mark.parametrize('q_shape,k_shape,v_shape,power_shape,match', [
    ((1, 2, 4, 8), (1, 2, 4, 8), (1, 2, 5, 8), (1, 2, 1, 8), 'must be'),
    ((1, 2, 4, 7), (1, 2, 4, 7), (1, 2, 4, 7), (1, 2, 1, 7), 'even'),
    ((2, 4, 8), (2, 4, 8), (2, 4, 8), (1, 1, 1, 8), '4-D'),
    ((1, 2, 4, 8), (1, 2, 4, 8), (1, 2, 4, 8), (1, 3, 1, 8), 'power'),
    ((1, 2, 4, 8), (1, 2, 0, 8), (1, 2, 0, 8), (1, 2, 1, 8), 'at least one key'),
])
def test_bad_shapes_are_refused(q_shape, k_shape, v_shape, power_shape, match):
    with pytest.raises(ValueError, match=match):
        polarity_linear_attention_torch(torch.randn(q_shape), torch.randn(k_shape),
                                        torch.randn(v_shape), torch.ones(power_shape))


@pytest.mark.parametrize('impl', ['torch', 'reference'])
@pytest.mark.parametrize('power_value,scale_value,match', [
    (0., None, 'power must be positive.*minimum of 0'),
    (-1., None, 'power must be positive.*minimum of -1'),
    (2., -0.5, 'scale must be positive.*minimum of -0.5'),
])
def test_non_positive_exponents_or_divisors_are_refused(impl, power_value, scale_value, match):
    """Given as they are (no ``alpha``), exponents and divisors must be positive: an
    exponent 0 or a negative divisor made the PyTorch path all NaN."""
    q = torch.randn(1, 2, 4, 8)
    power = torch.full((1, 2, 1, 8), power_value)
    scale = None if scale_value is None else torch.full((1, 2, 1, 8), scale_value)
    with pytest.raises(ValueError, match=match):
        polarity_linear_attention(q, q, q, power, impl=impl, scale=scale)


def test_parameters_before_activation_may_be_negative():
    q = torch.randn(1, 2, 4, 8)
    logits = -torch.ones(1, 2, 1, 8)
    out = polarity_linear_attention(q, q, q, logits, impl='torch', scale=logits, alpha=4.)
    assert out.isfinite().all()


def test_second_order_gradients_are_refused():
    """The core's backward is not itself differentiable: a gradient penalty through it
    fails loudly instead of treating the first-order gradients as constants."""
    inputs, _ = make_inputs(1, 2, 5, 5, 8, torch.float32, seed=10)
    q = inputs[0].requires_grad_()
    out = polarity_linear_attention(q, *inputs[1:], impl='torch')
    grad_q, = torch.autograd.grad(out.square().sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match='differentiate twice'):
        grad_q.square().sum().backward()
