"""Lean PyTorch implementation of the polarity-aware linear attention core.

The plain form materialises four polarity maps, two concatenated query maps and two
``K^T V`` products. Here the same result comes from one feature map per input and one
pair of matrix products, using two facts:

* ``q_opp = [q-, q+]`` is a channel permutation of ``q_sim = [q+, q-]``, so both streams
  read the same ``Q = [q+, q-]`` (B, h, N, 2d) and only the small (2d, *) right-hand
  matrix differs. Writing ``P = k+^T v / n``, ``M = k-^T v / n`` (d x d) and
  ``m± = mean_j k±[j]``, the sim numerator is ``q+ P[:, :d/2] + q- M[:, :d/2]``, the opp
  numerator ``q- P[:, d/2:] + q+ M[:, d/2:]`` and the normalisers ``q+ m+ + q- m-`` and
  ``q+ m- + q- m+``; they are the d + 2 columns of one product ``Q @ W`` with
  ``W = [[P1, M2, m+, m-], [M1, P2, m-, m+]]`` (2d, d + 2).
* ``relu(x)^p`` and ``relu(-x)^p`` have disjoint supports, so one ``|x|^p`` gives both.

A custom autograd Function keeps for backward the inputs, the output, the small ``W``, the
(N, 2) reciprocal normalisers and ``sign(q) |q|^p``, ``sign(k) |k|^p`` (B, h, *, d) (so
backward needs no power of its own); the (B, h, *, 2d) feature maps are rebuilt from them
by a clamp and a subtraction, so none of them outlives the forward.
"""
from typing import Tuple

import torch
from torch import Tensor


def check_polarity_inputs(q: Tensor, k: Tensor, v: Tensor, power: Tensor) -> None:
    """Raise ValueError unless q (B, h, N, d), k and v (B, h, n, d), d even, and power
    broadcasts to (1, h, 1, d)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError('q, k and v must be 4-D (B, heads, tokens, dims), got shapes '
                         f'{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}')
    batch, heads, _, dims = q.shape
    if k.shape != v.shape or k.shape[:2] != q.shape[:2] or k.shape[-1] != dims:
        raise ValueError(f'k {tuple(k.shape)} and v {tuple(v.shape)} must be '
                         f'({batch}, {heads}, n, {dims}) to match q {tuple(q.shape)}')
    if dims % 2:
        raise ValueError(f'head dims must be even (split between sim and opp), got {dims}')
    if k.shape[2] == 0:
        raise ValueError('polarity attention needs at least one key')
    if power.dim() != 4 or power.shape[0] != 1 or power.shape[2] != 1 or \
            power.shape[1] not in (1, heads) or power.shape[3] not in (1, dims):
        raise ValueError(f'power must broadcast as (1, {heads}, 1, {dims}), '
                         f'got {tuple(power.shape)}')


def signed_power(x: Tensor, power: Tensor) -> Tensor:
    """``sign(x) |x|^p`` (B, h, L, d): both polarity maps in one tensor, as
    ``relu(x)^p = relu(s)`` and ``relu(-x)^p = relu(-s)`` (disjoint supports)."""
    return x.abs().pow_(power).copysign_(x)


def polarity_features(signed: Tensor) -> Tensor:
    """``[relu(x)^p, relu(-x)^p]`` (B, h, L, 2d) from ``s = sign(x) |x|^p`` (B, h, L, d)."""
    dims = signed.shape[-1]
    features = signed.new_empty(*signed.shape[:-1], 2 * dims)
    torch.clamp(signed, min=0, out=features[..., :dims])
    torch.sub(features[..., :dims], signed, out=features[..., dims:])  # relu(s) - s
    return features


def polarity_features_backward(x: Tensor, signed: Tensor, power: Tensor,
                               grad_features: Tensor) -> Tuple[Tensor, Tensor]:
    """Vector-Jacobian product of :func:`polarity_features` of ``s = signed_power(x, p)``.

    With g the gradient reaching the map x's sign selects and ``a = |s| = |x|^p``:
    ``dx = g p a / x`` (0 at x = 0) and ``dp = sum g a log|x| = (sum g a log a) / p``, so no
    power or log of x is needed.

    Returns:
        tuple: ``grad_x`` (B, h, L, d) and ``grad_power`` summed over batch and tokens,
        (1, h, 1, d) (``power``'s broadcast shape is restored by the caller).
    """
    dims = x.shape[-1]
    grad_map = torch.where(signed > 0, grad_features[..., :dims], grad_features[..., dims:])
    magnitude = signed.abs()
    grad_power = (grad_map * torch.xlogy(magnitude, magnitude)).sum(
        dim=(0, 2), keepdim=True).div_(power)
    grad_x = grad_map.mul_(magnitude).div_(x).mul_(power).masked_fill_(x == 0, 0.)
    return grad_x, grad_power


def _mix_streams(kv: Tensor, k_mean: Tensor) -> Tensor:
    """``W`` (B, h, 2d, d + 2) from ``kv = [P; M]`` (B, h, 2d, d) and
    ``k_mean = [m+; m-]`` (B, h, 2d, 1)."""
    dims = kv.shape[-1]
    half = dims // 2
    pos, neg = kv[..., :dims, :], kv[..., dims:, :]
    mean_pos, mean_neg = k_mean[..., :dims, :], k_mean[..., dims:, :]
    top = torch.cat([pos[..., :half], neg[..., half:], mean_pos, mean_neg], dim=-1)
    bottom = torch.cat([neg[..., :half], pos[..., half:], mean_neg, mean_pos], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def _mix_streams_backward(grad_mixing: Tensor) -> Tuple[Tensor, Tensor]:
    """Adjoint of :func:`_mix_streams`: d W (B, h, 2d, d + 2) -> d kv (B, h, 2d, d) and
    d k_mean (B, h, 2d, 1), written out (a re-arrangement and two sums)."""
    dims = grad_mixing.shape[-1] - 2
    half = dims // 2
    top, bottom = grad_mixing[..., :dims, :], grad_mixing[..., dims:, :]
    grad_pos = torch.cat([top[..., :half], bottom[..., half:dims]], dim=-1)
    grad_neg = torch.cat([bottom[..., :half], top[..., half:dims]], dim=-1)
    grad_mean_pos = top[..., dims:dims + 1] + bottom[..., dims + 1:]
    grad_mean_neg = top[..., dims + 1:] + bottom[..., dims:dims + 1]
    return (torch.cat([grad_pos, grad_neg], dim=-2),
            torch.cat([grad_mean_pos, grad_mean_neg], dim=-2))


def _normalise(mixed: Tensor, eps: float) -> Tuple[Tensor, Tensor]:
    """``mixed = Q @ W`` (B, h, N, d + 2) -> output (B, h, N, d) and the reciprocal
    normalisers (B, h, N, 2, 1) of the sim and opp streams."""
    dims = mixed.shape[-1] - 2
    inv_norm = mixed[..., dims:].add(eps).reciprocal_().unsqueeze(-1)
    out = mixed[..., :dims].unflatten(-1, (2, dims // 2)) * inv_norm
    return out.flatten(-2), inv_norm


class PolarityLinearAttentionFunction(torch.autograd.Function):
    """Autograd Function of the lean core; see :func:`polarity_linear_attention_torch`."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, power: Tensor, eps: float) -> Tensor:
        power32 = power.float()
        q32, k32 = q.float(), k.float()
        k_signed = signed_power(k32, power32)
        keys = polarity_features(k_signed)  # (B, h, n, 2d)
        kv = keys.transpose(-2, -1) @ v.float()
        kv.div_(k.shape[-2])
        k_mean = keys.mean(dim=-2).unsqueeze(-1)
        del keys
        mixing = _mix_streams(kv, k_mean)  # (B, h, 2d, d + 2)
        q_signed = signed_power(q32, power32)
        out, inv_norm = _normalise(polarity_features(q_signed) @ mixing, eps)
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, power, mixing, out, inv_norm, q_signed, k_signed)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, power, mixing, out, inv_norm, q_signed, k_signed = ctx.saved_tensors
        power32 = power.float()
        q32 = q.float()
        dims = q.shape[-1]
        queries = polarity_features(q_signed)  # (B, h, N, 2d)
        grad_out = grad_out.float().unflatten(-1, (2, dims // 2))
        grad_mixed = torch.cat([
            (grad_out * inv_norm).flatten(-2),
            (grad_out * out.float().unflatten(-1, (2, dims // 2))).sum(-1).mul_(
                inv_norm.squeeze(-1)).neg_()
        ], dim=-1)  # (B, h, N, d + 2)
        grad_mixing = queries.transpose(-2, -1) @ grad_mixed
        del queries
        grad_q = grad_power = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[3]:
            grad_queries = grad_mixed @ mixing.transpose(-2, -1)
            del grad_mixed
            grad_q, grad_power = polarity_features_backward(q32, q_signed, power32,
                                                            grad_queries)
            del grad_queries
        else:
            del grad_mixed

        grad_kv, grad_k_mean = _mix_streams_backward(grad_mixing)
        num_keys = k.shape[-2]
        grad_kv.div_(num_keys)
        grad_k_mean.div_(num_keys)
        k32 = k.float()
        grad_v = grad_k = None
        if ctx.needs_input_grad[2]:
            grad_v = (polarity_features(k_signed) @ grad_kv).to(v.dtype)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
            grad_keys = v.float() @ grad_kv.transpose(-2, -1)
            grad_keys.add_(grad_k_mean.transpose(-2, -1))
            grad_k, grad_power_k = polarity_features_backward(k32, k_signed, power32,
                                                              grad_keys)
            grad_power = grad_power_k if grad_power is None else grad_power + grad_power_k
        if ctx.needs_input_grad[3]:
            grad_power = grad_power.sum_to_size(power.shape).to(power.dtype)
        else:
            grad_power = None
        return (None if grad_q is None else grad_q.to(q.dtype),
                None if grad_k is None else grad_k.to(k.dtype), grad_v, grad_power, None)


def polarity_linear_attention_torch(q: Tensor, k: Tensor, v: Tensor, power: Tensor,
                                    eps: float = 1e-6) -> Tensor:
    """Lean PyTorch polarity-aware linear attention; same contract as
    :func:`pola_mm.ops.polarity_attention.polarity_linear_attention`.

    Args:
        q (Tensor): (B, h, N, d) queries.
        k (Tensor): (B, h, n, d) keys.
        v (Tensor): (B, h, n, d) values, d even.
        power (Tensor): (1, h, 1, d) exponents (>= 1).
        eps (float): normaliser epsilon.

    Returns:
        Tensor: (B, h, N, d) in q's dtype, computed in float32 with autocast off.
    """
    check_polarity_inputs(q, k, v, power)
    with torch.autocast(device_type=q.device.type, enabled=False):
        return PolarityLinearAttentionFunction.apply(q, k, v, power, eps)
