"""The linear-attention core of PolaFormer++: lean PyTorch path and its dispatcher.

Per head, with ``X = [relu(q) | relu(-q)]`` (2d channels), the polarity feature maps are
``F_sim = exp(X * s1) - 1``, ``F_opp = exp(swap(X) * s2) - 1`` (``swap`` exchanges the two
halves) and ``K = exp([relu(k) | relu(-k)]) - 1`` (no temperature on the keys). With ``R``
the 2-D rotary map over the 2d channels (:mod:`.rope`), stream ``t`` (sim: the first half
of the value channels, opp: the second) gives::

    out_t[i] = sum_j (R_i F_t[i] . R_j K[j]) v_t[j] / n / (F_t[i] . mean_j K[j] + eps)

the rotation in the numerator only, as the authors compute it.

The plain form (:func:`pola_mm.ops.plain_polapp_linear_attention`) materialises every
2d-wide map and rotates each with the (N, 2d) tables. Here no 2d-wide map and no
per-token table exists:

* Channels ``[0, d)`` of every map turn with the token's row, ``[d, 2d)`` with its column,
  and a turn by the row ``r`` is the same matrix ``Rot(r)`` for all W tokens of the row.
  So ``sum_j R_j K[j] v[j]^T`` is ``sum_r Rot(r) S(r)`` with ``S(r)`` the (d, d) product
  of the row's keys and values (one batched product over the rows, one over the columns),
  and ``R_i F[i] . kv`` is ``F[i] . Rot(r_i)^T kv``: every token meets a small matrix of
  its row or its column (:func:`_per_position`). The rotations act on (d, d) matrices only.
* ``[0, d)`` of ``F_sim`` is ``exp(relu(q) s1) - 1`` and of ``F_opp`` ``exp(relu(-q) s2) - 1``:
  disjoint supports, so one signed map ``u = sign(q) (exp(|q| s) - 1)``, with ``s`` the
  temperature of q's sign (``|q| (s+ + s-) / 2 + q (s+ - s-) / 2``), holds both as
  ``relu(u)`` and ``relu(-u)`` (:func:`_polarity_maps`); likewise ``[d, 2d)`` with the
  streams the other way round, and the keys (``K = [relu(u) | relu(-u)]``, no temperature).
* Each stream's normaliser is one more column of its small matrices (the key mean).

Two autograd Functions (:class:`_KeyStatistics`, :class:`_QueryOutput`) keep only their
inputs, the small matrices and the output with its normalisers, and recompute the signed
maps in backward; the small-matrix algebra between them (rotations, sums over positions)
is left to autograd. Large temporaries follow q's memory order and the output is laid out
as (B, N, h, d), so heads split off and merged into (B, N, h * d) cost no copy.
Everything runs in float32 with autocast off (``exp`` of untempered keys overflows fp16
from 11.1 on), float64 for float64 inputs; the result is cast back to the input dtype.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .pola_reference import plain_polapp_linear_attention
from .pola_torch import empty_in_memory_order, polarity_backward_
from .rope import AxisTables, expand_axes, rotate_pairs

POLAPP_ATTENTION_IMPLS = ('auto', 'torch', 'reference')


def check_polapp_inputs(q: Tensor, k: Tensor, v: Tensor, s1: Tensor, s2: Tensor,
                        axes: AxisTables) -> None:
    """Raise ValueError unless q, k, v are (B, h, N, d) with d divisible by 4, s1 and s2
    broadcast as (1, h, 1, 2d) and the axis tables are (H, d) and (W, d), H * W = N."""
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError('q, k and v must have one (B, heads, tokens, dims) shape, got '
                         f'{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}')
    _, heads, tokens, dims = q.shape
    if dims % 4:
        raise ValueError(f'head dims must be divisible by 4 (rotary pairs in two halves), '
                         f'got {dims}')
    for name, param in (('s1', s1), ('s2', s2)):
        if (param.dim() != 4 or param.shape[0] != 1 or param.shape[2] != 1
                or param.shape[1] not in (1, heads) or param.shape[3] != 2 * dims):
            raise ValueError(f'{name} must broadcast as (1, {heads}, 1, {2 * dims}), '
                             f'got {tuple(param.shape)}')
    height, width = axes.hw_shape
    for name, table, size in zip(AxisTables._fields, axes, (height, height, width, width)):
        if table.shape != (size, dims):
            raise ValueError(f'rotary table {name} must be ({size}, {dims}), '
                             f'got {tuple(table.shape)}')
    if height * width != tokens:
        raise ValueError(f'rotary tables of a {height}x{width} grid do not fit {tokens} '
                         'tokens')


def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 for float64 inputs (exact checks), float32 for any other."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# On CPU the grid is processed a band of rows at a time, each temporary map of a band about
# this many elements (2 MiB in float32): a band's maps stay in cache from one pass to the
# next (an 800 x 1344 image's stage-1 map is 17 MB), and they are allocated once per call.
CPU_BAND_ELEMENTS = 1 << 19


class _Band:
    """Rows ``[top, bottom)`` of a (H, W) grid: its token slice and its reusable buffers."""

    def __init__(self, top: int, bottom: int, width: int):
        self.top, self.bottom = top, bottom
        self.tokens = slice(top * width, bottom * width)
        self.shape = (bottom - top, width)

    def rows(self, t: Tensor) -> Tensor:
        """The band's tokens of a (B, h, N, x) tensor (a view)."""
        return t[:, :, self.tokens]

    @staticmethod
    def buffers(count: int, like: Tensor, dims: Optional[int] = None,
                dtype: Optional[torch.dtype] = None) -> List[Tensor]:
        """``count`` empty tensors for the largest band, ``like``'s (a band view) memory
        order, last dim ``dims``."""
        return [empty_in_memory_order(like, dims, dtype or like.dtype) for _ in range(count)]

    def fit(self, buffers: List[Tensor]) -> List[Tensor]:
        """The buffers cut to this band's token count."""
        return [buffer[:, :, :self.tokens.stop - self.tokens.start] for buffer in buffers]


def _bands(x: Tensor, hw_shape: Tuple[int, int]) -> List[_Band]:
    """The bands of rows of x's (H, W) grid: on CPU of about ``CPU_BAND_ELEMENTS`` per
    (B, h, band tokens, d) map, elsewhere (one kernel launch per operation and band) all
    rows at once."""
    height, width = hw_shape
    batch, heads, _, dims = x.shape
    rows = height if x.device.type != 'cpu' else max(
        1, CPU_BAND_ELEMENTS // (batch * heads * width * dims))
    return [_Band(top, min(top + rows, height), width) for top in range(0, height, rows)]


def _grid(tokens: Tensor, grid_shape: Tuple[int, int], by_columns: bool) -> Tensor:
    """(n, x) tokens of one item and head -> (rows, W, x) or (W, rows, x) (views)."""
    grid = tokens.unflatten(0, grid_shape)
    return grid.transpose(0, 1) if by_columns else grid


def _per_position(a: Tensor, m: Tensor, grid_shape: Tuple[int, int], by_columns: bool,
                  out: Tensor, accumulate: bool = False) -> Tensor:
    """``out[i] (+)= a[i] @ m[p(i)]``: (B, h, n, k) tokens of a band of rows times the
    (B, h, P, k, x) matrix of their row (the band's P rows) or column (P = W) -> ``out``
    (B, h, n, x)."""
    for item in range(a.shape[0]):
        for head in range(a.shape[1]):
            target = out[item, head].view(*grid_shape, -1)
            a_grid = _grid(a[item, head], grid_shape, by_columns)
            if by_columns:
                product = torch.bmm(a_grid, m[item, head])
                target.add_(product.transpose(0, 1)) if accumulate else target.copy_(
                    product.transpose(0, 1))
            elif accumulate:
                target.baddbmm_(a_grid, m[item, head])
            else:
                torch.bmm(a_grid, m[item, head], out=target)
    return out


def _gram_per_position(a: Tensor, b: Tensor, grid_shape: Tuple[int, int], by_columns: bool,
                       out: Tensor, accumulate: bool = False) -> Tensor:
    """``out[p] (+)= sum over the band's tokens i of row (or column) p of a[i]^T b[i]``:
    (B, h, n, k) and (B, h, n, x) -> ``out`` (B, h, P, k, x)."""
    for item in range(a.shape[0]):
        for head in range(a.shape[1]):
            a_grid = _grid(a[item, head], grid_shape, by_columns).transpose(1, 2)
            b_grid = _grid(b[item, head], grid_shape, by_columns)
            if accumulate:
                out[item, head].baddbmm_(a_grid, b_grid)
            else:
                torch.bmm(a_grid, b_grid, out=out[item, head])
    return out


def _polarity_maps(x: Tensor, magnitude: Tensor, mid: Optional[Tensor],
                   half: Optional[Tensor], exp_out: Tensor, pos_out: Tensor,
                   neg_out: Tensor) -> Tuple[Tensor, Tensor]:
    """``e = exp(|x| mid + x half)`` into ``exp_out``; ``pos = exp(relu(x) s+) - 1`` and
    ``neg = exp(relu(-x) s-) - 1``, i.e. ``e - 1`` where x > 0 and where x < 0, into
    ``pos_out`` and ``neg_out``, for ``mid = (s+ + s-) / 2`` and ``half = (s+ - s-) / 2``
    (no temperatures: None). With ``u = sign(x) (e - 1)``, pos is ``relu(u)``, neg
    ``relu(-u)``, and ``du/dx = e``."""
    if mid is None:
        torch.exp(magnitude, out=exp_out)
    else:
        torch.mul(x, half, out=exp_out).addcmul_(magnitude, mid).exp_()
    excess = torch.sub(exp_out, 1, out=neg_out)
    torch.ops.aten.threshold_backward.grad_input(excess, x, 0, grad_input=pos_out)
    return pos_out, excess.sub_(pos_out)


class _KeyStatistics(torch.autograd.Function):
    """(k, v) -> ``S_row`` (B, h, H, d, d), the sum over each row's tokens of
    ``relu(u)^T v``; ``S_col`` (B, h, W, d, d), over each column's of ``relu(-u)^T v``;
    and the means of ``relu(u)`` and ``relu(-u)`` over all tokens (B, h, 1, d), with
    ``u = sign(k) (exp(|k|) - 1)``."""

    @staticmethod
    def forward(ctx, k: Tensor, v: Tensor, hw_shape: Tuple[int, int]):
        ctx.save_for_backward(k, v)
        ctx.hw_shape = hw_shape
        dtype = compute_dtype(k)
        (batch, heads, tokens, dims), (height, width) = k.shape, hw_shape
        rows_kv = k.new_empty(batch, heads, height, dims, dims, dtype=dtype)
        cols_kv = k.new_empty(batch, heads, width, dims, dims, dtype=dtype)
        sums = k.new_zeros(2, batch, heads, 1, dims, dtype=dtype)
        bands = _bands(k, hw_shape)
        buffers = _Band.buffers(3, bands[0].rows(k), dtype=dtype)
        for index, band in enumerate(bands):
            keys, values = band.rows(k).to(dtype), band.rows(v).to(dtype)
            pos, neg, _ = _KeyStatistics._maps(keys, band.fit(buffers))
            _gram_per_position(pos, values, band.shape, False,
                               rows_kv[:, :, band.top:band.bottom])
            _gram_per_position(neg, values, band.shape, True, cols_kv, index > 0)
            sums[0] += pos.sum(dim=-2, keepdim=True)
            sums[1] += neg.sum(dim=-2, keepdim=True)
        sums /= tokens
        return rows_kv, cols_kv, sums[0], sums[1]

    @staticmethod
    def _maps(k: Tensor, buffers: List[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """``relu(u)``, ``relu(-u)`` and ``exp(|k|)`` in the three buffers."""
        exp, pos, neg = buffers
        _polarity_maps(k, torch.abs(k, out=neg), None, None, exp, pos, neg)
        return pos, neg, exp

    @staticmethod
    def backward(ctx, grad_rows, grad_cols, grad_pos_mean, grad_neg_mean):
        k_in, v_in = ctx.saved_tensors
        hw_shape, tokens = ctx.hw_shape, k_in.shape[-2]
        dtype = compute_dtype(k_in)
        grad_rows, grad_cols = grad_rows.to(dtype), grad_cols.to(dtype)
        grad_means = [grad / tokens for grad in (grad_pos_mean, grad_neg_mean)]
        grad_k = empty_in_memory_order(k_in, dtype=k_in.dtype)
        grad_v = empty_in_memory_order(v_in, dtype=dtype)
        bands = _bands(k_in, hw_shape)
        buffers = _Band.buffers(5, bands[0].rows(k_in), dtype=dtype)
        for band in bands:
            keys, values = band.rows(k_in).to(dtype), band.rows(v_in).to(dtype)
            exp, pos, neg, grad_pos, grad_neg = band.fit(buffers)
            pos, neg, exp = _KeyStatistics._maps(keys, [exp, pos, neg])
            band_rows = grad_rows[:, :, band.top:band.bottom]
            band_grad_v = band.rows(grad_v)
            _per_position(pos, band_rows, band.shape, False, band_grad_v)
            _per_position(neg, grad_cols, band.shape, True, band_grad_v, accumulate=True)
            _per_position(values, band_rows.transpose(-2, -1), band.shape, False,
                          grad_pos).add_(grad_means[0])
            _per_position(values, grad_cols.transpose(-2, -1), band.shape, True,
                          grad_neg).add_(grad_means[1])
            # u = sign(k) (exp(|k|) - 1): du/dk = exp(|k|)
            torch.mul(polarity_backward_(grad_pos, grad_neg, pos, neg), exp,
                      out=band.rows(grad_k))
        return grad_k, grad_v.to(v_in.dtype), None


class _QueryOutput(torch.autograd.Function):
    """(q, temperatures, small matrices) -> the normalised output (B, h, N, d), laid out
    as (B, N, h, d).

    Block ``a`` (rows, then columns) takes ``u_a = sign(q) (exp(|q| mid_a + q half_a) - 1)``
    (temperatures (1, h, 1, d)); ``relu(u_a)`` meets the (B, h, P, d, d/2 + 1) matrix
    ``pos_a`` of its row or column, ``relu(-u_a)`` meets ``neg_a``. The row block's
    ``relu(u)`` feeds the sim stream and ``relu(-u)`` the opp stream; the column block's the
    other way round. Each stream sums its two products into d/2 numerator columns and the
    normaliser."""

    @staticmethod
    def _blocks(row_mid, row_half, col_mid, col_half, row_pos, row_neg, col_pos, col_neg,
                band: _Band):
        """Per block: (by_columns, mid, half, pos matrices, neg matrices) for the band."""
        rows = slice(band.top, band.bottom)
        return ((False, row_mid, row_half, row_pos[:, :, rows], row_neg[:, :, rows]),
                (True, col_mid, col_half, col_pos, col_neg))

    @staticmethod
    def forward(ctx, q, row_mid, row_half, col_mid, col_half, row_pos, row_neg, col_pos,
                col_neg, hw_shape, eps):
        dtype = compute_dtype(q)
        batch, heads, tokens, dims = q.shape
        half_dims = dims // 2
        out = q.new_empty(batch, tokens, heads, dims, dtype=dtype).transpose(1, 2)
        norms = q.new_empty(batch, heads, tokens, 2, dtype=dtype)
        bands = _bands(q, hw_shape)
        maps = _Band.buffers(4, bands[0].rows(q), dtype=dtype)
        sums = _Band.buffers(2, bands[0].rows(q), half_dims + 1, dtype)
        for band in bands:
            queries = band.rows(q).to(dtype)
            magnitude, exp, pos, neg = band.fit(maps)
            band_sums = band.fit(sums)
            torch.abs(queries, out=magnitude)
            for by_columns, mid, half, m_pos, m_neg in _QueryOutput._blocks(
                    row_mid, row_half, col_mid, col_half, row_pos, row_neg, col_pos, col_neg,
                    band):
                _polarity_maps(queries, magnitude, mid, half, exp, pos, neg)
                _per_position(pos, m_pos, band.shape, by_columns, band_sums[by_columns],
                              by_columns)
                _per_position(neg, m_neg, band.shape, by_columns, band_sums[not by_columns],
                              by_columns)
            band_norms, band_out = band.rows(norms), band.rows(out)
            for stream, total in enumerate(band_sums):
                torch.add(total[..., half_dims], eps, out=band_norms[..., stream])
                torch.div(total[..., :half_dims], band_norms[..., stream:stream + 1],
                          out=band_out[..., stream * half_dims:(stream + 1) * half_dims])
        ctx.save_for_backward(q, row_mid, row_half, col_mid, col_half, row_pos, row_neg,
                              col_pos, col_neg, out, norms)
        ctx.hw_shape = hw_shape
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, row_mid, row_half, col_mid, col_half, row_pos, row_neg, col_pos, col_neg, out, \
            norms = ctx.saved_tensors
        hw_shape, dtype = ctx.hw_shape, compute_dtype(q)
        half_dims = q.shape[-1] // 2
        grad_q = empty_in_memory_order(q, dtype=q.dtype)
        grad_matrices = [torch.empty_like(row_pos), torch.empty_like(row_neg),
                         torch.empty_like(col_pos), torch.empty_like(col_neg)]
        scale_grads = q.new_zeros(4, q.shape[0], q.shape[1], q.shape[-1], dtype=dtype)
        bands = _bands(q, hw_shape)
        maps = _Band.buffers(8, bands[0].rows(q), dtype=dtype)
        sums = _Band.buffers(2, bands[0].rows(q), half_dims + 1, dtype)
        for index, band in enumerate(bands):
            queries = band.rows(q).to(dtype)
            magnitude, exp, pos, neg, grad_pos, grad_neg, by_mid, by_half = band.fit(maps)
            grad_sums = _QueryOutput._grad_sums(band.rows(grad_out).to(dtype), band.rows(out),
                                                band.rows(norms), band.fit(sums))
            torch.abs(queries, out=magnitude)
            for by_columns, mid, half, m_pos, m_neg in _QueryOutput._blocks(
                    row_mid, row_half, col_mid, col_half, row_pos, row_neg, col_pos, col_neg,
                    band):
                pos_sums, neg_sums = grad_sums[by_columns], grad_sums[not by_columns]
                _polarity_maps(queries, magnitude, mid, half, exp, pos, neg)
                rows = slice(None) if by_columns else slice(band.top, band.bottom)
                accumulate = by_columns and index > 0
                for features, grads, target in ((pos, pos_sums, 2 * by_columns),
                                                (neg, neg_sums, 2 * by_columns + 1)):
                    _gram_per_position(features, grads, band.shape, by_columns,
                                       grad_matrices[target][:, :, rows], accumulate)
                _per_position(pos_sums, m_pos.transpose(-2, -1), band.shape, by_columns,
                              grad_pos)
                _per_position(neg_sums, m_neg.transpose(-2, -1), band.shape, by_columns,
                              grad_neg)
                # d(signed) -> d(exp) = d(signed) sign(q) -> d(argument) = that * exp; with
                # sign(q)^2 = 1, weighted = d(signed) * exp gives dq = weighted (mid +
                # sign(q) half), d mid = sum weighted q, d half = sum weighted |q|
                weighted = polarity_backward_(grad_pos, grad_neg, pos, neg).mul_(exp)
                scale_grads[2 * by_columns] += torch.linalg.vecdot(weighted, queries, dim=2)
                scale_grads[2 * by_columns + 1] += torch.linalg.vecdot(weighted, magnitude,
                                                                       dim=2)
                if by_columns:
                    by_mid.addcmul_(weighted, mid)
                    by_half.addcmul_(weighted, half)
                else:
                    torch.mul(weighted, mid, out=by_mid)
                    torch.mul(weighted, half, out=by_half)
            torch.addcmul(by_mid, by_half, torch.sign(queries, out=magnitude),
                          out=band.rows(grad_q))
        scale_grads = [grad.unsqueeze(2).sum_to_size(param.shape).to(param.dtype)
                       for grad, param in zip(scale_grads, (row_mid, row_half, col_mid,
                                                            col_half))]
        return (grad_q, *scale_grads, *grad_matrices, None, None)

    @staticmethod
    def _grad_sums(grad_out: Tensor, out: Tensor, norms: Tensor,
                   buffers: List[Tensor]) -> List[Tensor]:
        """Gradients (B, h, n, d/2 + 1) of the two streams' numerators and normalisers, in
        the two buffers."""
        half_dims = out.shape[-1] // 2
        for stream, grad in enumerate(buffers):
            part = slice(stream * half_dims, (stream + 1) * half_dims)
            inverse = norms[..., stream:stream + 1].reciprocal()
            torch.mul(grad_out[..., part], inverse, out=grad[..., :half_dims])
            grad[..., half_dims].copy_((grad[..., :half_dims] * out[..., part]).sum(-1)).neg_()
        return buffers


def _rotate(m: Tensor, cos: Tensor, sin: Tensor, inverse: bool = False) -> Tensor:
    """``Rot(p) @ m[p]`` (``Rot(p)^T`` if ``inverse``) for (..., P, d, x) matrices whose rows
    are channel pairs and the (P, d) tables of the positions."""
    cos, sin = cos[:, :, None], sin[:, :, None]
    turned = rotate_pairs(m.transpose(-2, -1)).transpose(-2, -1) * sin
    return m * cos - turned if inverse else m * cos + turned


def _lean_polapp_attention(q: Tensor, k: Tensor, v: Tensor, s1: Tensor, s2: Tensor,
                           axes: AxisTables, eps: float) -> Tensor:
    """The lean path (module docstring) in :func:`compute_dtype`, laid out as (B, N, h, d)."""
    dtype = compute_dtype(q)
    axes = axes.to(dtype)
    hw_shape, tokens, dims = axes.hw_shape, q.shape[-2], q.shape[-1]
    half_dims = dims // 2
    rows_kv, cols_kv, pos_mean, neg_mean = _KeyStatistics.apply(k, v, hw_shape)
    kv_row = _rotate(rows_kv, axes.row_cos, axes.row_sin).sum(dim=2) / tokens  # (B, h, d, d)
    kv_col = _rotate(cols_kv, axes.col_cos, axes.col_sin).sum(dim=2) / tokens
    rows = _rotate(kv_row.unsqueeze(2), axes.row_cos, axes.row_sin, inverse=True)
    cols = _rotate(kv_col.unsqueeze(2), axes.col_cos, axes.col_sin, inverse=True)

    def matrix(per_position, values, mean):  # (B, h, P, d, d/2 + 1)
        mean = mean.transpose(-2, -1).unsqueeze(2).expand(-1, -1, per_position.shape[2], -1, -1)
        return torch.cat([per_position[..., values], mean], dim=-1)

    sim, opp = slice(0, half_dims), slice(half_dims, dims)
    s1, s2 = s1.to(dtype), s2.to(dtype)
    temperatures = []
    for t_pos, t_neg in ((s1[..., :dims], s2[..., :dims]), (s2[..., dims:], s1[..., dims:])):
        temperatures += [(t_pos + t_neg) / 2, (t_pos - t_neg) / 2]
    return _QueryOutput.apply(
        q, *temperatures, matrix(rows, sim, pos_mean), matrix(rows, opp, pos_mean),
        matrix(cols, opp, neg_mean), matrix(cols, sim, neg_mean), hw_shape, eps)


def check_polapp_attention_impl(impl: str) -> str:
    """Return ``impl`` or raise a ValueError naming the accepted values."""
    if impl not in POLAPP_ATTENTION_IMPLS:
        raise ValueError(f'attn_impl must be one of {POLAPP_ATTENTION_IMPLS} for PolaFormer++ '
                         f'(no Triton kernels for it yet), got {impl!r}')
    return impl


def polapp_linear_attention(q: Tensor, k: Tensor, v: Tensor, s1: Tensor, s2: Tensor,
                            axes: AxisTables, eps: float = 1e-6, impl: str = 'auto') -> Tensor:
    """PolaFormer++ polarity-aware linear attention (module docstring) of one grid.

    Args:
        q, k, v (Tensor): (B, h, N, d) over the N = H * W tokens of the grid, row-major,
            d divisible by 4.
        s1, s2 (Tensor): (1, h, 1, 2d) temperatures of the sim and opp streams, in (0, 1)
            (``sigmoid`` of the parameters).
        axes (AxisTables): the (H, d) row and (W, d) column tables of 2d-channel rotary
            positions (:meth:`~pola_mm.ops.rope.RotaryTable.axes`).
        eps (float): normaliser epsilon, the authors' 1e-6 on the mean.
        impl (str): 'auto' or 'torch' (the lean path), or 'reference' (the plain form:
            slow, for checks). ONNX export records the plain form whatever ``impl``.

    Returns:
        Tensor: (B, h, N, d) of ``q``'s dtype; channels [0, d/2) from the sim stream.
    """
    check_polapp_attention_impl(impl)
    check_polapp_inputs(q, k, v, s1, s2, axes)
    dtype = q.dtype
    with torch.autocast(device_type=q.device.type, enabled=False):
        if impl == 'reference' or torch.onnx.is_in_onnx_export():
            # exported graphs record the plain form: standard operators only (no writes
            # into views), and an inference graph keeps nothing for backward
            compute = compute_dtype(q)
            out = plain_polapp_linear_attention(
                *(t.to(compute) for t in (q, k, v, s1, s2)),
                *expand_axes(axes.to(compute)), eps)
        else:
            out = _lean_polapp_attention(q, k, v, s1, s2, axes, eps)
    return out.to(dtype)
