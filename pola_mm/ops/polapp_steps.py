"""The elementwise steps of the PolaFormer++ lean core (:mod:`.polapp_linear`) on a band of
tokens, each a :class:`~.cpu_fusion.FusableStep`: eager, as in-place operations on the
band's buffers, or fused, as plain math compiled into one loop on CPU.

A band loop runs all of its steps in one form, on inputs already in the compute dtype
(:func:`~.polapp_linear.compute_dtype`; one cast of a band serves both steps that read
it). The maps step writes its maps into the buffers (the eager form also the scratch maps
that its gradient step reads back); the gradient step of the fused form recomputes what
it needs from the input instead.

Both forms compute, for ``x`` (q or k, (B, h, n, d)) and temperatures ``mid``, ``half``
(1, h, 1, d) of a block, ``e = exp(|x| mid + x half)`` (keys: ``exp(|x|)``) and
``relu(u)``, ``relu(-u)`` of ``u = sign(x) (e - 1)``: ``e - 1`` where x > 0 and where
x < 0, i.e. ``exp(x s+) - 1`` and ``exp(-x s-) - 1`` with ``s+ = mid + half`` and
``s- = mid - half``. ``exp`` followed by ``- 1``, as the authors compute it (``expm1`` is
several times slower on CPU).
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .cpu_fusion import FusableStep
from .pola_torch import polarity_backward_

KEY_BUFFERS = 3  # exp(|k|), relu(u), relu(-u)
QUERY_BUFFERS = 7  # |q|, e of the row and column blocks, their relu(u) and relu(-u)


def _polarity_maps(x: Tensor, magnitude: Tensor, mid: Optional[Tensor],
                   half: Optional[Tensor], exp_out: Tensor, pos_out: Tensor,
                   neg_out: Tensor) -> None:
    """``e`` into ``exp_out``, ``relu(u)`` into ``pos_out``, ``relu(-u)`` into
    ``neg_out`` (no temperatures: ``mid`` and ``half`` None); ``magnitude`` is ``|x|``."""
    if mid is None:
        torch.exp(magnitude, out=exp_out)
    else:
        torch.mul(x, half, out=exp_out).addcmul_(magnitude, mid).exp_()
    excess = torch.sub(exp_out, 1, out=neg_out)
    torch.ops.aten.threshold_backward.grad_input(excess, x, 0, grad_input=pos_out)
    excess.sub_(pos_out)


def _split(x: Tensor, excess: Tensor) -> Tuple[Tensor, Tensor]:
    """``excess`` where x > 0 and where x < 0 (zero elsewhere)."""
    return torch.where(x > 0, excess, 0.), torch.where(x < 0, excess, 0.)


def _key_maps_eager(k: Tensor, buffers: List[Tensor]) -> None:
    """``relu(u)`` and ``relu(-u)`` of the keys k (B, h, n, d) into buffers 1 and 2 of the
    ``KEY_BUFFERS`` (B, h, n, d) buffers."""
    exp, pos, neg = buffers
    _polarity_maps(k, torch.abs(k, out=neg), None, None, exp, pos, neg)


def _key_maps_fused(k: Tensor, buffers: List[Tensor]) -> None:
    _, pos, neg = buffers
    for out, part in zip((pos, neg), _split(k, torch.exp(k.abs()) - 1)):
        out.copy_(part)


key_maps = FusableStep(_key_maps_eager, _key_maps_fused)


def _key_grad_eager(k: Tensor, buffers: List[Tensor], grad_pos: Tensor, grad_neg: Tensor,
                    grad_pos_mean: Tensor, grad_neg_mean: Tensor, out: Tensor) -> None:
    """Into ``out`` (B, h, n, d) the gradient reaching k from those of ``relu(u)`` and
    ``relu(-u)`` (``grad_pos``, ``grad_neg``: overwritten by the eager form) and of their
    means over the tokens (``grad_*_mean`` (B, h, 1, d), already divided by the token count);
    ``buffers`` as :data:`key_maps` left them."""
    exp, pos, neg = buffers
    grad_pos.add_(grad_pos_mean)
    grad_neg.add_(grad_neg_mean)
    torch.mul(polarity_backward_(grad_pos, grad_neg, pos, neg), exp, out=out)  # du/dk = e


def _key_grad_fused(k: Tensor, buffers: List[Tensor], grad_pos: Tensor, grad_neg: Tensor,
                    grad_pos_mean: Tensor, grad_neg_mean: Tensor, out: Tensor) -> None:
    grad_excess = torch.where(k > 0, grad_pos + grad_pos_mean,
                              torch.where(k < 0, grad_neg + grad_neg_mean, 0.))
    out.copy_(grad_excess * torch.exp(k.abs()) * torch.sign(k))


key_grad = FusableStep(_key_grad_eager, _key_grad_fused)


def _query_maps_eager(q: Tensor, temperatures: List[Tensor], buffers: List[Tensor]) -> None:
    """With ``temperatures`` [mid, half] of the row block, then of the column block
    ((1, h, 1, d) each): ``relu(u)`` and ``relu(-u)`` of the row block, then of the column
    block, of the queries q (B, h, n, d) into buffers 3 to 6 of the ``QUERY_BUFFERS``."""
    magnitude, exps, maps = buffers[0], buffers[1:3], buffers[3:]
    torch.abs(q, out=magnitude)
    for block, exp in enumerate(exps):
        mid, half = temperatures[2 * block:2 * block + 2]
        _polarity_maps(q, magnitude, mid, half, exp, *maps[2 * block:2 * block + 2])


def _query_maps_fused(q: Tensor, temperatures: List[Tensor], buffers: List[Tensor]) -> None:
    maps = buffers[3:]
    for block in range(2):
        mid, half = temperatures[2 * block:2 * block + 2]
        parts = _split(q, torch.exp(q.abs() * mid + q * half) - 1)
        for out, part in zip(maps[2 * block:2 * block + 2], parts):
            out.copy_(part)


query_maps = FusableStep(_query_maps_eager, _query_maps_fused)


def _query_grad_eager(q: Tensor, temperatures: List[Tensor], buffers: List[Tensor],
                      grads: List[Tensor], out: Tensor) -> List[Tensor]:
    """The gradients (B, h, d) of the four temperatures, summed over the tokens; into
    ``out`` (B, h, n, d) the
    gradient reaching q from those of the four maps of :data:`query_maps` (``grads``, in its
    order; overwritten by the eager form); ``buffers`` as :data:`query_maps` left them."""
    magnitude, exps, maps = buffers[0], buffers[1:3], buffers[3:]
    by_mid, by_half = maps[:2]  # free once the row block's weighted gradient is formed
    grad_temperatures = []
    for block, exp in enumerate(exps):
        mid, half = temperatures[2 * block:2 * block + 2]
        pos, neg = maps[2 * block:2 * block + 2]
        grad_pos, grad_neg = grads[2 * block:2 * block + 2]
        # d(signed) -> d(exp) = d(signed) sign(q) -> d(argument) = that * exp; with
        # sign(q)^2 = 1, weighted = d(signed) * exp gives dq = weighted (mid +
        # sign(q) half), d mid = sum weighted q, d half = sum weighted |q|
        weighted = polarity_backward_(grad_pos, grad_neg, pos, neg).mul_(exp)
        grad_temperatures += [torch.linalg.vecdot(weighted, q, dim=2),
                              torch.linalg.vecdot(weighted, magnitude, dim=2)]
        if block:
            by_mid.addcmul_(weighted, mid)
            by_half.addcmul_(weighted, half)
        else:
            torch.mul(weighted, mid, out=by_mid)
            torch.mul(weighted, half, out=by_half)
    torch.addcmul(by_mid, by_half, torch.sign(q, out=magnitude), out=out)
    return grad_temperatures


def _query_grad_fused(q: Tensor, temperatures: List[Tensor], buffers: List[Tensor],
                      grads: List[Tensor], out: Tensor) -> List[Tensor]:
    magnitude, sign = q.abs(), torch.sign(q)
    grad_q, grad_temperatures = torch.zeros_like(q), []
    for block in range(2):
        mid, half = temperatures[2 * block:2 * block + 2]
        grad_pos, grad_neg = grads[2 * block:2 * block + 2]
        # argument |q| mid + q half: d/dq = sign(q) mid + half, d/dmid = |q|, d/dhalf = q
        grad_argument = torch.where(q > 0, grad_pos, torch.where(q < 0, grad_neg, 0.)) \
            * torch.exp(magnitude * mid + q * half)
        grad_q = grad_q + grad_argument * (sign * mid + half)
        grad_temperatures += [(grad_argument * magnitude).sum(-2),
                              (grad_argument * q).sum(-2)]
    out.copy_(grad_q)
    return grad_temperatures


query_grad = FusableStep(_query_grad_eager, _query_grad_fused)
