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

A custom autograd Function keeps only the inputs, the output, the small ``W`` and the
(N, 2) reciprocal normalisers for backward and recomputes the feature maps there, so no
(N, 2d) fp32 temporary outlives the forward.
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


def polarity_features(x: Tensor, power: Tensor) -> Tensor:
    """``[relu(x)^p, relu(-x)^p]``: (B, h, L, d) -> (B, h, L, 2d) in x's dtype."""
    dims = x.shape[-1]
    magnitude = x.abs().pow_(power)
    features = x.new_empty(*x.shape[:-1], 2 * dims)
    torch.mul(magnitude, x > 0, out=features[..., :dims])
    torch.sub(magnitude, features[..., :dims], out=features[..., dims:])  # |x|^p = 0 at 0
    return features


def polarity_features_backward(x: Tensor, power: Tensor,
                               grad_features: Tensor) -> Tuple[Tensor, Tensor]:
    """Vector-Jacobian product of :func:`polarity_features`.

    Returns:
        tuple: ``grad_x`` (B, h, L, d) and ``grad_power`` summed over batch and tokens,
        (1, h, 1, d) (``power``'s broadcast shape is restored by the caller).
    """
    dims = x.shape[-1]
    grad_magnitude = torch.where(x > 0, grad_features[..., :dims], grad_features[..., dims:])
    magnitude = x.abs()
    grad_power = torch.xlogy(magnitude, magnitude)  # |x| log|x|, 0 at x = 0
    magnitude.pow_(power - 1).mul_(grad_magnitude)  # g * |x|^(p-1)
    grad_power = grad_power.mul_(magnitude).sum(dim=(0, 2), keepdim=True)
    grad_x = magnitude.mul_(power).mul_(torch.sign(x))
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
        keys = polarity_features(k.float(), power32)  # (B, h, n, 2d)
        num_keys = k.shape[-2]
        kv = keys.transpose(-2, -1) @ v.float()
        kv.div_(num_keys)
        k_mean = keys.mean(dim=-2).unsqueeze(-1)
        del keys
        mixing = _mix_streams(kv, k_mean)  # (B, h, 2d, d + 2)
        out, inv_norm = _normalise(polarity_features(q.float(), power32) @ mixing, eps)
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, power, mixing, out, inv_norm)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        q, k, v, power, mixing, out, inv_norm = ctx.saved_tensors
        power32 = power.float()
        q32 = q.float()
        dims = q.shape[-1]
        queries = polarity_features(q32, power32)  # (B, h, N, 2d)
        grad_out = grad_out.float().unflatten(-1, (2, dims // 2))
        grad_mixed = torch.cat([
            (grad_out * inv_norm).flatten(-2),
            (grad_out * out.float().unflatten(-1, (2, dims // 2))).sum(-1).mul_(
                inv_norm.squeeze(-1)).neg_()
        ], dim=-1)  # (B, h, N, d + 2)
        grad_mixing = queries.transpose(-2, -1) @ grad_mixed
        grad_q = grad_power = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[3]:
            grad_queries = grad_mixed @ mixing.transpose(-2, -1)
            del queries, grad_mixed
            grad_q, grad_power = polarity_features_backward(q32, power32, grad_queries)
            del grad_queries
        else:
            del queries, grad_mixed

        with torch.enable_grad():  # the small (2d, d + 2) re-arrangement
            kv = torch.zeros(*mixing.shape[:-1], dims, dtype=mixing.dtype,
                             device=mixing.device, requires_grad=True)
            k_mean = torch.zeros(*mixing.shape[:-1], 1, dtype=mixing.dtype,
                                 device=mixing.device, requires_grad=True)
            grad_kv, grad_k_mean = torch.autograd.grad(
                _mix_streams(kv, k_mean), (kv, k_mean), grad_mixing)
        num_keys = k.shape[-2]
        grad_kv.div_(num_keys)
        grad_k_mean.div_(num_keys)
        k32 = k.float()
        keys = polarity_features(k32, power32)
        grad_v = (keys @ grad_kv).to(v.dtype) if ctx.needs_input_grad[2] else None
        grad_k = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
            del keys
            grad_keys = v.float() @ grad_kv.transpose(-2, -1)
            grad_keys.add_(grad_k_mean.transpose(-2, -1))
            grad_k, grad_power_k = polarity_features_backward(k32, power32, grad_keys)
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
