"""The PolaFormer++ linear-attention core and its rotary tables: the lean path against the
plain form of the authors' math, precision under half inputs, bad input."""
import warnings

import pytest
import torch

from pola_mm.ops import (cpu_fusion, plain_polapp_linear_attention, polapp_linear,
                         polapp_linear_attention, polapp_steps)
from pola_mm.ops.rope import AxisTables, RotaryTable, apply_rope, expand_axes, rope_angles


def inputs(batch, heads, hw, dims, dtype=torch.float32, seed=0, key_scale=1.):
    generator = torch.Generator().manual_seed(seed)
    tokens = hw[0] * hw[1]

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)

    q, k, v = randn(batch, heads, tokens, dims), randn(batch, heads, tokens, dims) * key_scale, \
        randn(batch, heads, tokens, dims)
    s1, s2 = (torch.sigmoid(randn(1, heads, 1, 2 * dims)) for _ in range(2))
    return q, k, v, s1, s2, RotaryTable(2 * dims).axes(hw).to(dtype)


def plain(q, k, v, s1, s2, axes):
    return plain_polapp_linear_attention(q, k, v, s1, s2, *expand_axes(axes))


def relative(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def interleaved(*tensors):
    """(B, h, N, d) tensors as the layer hands them over: head views of (B, N, h * d)."""
    return [t.transpose(1, 2).contiguous().transpose(1, 2) for t in tensors]


@pytest.mark.parametrize('batch, heads, hw, dims', [
    (2, 1, (7, 9), 32), (1, 2, (5, 11), 64), (2, 2, (6, 4), 96), (1, 1, (2, 3), 4)])
@pytest.mark.parametrize('dtype, tolerance', [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize('heads_interleaved', [False, True])
def test_lean_core_matches_the_plain_form_with_gradients(batch, heads, hw, dims, dtype,
                                                         tolerance, heads_interleaved):
    q, k, v, s1, s2, axes = inputs(batch, heads, hw, dims, dtype)
    if heads_interleaved:
        q, k, v = interleaved(q, k, v)
    q, k, v, s1, s2 = (t.requires_grad_() for t in (q, k, v, s1, s2))
    lean = polapp_linear_attention(q, k, v, s1, s2, axes)
    reference = plain(q, k, v, s1, s2, axes)
    assert lean.dtype == dtype and lean.shape == q.shape
    assert relative(lean, reference) < tolerance
    upstream = torch.randn_like(reference)
    for name, g_lean, g_plain in zip('q k v s1 s2'.split(),
                                     torch.autograd.grad(lean, (q, k, v, s1, s2), upstream),
                                     torch.autograd.grad(reference, (q, k, v, s1, s2),
                                                         upstream)):
        assert g_lean.shape == g_plain.shape and relative(g_lean, g_plain) < tolerance, name


def band_rows(x, hw_shape):
    return [(band.top, band.bottom) for band in polapp_linear._bands(x, hw_shape, False)]


@pytest.mark.parametrize('band_elements, bands', [(100, [(0, 2), (2, 4), (4, 5)]),
                                                   (1, [(row, row + 1) for row in range(5)])])
def test_lean_core_in_bands_of_rows_matches_the_plain_form(monkeypatch, band_elements, bands):
    """On CPU the grid is processed a band of rows at a time; several bands, the last one
    shorter, give the plain form's output and gradients."""
    monkeypatch.setattr(polapp_linear, 'CPU_BAND_ELEMENTS', band_elements)
    q, k, v, s1, s2, axes = inputs(1, 2, (5, 3), 8, torch.float64)
    q, k, v = interleaved(q, k, v)
    assert band_rows(q, axes.hw_shape) == bands
    q, k, v, s1, s2 = (t.requires_grad_() for t in (q, k, v, s1, s2))
    lean = polapp_linear_attention(q, k, v, s1, s2, axes)
    reference = plain(q, k, v, s1, s2, axes)
    assert relative(lean, reference) < 1e-12
    upstream = torch.randn_like(reference)
    for name, g_lean, g_plain in zip('q k v s1 s2'.split(),
                                     torch.autograd.grad(lean, (q, k, v, s1, s2), upstream),
                                     torch.autograd.grad(reference, (q, k, v, s1, s2),
                                                         upstream)):
        assert relative(g_lean, g_plain) < 1e-12, name


def lean_against_plain(args, tolerance):
    """The lean core's output and gradients against the plain form's."""
    q, k, v, s1, s2, axes = args
    q, k, v, s1, s2 = (t.detach().requires_grad_() for t in (q, k, v, s1, s2))
    lean = polapp_linear_attention(q, k, v, s1, s2, axes)
    reference = plain(q, k, v, s1, s2, axes)
    assert lean.dtype == q.dtype and relative(lean, reference) < tolerance
    upstream = torch.randn_like(reference)
    for name, g_lean, g_plain in zip('q k v s1 s2'.split(),
                                     torch.autograd.grad(lean, (q, k, v, s1, s2), upstream),
                                     torch.autograd.grad(reference, (q, k, v, s1, s2),
                                                         upstream)):
        assert relative(g_lean, g_plain) < tolerance, name


@pytest.fixture
def fused_everywhere(monkeypatch):
    """Fused steps for any size, in bands of 2 rows of the (5, 3) grids below."""
    monkeypatch.setattr(polapp_linear, 'FUSE_MIN_ELEMENTS', 0)
    monkeypatch.setattr(polapp_linear, 'FUSED_BAND_ELEMENTS', 2 * 3 * 2 * 8)
    monkeypatch.setattr(cpu_fusion, '_failure', [])


@pytest.mark.parametrize('dtype, tolerance, heads_interleaved', [
    (torch.float64, 1e-12, False), (torch.float32, 1e-5, True)])
def test_fused_steps_match_the_plain_form(fused_everywhere, monkeypatch, dtype, tolerance,
                                          heads_interleaved):
    """attn_impl='auto' on CPU compiles the elementwise steps (torch.compile); over several
    bands, the last one shorter, they give the plain form's output and gradients."""
    def not_eager(*args):
        raise AssertionError('an eager step ran')

    for step in (polapp_steps.key_maps, polapp_steps.key_grad, polapp_steps.query_maps,
                 polapp_steps.query_grad):
        monkeypatch.setattr(step, 'eager', not_eager)
    q, k, v, s1, s2, axes = inputs(2, 2, (5, 3), 8, dtype)
    if heads_interleaved:
        q, k, v = interleaved(q, k, v)
    with warnings.catch_warnings():
        warnings.simplefilter('error', RuntimeWarning)  # no fallback to the eager steps
        lean_against_plain((q, k, v, s1, s2, axes), tolerance)


def test_failing_fused_steps_warn_once_and_run_eagerly(fused_everywhere, monkeypatch):
    """A compilation that fails (here: a fused step that raises) gives one warning naming
    the error and attn_impl='torch'; forward and backward are run again eagerly, with the
    plain form's numbers, and later calls run eagerly without a warning."""
    def no_compiler(*args):
        raise RuntimeError('no C++ compiler found')

    monkeypatch.setattr(polapp_steps.query_grad.fused, '_compiled', no_compiler)
    args = inputs(1, 2, (5, 3), 8, torch.float64)
    with pytest.warns(RuntimeWarning, match="(?s)RuntimeError: no C\\+\\+ compiler found.*"
                      "attn_impl='torch'") as caught:
        lean_against_plain(args, 1e-12)
    assert len(caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter('error', RuntimeWarning)
        lean_against_plain(args, 1e-12)


@pytest.mark.parametrize('impl, min_elements, fused', [
    ('auto', 0, True), ('auto', 2 * 15 * 8 + 1, False), ('torch', 0, False)])
def test_steps_are_fused_for_large_maps_with_auto_only(monkeypatch, impl, min_elements, fused):
    runs = []

    def record(body, fuse):
        runs.append(fuse)
        return body(False)

    monkeypatch.setattr(polapp_linear, 'FUSE_MIN_ELEMENTS', min_elements)
    monkeypatch.setattr(polapp_linear, 'run_fused', record)
    q, k, v, s1, s2, axes = inputs(1, 2, (5, 3), 8, torch.float64)
    polapp_linear_attention(q.requires_grad_(), k, v, s1, s2, axes, impl=impl).sum().backward()
    assert runs == [fused] * 3  # key statistics, query output, query output backward


def test_lean_core_takes_all_rows_at_once_off_cpu():
    shape = (1, 2, 200 * 336, 64)
    assert band_rows(torch.empty(shape, device='meta'), (200, 336)) == [(0, 200)]
    on_cpu = band_rows(torch.empty(()).expand(shape), (200, 336))
    assert len(on_cpu) > 1 and on_cpu[0][0] == 0 and on_cpu[-1][1] == 200


def test_lean_core_output_merges_heads_without_a_copy():
    q, k, v, s1, s2, axes = inputs(2, 3, (4, 5), 8)
    out = polapp_linear_attention(*interleaved(q, k, v), s1, s2, axes)
    assert out.transpose(1, 2).is_contiguous()  # laid out as (B, N, h, d)


def test_reference_impl_is_the_plain_form():
    args = inputs(1, 2, (3, 5), 8, torch.float64)
    torch.testing.assert_close(polapp_linear_attention(*args, impl='reference'), plain(*args),
                               rtol=0, atol=0)


def test_shared_temperatures_get_summed_gradients():
    q, k, v, s1, s2, axes = inputs(1, 2, (4, 5), 8, torch.float64)
    s1, s2 = (s[:, :1].clone().requires_grad_() for s in (s1, s2))  # one for both heads
    lean = polapp_linear_attention(q, k, v, s1, s2, axes)
    reference = plain(q, k, v, s1, s2, axes)
    for g_lean, g_plain in zip(torch.autograd.grad(lean.sum(), (s1, s2)),
                               torch.autograd.grad(reference.sum(), (s1, s2))):
        assert g_lean.shape == (1, 1, 1, 16) and relative(g_lean, g_plain) < 1e-12


def test_second_order_gradients_are_refused():
    """The lean core's backward is not itself differentiable: a gradient penalty through
    it fails loudly instead of treating the first-order gradients as constants."""
    q, k, v, s1, s2, axes = inputs(1, 2, (3, 4), 8)
    q.requires_grad_()
    grad_q, = torch.autograd.grad(polapp_linear_attention(q, k, v, s1, s2, axes).square().sum(),
                                  q, create_graph=True)
    with pytest.raises(RuntimeError, match='differentiate twice'):
        grad_q.square().sum().backward()


def test_half_inputs_run_in_float32():
    """Keys above 11.1 overflow exp in fp16; the core computes in float32 and returns the
    input dtype, equal to the float32 computation on the same (rounded) inputs, gradients
    included."""
    q, k, v, s1, s2, axes = inputs(2, 1, (6, 7), 32, torch.float16, key_scale=8.)
    assert k.abs().max() > 12
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = polapp_linear_attention(q, k, v, s1, s2, axes)
    floats = [t.detach().float().requires_grad_() for t in (q, k, v)]
    reference = plain(*floats, s1.float(), s2.float(), axes.to(torch.float32))
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert relative(out.float(), reference) < 2e-3
    upstream = torch.randn_like(reference)
    for g_half, g_float in zip(torch.autograd.grad(out, (q, k, v), upstream.half()),
                               torch.autograd.grad(reference, floats, upstream)):
        assert g_half.dtype == torch.float16 and torch.isfinite(g_half).all()
        assert relative(g_half.float(), g_float) < 5e-3
    naive = plain(q.detach(), k.detach(), v.detach(), s1, s2, axes)  # overflows in fp16
    assert not torch.isfinite(naive).all()


def test_bad_inputs_are_named():
    q, k, v, s1, s2, axes = inputs(1, 2, (3, 4), 8)
    with pytest.raises(ValueError, match='one .* shape'):
        polapp_linear_attention(q, k[:, :, :5], v, s1, s2, axes)
    with pytest.raises(ValueError, match='divisible by 4'):
        polapp_linear_attention(q[..., :6], k[..., :6], v[..., :6], s1[..., :12],
                                s2[..., :12], AxisTables(*(t[:, :6] for t in axes)))
    with pytest.raises(ValueError, match='s2 must broadcast'):
        polapp_linear_attention(q, k, v, s1, s2[..., :8], axes)
    with pytest.raises(ValueError, match='rotary table row_cos must be'):
        polapp_linear_attention(q, k, v, s1, s2, axes._replace(row_cos=axes.row_cos[:, :4]))
    with pytest.raises(ValueError, match='2x5 grid do not fit 12'):
        polapp_linear_attention(q, k, v, s1, s2, RotaryTable(16).axes((2, 5)))
    with pytest.raises(ValueError, match='attn_impl'):
        polapp_linear_attention(q, k, v, s1, s2, axes, impl='triton')


def test_axis_tables_expand_to_the_token_tables():
    """The row and column tables, spread over the grid, equal the per-token tables
    computed from each token's own phases ``[row * angle | column * angle]``."""
    axes = RotaryTable(16).axes((3, 5))
    assert [tuple(t.shape) for t in axes] == [(3, 8), (3, 8), (5, 8), (5, 8)]
    rows, cols = torch.meshgrid(torch.arange(3.), torch.arange(5.), indexing='ij')
    angle = rope_angles(16)
    phase = torch.cat([rows.reshape(-1, 1) * angle, cols.reshape(-1, 1) * angle], dim=-1)
    cos, sin = expand_axes(axes)
    assert torch.equal(cos, phase.cos()) and torch.equal(sin, phase.sin())


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
    cos, sin = RotaryTable(8).double()((6, 6))  # float64 tables: rotations orthogonal
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(8, dtype=torch.float64, generator=generator) for _ in range(2))
    rotated = [apply_rope(x.expand(36, 8), cos, sin) for x in (a, b)]

    def product(i, j):
        return rotated[0][i] @ rotated[1][j]

    # (0, 0) -> (1, 2) and (3, 1) -> (4, 3): the same offset
    torch.testing.assert_close(product(0, 1 * 6 + 2), product(3 * 6 + 1, 4 * 6 + 3))


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_tables_stay_float32_in_a_half_model(dtype):
    """Neither the positions nor the frequencies (a buffer, cast with the module) are
    rounded: the tables equal a float32 module's."""
    table = RotaryTable(192)
    expected = table.axes((3000, 336))
    tables = table.to(dtype).axes((3000, 336))
    assert all(t.dtype == torch.float32 for t in tables)
    for ours, theirs in zip(tables, expected):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
