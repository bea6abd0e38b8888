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
as (B, N, h, d), so heads split off and merged into (B, N, h * d) cost no copy. The
elementwise steps around the products (:mod:`.polapp_steps`) run eagerly or, with
``impl='auto'`` on CPU and large maps, fused by ``torch.compile`` (:mod:`.cpu_fusion`).
Everything runs in float32 with autocast off (``exp`` of untempered keys overflows fp16
from 11.1 on), float64 for float64 inputs; the result is cast back to the input dtype.
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .cpu_fusion import FUSE_MIN_ELEMENTS, run_fused
from .pola_reference import plain_polapp_linear_attention
from .pola_torch import empty_in_memory_order
from .polapp_steps import KEY_BUFFERS, QUERY_BUFFERS, key_grad, key_maps, query_grad, query_maps
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
# Fused steps make one pass each; there twice as many rows per band (deeper products over
# the columns, fewer calls) measured faster.
CPU_BAND_ELEMENTS = 1 << 19
FUSED_BAND_ELEMENTS = 1 << 20


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


def _bands(x: Tensor, hw_shape: Tuple[int, int], fuse: bool) -> List[_Band]:
    """The bands of rows of x's (H, W) grid: on CPU of about ``CPU_BAND_ELEMENTS`` (fused
    steps: ``FUSED_BAND_ELEMENTS``) per (B, h, band tokens, d) map, elsewhere (one kernel
    launch per operation and band) all rows at once."""
    height, width = hw_shape
    batch, heads, _, dims = x.shape
    elements = FUSED_BAND_ELEMENTS if fuse else CPU_BAND_ELEMENTS
    rows = height if x.device.type != 'cpu' else max(
        1, elements // max(1, batch * heads * width * dims))
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


class _KeyStatistics(torch.autograd.Function):
    """(k, v) -> ``S_row`` (B, h, H, d, d), the sum over each row's tokens of
    ``relu(u)^T v``; ``S_col`` (B, h, W, d, d), over each column's of ``relu(-u)^T v``;
    and the means of ``relu(u)`` and ``relu(-u)`` over all tokens (B, h, 1, d), with
    ``u = sign(k) (exp(|k|) - 1)``; the elementwise steps fused if ``fuse``."""

    @staticmethod
    def forward(ctx, k: Tensor, v: Tensor, hw_shape: Tuple[int, int], fuse: bool):
        ctx.save_for_backward(k, v)
        ctx.hw_shape, ctx.fuse = hw_shape, fuse
        return run_fused(lambda fused: _KeyStatistics._forward(k, v, hw_shape, fused), fuse)

    @staticmethod
    def _forward(k: Tensor, v: Tensor, hw_shape: Tuple[int, int], fuse: bool):
        dtype = compute_dtype(k)
        (batch, heads, tokens, dims), (height, width) = k.shape, hw_shape
        rows_kv = k.new_empty(batch, heads, height, dims, dims, dtype=dtype)
        cols_kv = k.new_empty(batch, heads, width, dims, dims, dtype=dtype)
        sums = k.new_zeros(2, batch, heads, 1, dims, dtype=dtype)
        bands = _bands(k, hw_shape, fuse)
        buffers = _Band.buffers(KEY_BUFFERS, bands[0].rows(k), dtype=dtype)
        for index, band in enumerate(bands):
            maps = band.fit(buffers)
            key_maps(band.rows(k).to(dtype), maps, fuse=fuse)
            pos, neg, values = maps[1], maps[2], band.rows(v).to(dtype)
            _gram_per_position(pos, values, band.shape, False,
                               rows_kv[:, :, band.top:band.bottom])
            _gram_per_position(neg, values, band.shape, True, cols_kv, index > 0)
            sums[0] += pos.sum(dim=-2, keepdim=True)
            sums[1] += neg.sum(dim=-2, keepdim=True)
        sums /= tokens
        return rows_kv, cols_kv, sums[0], sums[1]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_rows, grad_cols, grad_pos_mean, grad_neg_mean):
        k, v = ctx.saved_tensors
        grad_k, grad_v = run_fused(lambda fused: _KeyStatistics._backward(
            k, v, ctx.hw_shape, fused, grad_rows, grad_cols, grad_pos_mean, grad_neg_mean),
            ctx.fuse)
        return grad_k, grad_v, None, None

    @staticmethod
    def _backward(k, v, hw_shape, fuse, grad_rows, grad_cols, grad_pos_mean, grad_neg_mean):
        dtype, tokens = compute_dtype(k), k.shape[-2]
        grad_rows, grad_cols = grad_rows.to(dtype), grad_cols.to(dtype)
        grad_means = [grad.to(dtype) / tokens for grad in (grad_pos_mean, grad_neg_mean)]
        grad_k = empty_in_memory_order(k, dtype=k.dtype)
        grad_v = empty_in_memory_order(v, dtype=dtype)
        bands = _bands(k, hw_shape, fuse)
        buffers = _Band.buffers(KEY_BUFFERS + 2, bands[0].rows(k), dtype=dtype)
        for band in bands:
            *maps, grad_pos, grad_neg = band.fit(buffers)
            keys = band.rows(k).to(dtype)  # one cast for both steps
            key_maps(keys, maps, fuse=fuse)
            pos, neg, values = maps[1], maps[2], band.rows(v).to(dtype)
            band_rows = grad_rows[:, :, band.top:band.bottom]
            band_grad_v = band.rows(grad_v)
            _per_position(pos, band_rows, band.shape, False, band_grad_v)
            _per_position(neg, grad_cols, band.shape, True, band_grad_v, accumulate=True)
            _per_position(values, band_rows.transpose(-2, -1), band.shape, False, grad_pos)
            _per_position(values, grad_cols.transpose(-2, -1), band.shape, True, grad_neg)
            key_grad(keys, maps, grad_pos, grad_neg, *grad_means, band.rows(grad_k),
                     fuse=fuse)
        return grad_k, grad_v.to(v.dtype)


class _QueryOutput(torch.autograd.Function):
    """(q, temperatures, small matrices) -> the normalised output (B, h, N, d), laid out
    as (B, N, h, d); the elementwise steps fused if ``fuse``.

    Block ``a`` (rows, then columns) takes ``u_a = sign(q) (exp(|q| mid_a + q half_a) - 1)``
    (temperatures (1, h, 1, d)); ``relu(u_a)`` meets the (B, h, P, d, d/2 + 1) matrix
    ``pos_a`` of its row or column, ``relu(-u_a)`` meets ``neg_a``. The row block's
    ``relu(u)`` feeds the sim stream and ``relu(-u)`` the opp stream; the column block's the
    other way round. Each stream sums its two products into d/2 numerator columns and the
    normaliser."""

    @staticmethod
    def _blocks(matrices: List[Tensor], band: _Band):
        """Per map of :data:`~.polapp_steps.query_maps` (rows: relu(u), relu(-u); columns:
        the same): (by_columns, the stream it feeds, its matrices for the band)."""
        rows = slice(band.top, band.bottom)
        row_pos, row_neg, col_pos, col_neg = matrices
        return ((False, 0, row_pos[:, :, rows]), (False, 1, row_neg[:, :, rows]),
                (True, 1, col_pos), (True, 0, col_neg))

    @staticmethod
    def forward(ctx, q, row_mid, row_half, col_mid, col_half, row_pos, row_neg, col_pos,
                col_neg, hw_shape, eps, fuse):
        temperatures = [row_mid, row_half, col_mid, col_half]
        matrices = [row_pos, row_neg, col_pos, col_neg]
        out, norms = run_fused(lambda fused: _QueryOutput._forward(
            q, temperatures, matrices, hw_shape, eps, fused), fuse)
        ctx.save_for_backward(q, *temperatures, *matrices, out, norms)
        ctx.hw_shape, ctx.fuse = hw_shape, fuse
        return out

    @staticmethod
    def _forward(q, temperatures, matrices, hw_shape, eps, fuse):
        dtype = compute_dtype(q)
        batch, heads, tokens, dims = q.shape
        half_dims = dims // 2
        out = q.new_empty(batch, tokens, heads, dims, dtype=dtype).transpose(1, 2)
        norms = q.new_empty(batch, heads, tokens, 2, dtype=dtype)
        bands = _bands(q, hw_shape, fuse)
        buffers = _Band.buffers(QUERY_BUFFERS, bands[0].rows(q), dtype=dtype)
        sums = _Band.buffers(2, bands[0].rows(q), half_dims + 1, dtype)
        for band in bands:
            maps, band_sums = band.fit(buffers), band.fit(sums)
            query_maps(band.rows(q).to(dtype), temperatures, maps, fuse=fuse)
            for features, (by_columns, stream, matrix) in zip(
                    maps[3:], _QueryOutput._blocks(matrices, band)):
                _per_position(features, matrix, band.shape, by_columns, band_sums[stream],
                              accumulate=by_columns)
            band_norms, band_out = band.rows(norms), band.rows(out)
            for stream, total in enumerate(band_sums):
                torch.add(total[..., half_dims], eps, out=band_norms[..., stream])
                torch.div(total[..., :half_dims], band_norms[..., stream:stream + 1],
                          out=band_out[..., stream * half_dims:(stream + 1) * half_dims])
        return out, norms

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, *saved = ctx.saved_tensors
        temperatures, matrices, (out, norms) = saved[:4], saved[4:8], saved[8:]
        grad_q, grad_temperatures, grad_matrices = run_fused(
            lambda fused: _QueryOutput._backward(q, temperatures, matrices, out, norms,
                                                 ctx.hw_shape, fused, grad_out), ctx.fuse)
        grad_temperatures = [grad.unsqueeze(2).sum_to_size(param.shape).to(param.dtype)
                             for grad, param in zip(grad_temperatures, temperatures)]
        return (grad_q, *grad_temperatures, *grad_matrices, None, None, None)

    @staticmethod
    def _backward(q, temperatures, matrices, out, norms, hw_shape, fuse, grad_out):
        dtype, half_dims = compute_dtype(q), q.shape[-1] // 2
        grad_q = empty_in_memory_order(q, dtype=q.dtype)
        grad_matrices = [torch.empty_like(matrix) for matrix in matrices]
        grad_temperatures = q.new_zeros(4, q.shape[0], q.shape[1], q.shape[-1], dtype=dtype)
        bands = _bands(q, hw_shape, fuse)
        buffers = _Band.buffers(QUERY_BUFFERS + 4, bands[0].rows(q), dtype=dtype)
        sums = _Band.buffers(2, bands[0].rows(q), half_dims + 1, dtype)
        for index, band in enumerate(bands):
            grad_sums = _QueryOutput._grad_sums(band.rows(grad_out).to(dtype), band.rows(out),
                                                band.rows(norms), band.fit(sums))
            band_buffers = band.fit(buffers)
            maps, grads = band_buffers[:QUERY_BUFFERS], band_buffers[QUERY_BUFFERS:]
            queries = band.rows(q).to(dtype)  # one cast for both steps
            query_maps(queries, temperatures, maps, fuse=fuse)
            for features, grad, grad_matrix, (by_columns, stream, matrix) in zip(
                    maps[3:], grads, grad_matrices, _QueryOutput._blocks(matrices, band)):
                rows = slice(None) if by_columns else slice(band.top, band.bottom)
                _gram_per_position(features, grad_sums[stream], band.shape, by_columns,
                                   grad_matrix[:, :, rows], accumulate=by_columns and index > 0)
                _per_position(grad_sums[stream], matrix.transpose(-2, -1), band.shape,
                              by_columns, grad)
            grad_temperatures += torch.stack(query_grad(
                queries, temperatures, maps, grads, band.rows(grad_q), fuse=fuse))
        return grad_q, grad_temperatures, grad_matrices

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


def _turn_rows(m: Tensor) -> Tensor:
    """The quarter turn of :func:`~.rope.rotate_pairs` applied to the rows (channel pairs)
    of (..., d, x) matrices."""
    return rotate_pairs(m.transpose(-2, -1)).transpose(-2, -1)


def _turned_sum(per_position: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``sum_p Rot(p) m[p]``: (B, h, P, d, x) matrices whose rows are channel pairs and the
    (P, d) tables of the positions -> (B, h, d, x).

    ``Rot(p) = diag(cos_p) + turn diag(sin_p)`` (both channels of a pair share their
    angle, so the quarter turn commutes with the diagonals): two table-weighted sums over
    the positions and one turn of a (d, x) matrix, no rotated (P, d, x) copy."""
    weighted = torch.einsum('bhpdx,tpd->tbhdx', per_position, torch.stack([cos, sin]))
    return weighted[0] + _turn_rows(weighted[1])


def _turned_back(m: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """``Rot(p)^T m`` for every position p: (B, h, d, x) and (P, d) tables ->
    (B, h, P, d, x)."""
    cos, sin = cos[:, :, None], sin[:, :, None]
    return m.unsqueeze(2) * cos - _turn_rows(m).unsqueeze(2) * sin


def _lean_polapp_attention(q: Tensor, k: Tensor, v: Tensor, s1: Tensor, s2: Tensor,
                           axes: AxisTables, eps: float, fuse: bool) -> Tensor:
    """The lean path (module docstring) in :func:`compute_dtype`, laid out as (B, N, h, d);
    its elementwise steps compiled if ``fuse``."""
    dtype = compute_dtype(q)
    axes = axes.to(dtype)
    hw_shape, tokens, dims = axes.hw_shape, q.shape[-2], q.shape[-1]
    half_dims = dims // 2
    rows_kv, cols_kv, pos_mean, neg_mean = _KeyStatistics.apply(k, v, hw_shape, fuse)
    kv_row = _turned_sum(rows_kv, axes.row_cos, axes.row_sin) / tokens  # (B, h, d, d)
    kv_col = _turned_sum(cols_kv, axes.col_cos, axes.col_sin) / tokens

    def matrix(kv, cos, sin, values, mean):  # (B, h, P, d, d/2 + 1)
        per_position = _turned_back(kv[..., values], cos, sin)
        mean = mean.transpose(-2, -1).unsqueeze(2).expand(-1, -1, cos.shape[0], -1, -1)
        return torch.cat([per_position, mean], dim=-1)

    sim, opp = slice(0, half_dims), slice(half_dims, dims)
    s1, s2 = s1.to(dtype), s2.to(dtype)
    temperatures = []
    for t_pos, t_neg in ((s1[..., :dims], s2[..., :dims]), (s2[..., dims:], s1[..., dims:])):
        temperatures += [(t_pos + t_neg) / 2, (t_pos - t_neg) / 2]
    row_tables, col_tables = (axes.row_cos, axes.row_sin), (axes.col_cos, axes.col_sin)
    return _QueryOutput.apply(
        q, *temperatures, matrix(kv_row, *row_tables, sim, pos_mean),
        matrix(kv_row, *row_tables, opp, pos_mean), matrix(kv_col, *col_tables, opp, neg_mean),
        matrix(kv_col, *col_tables, sim, neg_mean), hw_shape, eps, fuse)


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
        impl (str): 'auto' (the lean path; on CPU its elementwise steps compiled by
            ``torch.compile`` where q has at least ``FUSE_MIN_ELEMENTS`` elements), 'torch'
            (the lean path, eager), or 'reference' (the plain form: slow, for checks). ONNX
            export records the plain form whatever ``impl``.

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
            fuse = (impl == 'auto' and q.device.type == 'cpu'
                    and q.numel() >= FUSE_MIN_ELEMENTS)
            out = _lean_polapp_attention(q, k, v, s1, s2, axes, eps, fuse)
    return out.to(dtype)
