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
Here the pair turn (a gather) never touches a wide map: both channels of a pair share
their phase, so ``R(F) @ M = (F * cos) @ M + (F * sin) @ (P M)`` and
``R(K)^T V = (K * cos)^T V - P (K * sin)^T V``, where ``P`` turns the rows of a small
(2d, *) matrix pairwise (:func:`_turn_rows`); the two products go through one reused
buffer. The opp stream's half swap moves onto its operands without a batch dimension
(:func:`_streams`), so both streams read one ``[relu(q) | relu(-q)]``. The autograd
Function keeps only its inputs, the small matrices, the output and its normalisers, and
recomputes the feature maps in backward, whose gradients are written out below.
Everything runs in float32 with autocast off (``exp`` of untempered keys overflows fp16
from 11.1 on); the result is cast back to the input dtype.
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


def _rotated_left(feats: Tensor, cos: Tensor, sin: Tensor, m: Tensor,
                  buffer: Tensor) -> Tensor:
    """``R(F) @ m = (F * cos) @ m + (F * sin) @ P m``: (B, h, N, 2d) features and
    (B, h, 2d, c) -> (B, h, N, c); ``buffer`` (F's shape) holds the products in turn."""
    out = torch.matmul(torch.mul(feats, cos, out=buffer), m)
    return out.add_(torch.matmul(torch.mul(feats, sin, out=buffer), _turn_rows(m)))


def _rotated_transposed(feats: Tensor, cos: Tensor, sin: Tensor, m: Tensor,
                        buffer: Tensor) -> Tensor:
    """``R(F)^T @ m = (F * cos)^T m - P (F * sin)^T m`` (P^T = -P): m (B, h, N, c) ->
    (B, h, 2d, c); ``buffer`` as in :func:`_rotated_left`."""
    top = torch.matmul(torch.mul(feats, cos, out=buffer).transpose(-2, -1), m)
    return top.sub_(_turn_rows(
        torch.matmul(torch.mul(feats, sin, out=buffer).transpose(-2, -1), m)))


def _rotated_left_grad(grad: Tensor, cos: Tensor, sin: Tensor, m: Tensor) -> Tensor:
    """Gradient (B, h, N, 2d) to F of ``R(F) @ m`` given its gradient (B, h, N, c)."""
    out = torch.matmul(grad, m.transpose(-2, -1)).mul_(cos)
    return out.addcmul_(torch.matmul(grad, _turn_rows(m).transpose(-2, -1)), sin)


def _swap_halves(x: Tensor, dim: int = -1) -> Tensor:
    first, second = x.chunk(2, dim=dim)
    return torch.cat([second, first], dim=dim)


def _streams(s1: Tensor, s2: Tensor, cos: Tensor, sin: Tensor):
    """Per stream: (index, scale, cos, sin, swapped). The opp features
    ``exp(swap(raw) * s2) - 1`` are ``swap(exp(raw * swap(s2)) - 1)``; the swap moves to
    the operands without a batch (its scale, tables, value rows and key mean), never to
    ``raw``."""
    yield 0, s1, cos, sin, False
    yield 1, _swap_halves(s2), _swap_halves(cos), _swap_halves(sin), True


def _forward(q: Tensor, k: Tensor, v: Tensor, s1: Tensor, s2: Tensor, cos: Tensor,
             sin: Tensor, eps: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(out (B, h, N, d), normalisers (B, h, N, 2), R(K)^T v / n, mean K)`` in the
    inputs' :func:`compute_dtype` (q, k, s1, s2 and the tables already in it)."""
    tokens, half = k.shape[-2], v.shape[-1] // 2
    keys = polar_features(k, False).expm1_()
    buffer = torch.empty_like(keys)
    key_mean = keys.mean(dim=-2, keepdim=True)  # (B, h, 1, 2d)
    kv = _rotated_transposed(keys, cos, sin, v.to(keys.dtype), buffer).div_(tokens)
    raw, feats = polar_features(q, False), keys  # [relu(q) | relu(-q)]; reuse the memory
    del keys
    outs, norms = [], []
    for stream, scale, stream_cos, stream_sin, swapped in _streams(s1, s2, cos, sin):
        kv_t, mean_t = kv[..., stream * half:(stream + 1) * half], key_mean
        if swapped:
            kv_t, mean_t = _swap_halves(kv_t, -2), _swap_halves(mean_t)
        torch.mul(raw, scale, out=feats).expm1_()
        norm = torch.matmul(feats, mean_t.transpose(-2, -1)).add_(eps)  # (B, h, N, 1)
        outs.append(_rotated_left(feats, stream_cos, stream_sin, kv_t, buffer).div_(norm))
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
        grad_kv, grad_key_mean, grad_scales = torch.empty_like(kv), torch.zeros_like(key_mean), []
        raw = polar_features(q, False)
        feats, buffer, grad_raw = torch.empty_like(raw), torch.empty_like(raw), None
        for stream, scale, stream_cos, stream_sin, swapped in _streams(s1, s2, cos, sin):
            part = slice(stream * half, (stream + 1) * half)
            grad_t, out_t, kv_t, mean_t = grad_out[..., part], out[..., part], kv[..., part], \
                key_mean
            if swapped:
                kv_t, mean_t = _swap_halves(kv_t, -2), _swap_halves(mean_t)
            inv_norm = norms[..., stream:stream + 1].reciprocal()
            grad_num = grad_t * inv_norm  # (B, h, N, d/2)
            grad_norm = (grad_t * out_t).sum(dim=-1, keepdim=True).mul_(inv_norm).neg_()
            torch.mul(raw, scale, out=feats).expm1_()
            grad_kv_t = _rotated_transposed(feats, stream_cos, stream_sin, grad_num, buffer)
            grad_mean_t = torch.matmul(grad_norm.transpose(-2, -1), feats)
            # d(features): rotated numerator + normaliser, then through exp(raw * scale).
            grad_exp = _rotated_left_grad(grad_num, stream_cos, stream_sin, kv_t)
            grad_exp.addcmul_(grad_norm, mean_t).mul_(feats.add_(1))
            grad_scale = torch.mul(grad_exp, raw, out=buffer).sum(dim=(0, 2), keepdim=True)
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
        # kv = R(K)^T v / n: the gradient to R(K) is v @ (grad_kv / n)^T, as for R(K) @ m
        # with m = grad_kv / n and upstream v
        grad_kv.div_(tokens)
        grad_v = _rotated_left(keys, cos, sin, grad_kv, buffer)
        del buffer
        grad_keys = _rotated_left_grad(v, cos, sin, grad_kv)
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
