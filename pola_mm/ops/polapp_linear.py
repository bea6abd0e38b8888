"""The linear-attention core of PolaFormer++: lean PyTorch path and its dispatcher.

Per head, with ``X = [relu(q) | relu(-q)]`` (2d channels), the polarity feature maps are
``F_sim = exp(X * s1) - 1``, ``F_opp = exp(swap(X) * s2) - 1`` (``swap`` exchanges the two
halves) and ``K = exp([relu(k) | relu(-k)]) - 1`` (no temperature on the keys). With ``R``
the 2-D rotary map over the 2d channels (:mod:`.rope`), stream ``t`` (sim: the first half
of the value channels, opp: the second) gives::

    out_t[i] = sum_j (R_i F_t[i] . R_j K[j]) v_t[j] / n / (F_t[i] . mean_j K[j] + eps)

the rotation in the numerator only, as the authors compute it.

The plain form (:func:`pola_mm.ops.plain_polapp_linear_attention`) rotates every 2d-wide
map (two gathers and three products each) and keeps about twenty such maps for backward.
Here the rotation never touches a wide map: because both channels of a pair share their
phase, ``R(F) @ M = [F * cos | F * sin] @ [M; P M]`` and
``R(K)^T V = top - P bottom`` with ``[top; bottom] = [K * cos | K * sin]^T V``, where ``P``
turns the rows of a small (2d, *) matrix pairwise (:func:`_turn_rows`). The opp stream's
half swap moves onto its small operands (:func:`_streams`), so both streams read one
``[relu(q) | relu(-q)]``. The autograd Function keeps only its inputs, the small matrices,
the output and its normalisers, and recomputes the feature maps in backward, whose
gradients are written out below. Everything runs in float32 with autocast off (``exp`` of
untempered keys overflows fp16 from 11.1 on); the result is cast back to the input dtype.
"""
from typing import Tuple

import torch
from torch import Tensor

from .pola_reference import plain_polapp_linear_attention

POLAPP_ATTENTION_IMPLS = ('auto', 'torch', 'reference')


def check_polapp_inputs(q: Tensor, k: Tensor, v: Tensor, s1: Tensor, s2: Tensor,
                        cos: Tensor, sin: Tensor) -> None:
    """Raise ValueError unless q, k, v are (B, h, N, d) with d divisible by 4, s1 and s2
    broadcast as (1, h, 1, 2d) and the tables are (N, 2d)."""
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
    for name, table in (('cos', cos), ('sin', sin)):
        if table.shape != (tokens, 2 * dims):
            raise ValueError(f'rotary table {name} must be ({tokens}, {2 * dims}), '
                             f'got {tuple(table.shape)}')


def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 for float64 inputs (exact checks), float32 for any other."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def polar_features(x: Tensor, negative_first: bool) -> Tensor:
    """(..., d) -> (..., 2d) ``[relu(x) | relu(-x)]`` in :func:`compute_dtype`, halves
    swapped if ``negative_first``."""
    dims, x = x.shape[-1], x.to(compute_dtype(x))
    out = x.new_empty(*x.shape[:-1], 2 * dims)
    positive, negative = (out[..., dims:], out[..., :dims]) if negative_first else (
        out[..., :dims], out[..., dims:])
    torch.clamp(x, min=0, out=positive)
    torch.clamp(x, max=0, out=negative).neg_()
    return out


def _turn_rows(m: Tensor) -> Tensor:
    """``P m`` for a (..., 2d, c) matrix: rows ``(2i, 2i + 1)`` become
    ``(m[2i + 1], -m[2i])``; ``R(F) @ m = (F * cos) @ m + (F * sin) @ P m``."""
    pairs = m.unflatten(-2, (-1, 2))
    return torch.stack([pairs[..., 1, :], -pairs[..., 0, :]], dim=-2).flatten(-3, -2)


def _with_turned(m: Tensor) -> Tensor:
    """(..., 2d, c) -> (..., 4d, c) ``[m; P m]``, so that ``R(F) @ m`` is
    ``_rotary_inputs(F) @ _with_turned(m)``."""
    return torch.cat([m, _turn_rows(m)], dim=-2)


def _rotary_inputs(feats: Tensor, tables: Tensor) -> Tensor:
    """``[F * cos | F * sin]``: (B, h, N, 2d) and (N, 2, 2d) tables -> (B, h, N, 4d)."""
    return (feats.unsqueeze(-2) * tables).flatten(-2)


def _rotated_transposed(rotary: Tensor, m: Tensor) -> Tensor:
    """``R(F)^T @ m`` from ``_rotary_inputs(F)`` (B, h, N, 4d) and m (B, h, N, c)."""
    stacked = torch.matmul(rotary.transpose(-2, -1), m)  # [(F cos)^T m; (F sin)^T m]
    top, bottom = stacked.chunk(2, dim=-2)
    return top.sub_(_turn_rows(bottom))  # P^T = -P


def _to_features(grad_rotary: Tensor, tables: Tensor) -> Tensor:
    """Gradient (B, h, N, 4d) to ``_rotary_inputs(F)`` -> gradient (B, h, N, 2d) to F."""
    return (grad_rotary.unflatten(-1, (2, -1)) * tables).sum(dim=-2)


def _swap_halves(x: Tensor, dim: int = -1) -> Tensor:
    first, second = x.chunk(2, dim=dim)
    return torch.cat([second, first], dim=dim)


def _streams(raw: Tensor, s1: Tensor, s2: Tensor, tables: Tensor):
    """Per stream: (index, scale, tables, swapped). The opp features
    ``exp(swap(raw) * s2) - 1`` are ``swap(exp(raw * swap(s2)) - 1)``; the swap moves to
    the small operands (its scale, tables, value rows and key mean), never to ``raw``."""
    yield 0, s1, tables, False
    yield 1, _swap_halves(s2), _swap_halves(tables), True


def _forward(q: Tensor, k: Tensor, v: Tensor, s1: Tensor, s2: Tensor, cos: Tensor,
             sin: Tensor, eps: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(out (B, h, N, d), normalisers (B, h, N, 2), R(K)^T v / n, mean K)`` in the
    inputs' :func:`compute_dtype` (q, k, s1, s2 and the tables already in it)."""
    tokens, half = k.shape[-2], v.shape[-1] // 2
    tables = torch.stack([cos, sin], dim=-2)  # (N, 2, 2d)
    keys = polar_features(k, False).expm1_()
    key_mean = keys.mean(dim=-2, keepdim=True)  # (B, h, 1, 2d)
    kv = _rotated_transposed(_rotary_inputs(keys, tables), v.to(keys.dtype)).div_(tokens)
    del keys
    raw = polar_features(q, False)  # [relu(q) | relu(-q)]
    outs, norms = [], []
    for stream, scale, stream_tables, swapped in _streams(raw, s1, s2, tables):
        kv_t, mean_t = kv[..., stream * half:(stream + 1) * half], key_mean
        if swapped:
            kv_t, mean_t = _swap_halves(kv_t, -2), _swap_halves(mean_t)
        feats = (raw * scale).expm1_()
        norm = torch.matmul(feats, mean_t.transpose(-2, -1)).add_(eps)  # (B, h, N, 1)
        rotary = _rotary_inputs(feats, stream_tables)
        del feats
        outs.append(torch.matmul(rotary, _with_turned(kv_t)).div_(norm))
        norms.append(norm)
    return torch.cat(outs, dim=-1), torch.cat(norms, dim=-1), kv, key_mean


def _polar_backward(grad: Tensor, x: Tensor) -> Tensor:
    """Gradient to ``x`` (..., d) of ``polar_features(x, False)`` given the gradient
    (..., 2d) to it, which it overwrites. Where x is exactly 0 it takes the subgradient of
    ``relu(-x)``'s side."""
    positive, negative = grad.chunk(2, dim=-1)
    return torch.where(x > 0, positive, negative.neg_())


class _PolaPPLinearCore(torch.autograd.Function):
    """:func:`_forward` with a backward that recomputes the feature maps."""

    @staticmethod
    def forward(ctx, q, k, v, s1, s2, cos, sin, eps):
        dtype = compute_dtype(q)
        s1, s2, cos, sin = (t.to(dtype) for t in (s1, s2, cos, sin))
        out, norms, kv, key_mean = _forward(q, k.to(dtype), v, s1, s2, cos, sin, eps)
        ctx.save_for_backward(q, k, v, s1, s2, cos, sin, out, norms, kv, key_mean)
        ctx.dtypes = (q.dtype, k.dtype, v.dtype)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, s1, s2, cos, sin, out, norms, kv, key_mean = ctx.saved_tensors
        dtype = compute_dtype(q)
        q, k, v, grad_out = (t.to(dtype) for t in (q, k, v, grad_out))
        tokens, half = k.shape[-2], v.shape[-1] // 2
        tables = torch.stack([cos, sin], dim=-2)
        grad_kv, grad_key_mean, grad_scales = torch.empty_like(kv), torch.zeros_like(key_mean), []
        raw = polar_features(q, False)
        grad_raw = None
        for stream, scale, stream_tables, swapped in _streams(raw, s1, s2, tables):
            part = slice(stream * half, (stream + 1) * half)
            grad_t, out_t, kv_t, mean_t = grad_out[..., part], out[..., part], kv[..., part], \
                key_mean
            if swapped:
                kv_t, mean_t = _swap_halves(kv_t, -2), _swap_halves(mean_t)
            inv_norm = norms[..., stream:stream + 1].reciprocal()
            grad_num = grad_t * inv_norm  # (B, h, N, d/2)
            grad_norm = (grad_t * out_t).sum(dim=-1, keepdim=True).mul_(inv_norm).neg_()
            feats = (raw * scale).expm1_()
            grad_kv_t = _rotated_transposed(_rotary_inputs(feats, stream_tables), grad_num)
            grad_mean_t = torch.matmul(grad_norm.transpose(-2, -1), feats)
            # d(features): rotated numerator + normaliser, then through exp(raw * scale).
            grad_feats = _to_features(
                torch.matmul(grad_num, _with_turned(kv_t).transpose(-2, -1)), stream_tables)
            grad_exp = grad_feats.addcmul_(grad_norm, mean_t).mul_(feats.add_(1))
            del feats, grad_feats
            grad_scale = (grad_exp * raw).sum(dim=(0, 2), keepdim=True)
            grad_exp = grad_exp.mul_(scale)
            grad_raw = grad_exp if grad_raw is None else grad_raw.add_(grad_exp)
            del grad_exp
            if swapped:
                grad_kv_t, grad_mean_t = _swap_halves(grad_kv_t, -2), _swap_halves(grad_mean_t)
                grad_scale = _swap_halves(grad_scale)
            grad_kv[..., part] = grad_kv_t
            grad_key_mean += grad_mean_t
            grad_scales.append(grad_scale)
        grad_q = _polar_backward(grad_raw, q)
        del raw, grad_raw
        keys = polar_features(k, False).expm1_()
        # kv = R(K)^T v / n = (top - P bottom) / n with [top; bottom] = rotary(K)^T v
        grad_stacked = _with_turned(grad_kv.div_(tokens))
        rotary = _rotary_inputs(keys, tables)
        grad_v = torch.matmul(rotary, grad_stacked)
        del rotary
        grad_keys = _to_features(torch.matmul(v, grad_stacked.transpose(-2, -1)), tables)
        grad_keys.add_(grad_key_mean / tokens).mul_(keys.add_(1))
        grad_k = _polar_backward(grad_keys, k)
        q_dtype, k_dtype, v_dtype = ctx.dtypes
        grad_s1, grad_s2 = (g.sum(dim=1, keepdim=True) if s.shape[1] == 1 else g
                            for g, s in zip(grad_scales, (s1, s2)))
        return (grad_q.to(q_dtype), grad_k.to(k_dtype), grad_v.to(v_dtype), grad_s1, grad_s2,
                None, None, None)


def check_polapp_attention_impl(impl: str) -> str:
    """Return ``impl`` or raise a ValueError naming the accepted values."""
    if impl not in POLAPP_ATTENTION_IMPLS:
        raise ValueError(f'attn_impl must be one of {POLAPP_ATTENTION_IMPLS} for PolaFormer++ '
                         f'(no Triton kernels for it yet), got {impl!r}')
    return impl


def polapp_linear_attention(q: Tensor, k: Tensor, v: Tensor, s1: Tensor, s2: Tensor,
                            cos: Tensor, sin: Tensor, eps: float = 1e-6,
                            impl: str = 'auto') -> Tensor:
    """PolaFormer++ polarity-aware linear attention (module docstring) of one grid.

    Args:
        q, k, v (Tensor): (B, h, N, d) over the N = H * W tokens of the grid, d divisible
            by 4.
        s1, s2 (Tensor): (1, h, 1, 2d) temperatures of the sim and opp streams, in (0, 1)
            (``sigmoid`` of the parameters).
        cos, sin (Tensor): (N, 2d) rotary tables (:class:`~pola_mm.ops.rope.RotaryTable`
            of 2d channels).
        eps (float): normaliser epsilon, the authors' 1e-6 on the mean.
        impl (str): 'auto' or 'torch' (the lean path), or 'reference' (the plain form:
            slow, for checks). ONNX export records the plain form whatever ``impl``.

    Returns:
        Tensor: (B, h, N, d) of ``q``'s dtype; channels [0, d/2) from the sim stream.
    """
    check_polapp_attention_impl(impl)
    check_polapp_inputs(q, k, v, s1, s2, cos, sin)
    dtype = q.dtype
    with torch.autocast(device_type=q.device.type, enabled=False):
        if impl == 'reference' or torch.onnx.is_in_onnx_export():
            # exported graphs record the plain form: standard operators only (no expm1,
            # no writes into views), and an inference graph keeps nothing for backward
            compute = compute_dtype(q)
            out = plain_polapp_linear_attention(
                *(t.to(compute) for t in (q, k, v, s1, s2, cos, sin)), eps)
        else:
            out = _PolaPPLinearCore.apply(q, k, v, s1, s2, cos, sin, eps)
    return out.to(dtype)
