"""Lean PyTorch implementation of the polarity-aware linear attention core.

The plain form materialises four polarity maps, two concatenated (B, h, L, 2d) query maps
and two ``K^T V`` products. Here no 2d-wide map exists at all; the same result comes from
one ``(B, h, L, d)`` signed power per input and products with small (d, *) matrices:

* ``relu(x)^p`` and ``relu(-x)^p`` have disjoint supports, so with the signed power
  ``s = sign(x) |x|^p`` they are ``relu(s)`` and ``relu(-s)``: two clamps of one tensor.
* The keys enter only through ``k+^T v``, ``k-^T v`` (d, d) and the means of ``k+`` and
  ``k-`` (d,): the key state ``[k+, k-]^T [v, 1] / n`` (2d, d + 1), :class:`KeyStatistics`.
* ``q_opp = [q-, q+]`` is a channel permutation of ``q_sim = [q+, q-]``, so both streams
  and both normalisers are the d + 2 columns of ``q+ @ W_top + q- @ W_bot`` for two
  (d, d + 2) matrices, a re-arrangement of the key state (:class:`MixingMatrix`), applied
  and normalised by :class:`QueryOutput`.
* Dividing q and k by a per-channel ``scale`` before the maps multiplies channel i of both
  maps by ``scale_i^-p_i``, i.e. row i of the small matrices by ``scale_i^-2p_i``; so the
  division never touches the (B, h, L, d) tensors.

The two autograd Functions over the (B, h, L, d) maps keep for backward only their inputs
(views, no copy), the small matrices and the output with its normalisers; ``s`` is
recomputed (one power, cheaper on CPU than the allocation of keeping it). The small step
between them, key state to mixing matrices, is a third Function of two concatenations each
way. Every product takes non-negative features times one matrix, so nothing cancels.
Matrix products run per batch item over the heads (:func:`_bmm`), so inputs whose heads
are interleaved in memory (heads split off a (B, L, h*d) projection) are read in place;
the large temporaries and the gradients follow the inputs' memory order, and the output is
laid out as (B, N, h, d), so neither merging the heads of the output nor autograd's
backward through the head split costs a copy.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .eager import running_eagerly


def check_polarity_inputs(q: Tensor, k: Tensor, v: Tensor, power: Tensor,
                          scale: Optional[Tensor] = None,
                          alpha: Optional[float] = None) -> None:
    """Raise ValueError unless q (B, h, N, d), k and v (B, h, n, d), d even, power (and
    scale, if given) broadcast to (1, h, 1, d), and scale is given where ``alpha`` is
    (:func:`activate_parameters`)."""
    if alpha is not None and scale is None:
        raise ValueError('alpha is given, so power and scale are parameters before their '
                         'activations; scale is missing')
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
    for name, param in (('power', power), ('scale', scale)):
        if param is not None and (
                param.dim() != 4 or param.shape[0] != 1 or param.shape[2] != 1 or
                param.shape[1] not in (1, heads) or param.shape[3] not in (1, dims)):
            raise ValueError(f'{name} must broadcast as (1, {heads}, 1, {dims}), '
                             f'got {tuple(param.shape)}')


def check_positive_parameters(power: Tensor, scale: Optional[Tensor] = None) -> None:
    """Raise ValueError unless the exponents and divisors (``scale``, if given) are all
    positive; only when running eagerly (it reads their values on the host, a device
    sync), so the callers that pass them as they are check them, not the layers, which
    pass their parameters before the activations."""
    if not running_eagerly():
        return
    for name, param in (('power', power), ('scale', scale)):
        if param is not None and not (param > 0).all():
            raise ValueError(f'{name} must be positive (without alpha it is the exponents or '
                             f'divisors themselves), got a minimum of {param.min().item():.4g}')


def activate_parameters(power: Tensor, scale: Optional[Tensor],
                        alpha: Optional[float]) -> Tuple[Tensor, Optional[Tensor]]:
    """The exponents and divisors of the core from the Pola layers' parameters: where
    ``alpha`` is given, ``(1 + alpha * sigmoid(power), softplus(scale))``; else ``power``
    and ``scale`` are already those and are returned as they are."""
    if alpha is None:
        return power, scale
    return 1 + alpha * torch.sigmoid(power), F.softplus(scale)


def empty_in_memory_order(like: Tensor, last_dim: Optional[int] = None,
                          dtype: torch.dtype = torch.float32) -> Tensor:
    """An empty ``dtype`` tensor of ``like``'s shape (last dim ``last_dim`` if given) whose
    memory order follows ``like``'s strides: a (B, h, L, d) view of (B, L, h, d) memory
    gives the same, a contiguous tensor a contiguous one. Elementwise work then runs on
    one layout (mixed layouts are several times slower), and autograd's view backward of
    an input whose heads are interleaved needs no copy."""
    shape = list(like.shape)
    if last_dim is not None:
        shape[-1] = last_dim
    order = sorted(range(like.dim()), key=lambda dim: -like.stride(dim))
    memory = like.new_empty([shape[dim] for dim in order], dtype=dtype)
    return memory.permute([order.index(dim) for dim in range(like.dim())])


def _bmm(a: Tensor, b: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """(B, h, m, k) @ (B, h, k, n) -> (B, h, m, n) as one ``bmm`` over the heads per batch
    item: unlike 4-D ``matmul`` this reads and writes (``out``) operands with interleaved
    heads in place."""
    if out is None:
        out = a.new_empty(a.shape[0], a.shape[1], a.shape[2], b.shape[3])
    for item in range(a.shape[0]):
        torch.bmm(a[item], b[item], out=out[item])
    return out


def _add_bmm_(out: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``out += a @ b`` in place, batched as :func:`_bmm`."""
    for item in range(a.shape[0]):
        out[item].baddbmm_(a[item], b[item])
    return out


def _neg_part(signed: Tensor, out: Optional[Tensor] = None) -> Tensor:
    """``relu(-s)`` (into ``out`` if given)."""
    return torch.neg(signed, out=out).clamp_(min=0)


def polarity_backward_(grad_pos: Tensor, grad_neg: Tensor, signed: Tensor,
                       neg_part: Tensor) -> Tensor:
    """Gradient reaching ``s`` from ``relu(s)`` (``grad_pos``) and ``relu(-s)``
    (``grad_neg``), each where its relu passes, written into ``grad_pos``; ``signed`` may
    be ``s`` or ``relu(s)`` (the same test, > 0), ``neg_part`` is ``relu(-s)``.

    relu's own adjoint (``threshold_backward``) rather than ``torch.where``, which is
    several times slower on CPU."""
    threshold_backward = torch.ops.aten.threshold_backward.grad_input
    threshold_backward(grad_pos, signed, 0, grad_input=grad_pos)
    threshold_backward(grad_neg, neg_part, 0, grad_input=grad_neg)
    return grad_pos.sub_(grad_neg)


def signed_power(x: Tensor, power: Tensor) -> Tensor:
    """``s = sign(x) |x|^p`` (B, h, L, d) in float32, in x's memory order: both polarity maps
    in one tensor, ``relu(x)^p = relu(s)`` and ``relu(-x)^p = relu(-s)``.

    ``|x|^p`` is computed as ``exp(p log|x|)`` (0 at x = 0 for p > 0): on CPU ``pow`` with a
    tensor exponent is several times slower than ``log``, ``mul`` and ``exp`` together; the
    result is within a few 1e-6 relative of ``pow``'s (float32 rounding of ``p log|x|``)."""
    x = x.float()
    return x.abs().log_().mul_(power).exp_().copysign_(x)


def signed_power_backward_(x: Tensor, signed: Tensor, power: Tensor,
                           grad_signed: Tensor) -> Tuple[Tensor, Tensor]:
    """Vector-Jacobian product of ``s = signed_power(x, p)``, computed in the buffers of
    ``signed`` and ``grad_signed`` (both overwritten).

    ``ds/dx = p |x|^(p - 1) = p s / x`` and ``ds/dp = s log|x|``, so no power is needed;
    with ``t = grad * s``: ``dx = t p / x`` (0 at x = 0, as the kernels give; a NaN or inf
    of the incoming gradient elsewhere is kept) and ``dp = sum t log|x|``.

    Returns:
        tuple: ``grad_x`` (float32, in ``grad_signed``'s buffer) and ``grad_power`` summed
        over batch and tokens, (1, h, 1, d) (``power``'s broadcast shape is restored by
        the caller).
    """
    x = x.float()
    weighted = grad_signed.mul_(signed)
    log_magnitude = torch.abs(x, out=signed).clamp_min_(torch.finfo(x.dtype).tiny).log_()
    grad_power = log_magnitude.mul_(weighted).sum(dim=(0, 2), keepdim=True)
    grad_x = weighted.mul_(power).div_(x).masked_fill_(x == 0, 0.)
    return grad_x, grad_power


def _restore_power_grad(grad_power: Tensor, power: Tensor) -> Tensor:
    return grad_power.sum_to_size(power.shape).to(power.dtype)


class KeyStatistics(torch.autograd.Function):
    """(k, v, power) -> the key state (B, h, 2d, d + 1) in float32::

        [[k+^T v / n, mean(k+)^T],
         [k-^T v / n, mean(k-)^T]]  =  [k+, k-]^T [v, 1] / n

    with ``k+ = relu(s)``, ``k- = relu(-s)``, ``s = signed_power(k, p)``."""

    @staticmethod
    def forward(ctx, k: Tensor, v: Tensor, power: Tensor):
        batch, heads, num_keys, dims = k.shape
        signed = signed_power(k, power.float())
        v32 = v.float()
        state = signed.new_empty(batch, heads, 2 * dims, dims + 1)
        part = signed.clamp(min=0)
        _bmm(part.transpose(-2, -1), v32, out=state[..., :dims, :dims])
        torch.mean(part, dim=-2, out=state[..., :dims, dims])
        part = _neg_part(signed, out=part)
        _bmm(part.transpose(-2, -1), v32, out=state[..., dims:, :dims])
        torch.mean(part, dim=-2, out=state[..., dims:, dims])
        state[..., :dims].div_(num_keys)
        ctx.save_for_backward(k, v, power)
        return state

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_state):
        k, v, power = ctx.saved_tensors
        power32 = power.float()
        signed = signed_power(k, power32)  # recomputed: cheaper than keeping it
        dims = k.shape[-1]
        grad_state = grad_state / k.shape[-2]
        grad_pos_v, grad_neg_v = grad_state[..., :dims, :dims], grad_state[..., dims:, :dims]
        v32 = v.float()
        part = signed.clamp(min=0)
        grad_v = None
        if ctx.needs_input_grad[1]:
            grad_v = _bmm(part, grad_pos_v, out=empty_in_memory_order(v))
        neg_part = _neg_part(signed, out=part)
        if grad_v is not None:
            grad_v = _add_bmm_(grad_v, neg_part, grad_neg_v).to(v.dtype)
        grad_k = grad_power = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[2]:
            grad_pos = _bmm(v32, grad_pos_v.transpose(-2, -1), out=empty_in_memory_order(signed))
            grad_pos.add_(grad_state[..., :dims, dims].unsqueeze(-2))  # the mean's share
            grad_neg = _bmm(v32, grad_neg_v.transpose(-2, -1), out=empty_in_memory_order(signed))
            grad_neg.add_(grad_state[..., dims:, dims].unsqueeze(-2))
            grad_signed = polarity_backward_(grad_pos, grad_neg, signed, neg_part)
            del grad_neg, neg_part, part
            grad_k, grad_power = signed_power_backward_(k, signed, power32, grad_signed)
            grad_k = grad_k.to(k.dtype)
            grad_power = _restore_power_grad(grad_power, power)
        return grad_k, grad_v, grad_power


def _swap_polarities(t: Tensor) -> Tensor:
    """(B, h, 2d, c) -> the same with its two halves of rows (k+ and k-) exchanged."""
    dims = t.shape[-2] // 2
    return torch.cat([t[..., dims:, :], t[..., :dims, :]], dim=-2)


def _row_weight_column(row_weight: Tensor) -> Tensor:
    """(1, h, 1, d) -> (1, h, 1, d, 1): broadcasts over W viewed as (B, h, 2, d, d + 2)."""
    return row_weight.transpose(-2, -1).unsqueeze(2)


class MixingMatrix(torch.autograd.Function):
    """(key state S (B, h, 2d, d + 1), row weight (1, h, 1, d) or None) -> the stacked
    mixing matrices ``W = [W_top; W_bot]`` (B, h, 2d, d + 2), contiguous. With
    ``S = [[P, m+], [M, m-]]`` (:class:`KeyStatistics`) and d/2 = half the value channels
    (sim stream: first half, opp stream: second half)::

        W_top = [P[:, :d/2], M[:, d/2:], m+, m-]   # multiplies q+
        W_bot = [M[:, :d/2], P[:, d/2:], m-, m+]   # multiplies q-

    i.e. ``W = [S[:, :d/2], S'[:, d/2:d], S[:, d], S'[:, d]]`` with S' = S with its halves
    of rows exchanged; row i of both halves times ``row_weight[i]``. Each direction is two
    concatenations (and the weighting): a handful of small kernels where slicing and
    concatenating under autograd take dozens."""

    @staticmethod
    def forward(ctx, state: Tensor, row_weight: Optional[Tensor]) -> Tensor:
        batch, heads, rows, cols = state.shape
        dims = cols - 1
        swapped = _swap_polarities(state)
        mixing = torch.cat([state[..., :dims // 2], swapped[..., dims // 2:dims],
                            state[..., dims:], swapped[..., dims:]], dim=-1)
        ctx.save_for_backward(mixing if ctx.needs_input_grad[1] else None, row_weight)
        if row_weight is None:
            return mixing
        mixing = mixing.view(batch, heads, 2, dims, dims + 2) * _row_weight_column(row_weight)
        return mixing.view(batch, heads, rows, dims + 2)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        unweighted, row_weight = ctx.saved_tensors
        batch, heads, rows, cols = grad.shape
        dims = rows // 2
        grad5 = grad.reshape(batch, heads, 2, dims, cols)
        grad_state = grad_row_weight = None
        if ctx.needs_input_grad[0]:
            if row_weight is not None:
                grad = (grad5 * _row_weight_column(row_weight)).view(batch, heads, rows, cols)
            swapped = _swap_polarities(grad)
            grad_state = torch.cat([grad[..., :dims // 2], swapped[..., dims // 2:dims],
                                    grad[..., dims:dims + 1] + swapped[..., dims + 1:]], dim=-1)
        if ctx.needs_input_grad[1]:
            grad_row_weight = (grad5 * unweighted.view_as(grad5)).sum_to_size(
                _row_weight_column(row_weight).shape).view(row_weight.shape)
        return grad_state, grad_row_weight


def mixing_matrix(state: Tensor, row_weight: Optional[Tensor] = None) -> Tensor:
    """:class:`MixingMatrix`: the key state (B, h, 2d, d + 1) -> ``[W_top; W_bot]``
    (B, h, 2d, d + 2), rows i and d + i times ``row_weight[i]`` (1, h, 1, d) if given."""
    return MixingMatrix.apply(state, row_weight)


class QueryOutput(torch.autograd.Function):
    """(q, power, ``[W_top; W_bot]`` (B, h, 2d, d + 2)) -> the normalised output
    (B, h, N, d), float32, laid out as (B, N, h, d) in memory."""

    @staticmethod
    def forward(ctx, q: Tensor, power: Tensor, mixing: Tensor, eps: float):
        batch, heads, num_queries, dims = q.shape
        top, bottom = mixing[..., :dims, :], mixing[..., dims:, :]
        signed = signed_power(q, power.float())
        part = signed.clamp(min=0)
        mixed = _bmm(part, top, out=empty_in_memory_order(signed, dims + 2))  # (B,h,N,d+2)
        mixed = _add_bmm_(mixed, _neg_part(signed, out=part), bottom)
        del part, signed
        inv_norm = mixed[..., dims:].add(eps).reciprocal_().unsqueeze(-1)  # (B, h, N, 2, 1)
        out = mixed.new_empty(batch, num_queries, heads, dims).transpose(1, 2)
        torch.mul(mixed[..., :dims].unflatten(-1, (2, dims // 2)), inv_norm,
                  out=out.unflatten(-1, (2, dims // 2)))
        ctx.save_for_backward(q, power, mixing, out, inv_norm)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        q, power, mixing, out, inv_norm = ctx.saved_tensors
        power32 = power.float()
        signed = signed_power(q, power32)  # recomputed: cheaper than keeping it
        dims = q.shape[-1]
        top, bottom = mixing[..., :dims, :], mixing[..., dims:, :]
        streams = (2, dims // 2)
        grad_out = grad_out.float().unflatten(-1, streams)
        grad_mixed = empty_in_memory_order(signed, dims + 2)
        torch.mul(grad_out, inv_norm, out=grad_mixed[..., :dims].unflatten(-1, streams))
        torch.mul((grad_out * out.unflatten(-1, streams)).sum(-1), inv_norm.squeeze(-1),
                  out=grad_mixed[..., dims:]).neg_()
        del grad_out
        part = signed.clamp(min=0)
        grad_mixing = torch.empty_like(mixing)
        _bmm(part.transpose(-2, -1), grad_mixed, out=grad_mixing[..., :dims, :])
        neg_part = _neg_part(signed, out=part)
        _bmm(neg_part.transpose(-2, -1), grad_mixed, out=grad_mixing[..., dims:, :])
        grad_q = grad_power = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            grad_pos = _bmm(grad_mixed, top.transpose(-2, -1),
                            out=empty_in_memory_order(signed))
            grad_neg = _bmm(grad_mixed, bottom.transpose(-2, -1),
                            out=empty_in_memory_order(signed))
            del grad_mixed
            grad_signed = polarity_backward_(grad_pos, grad_neg, signed, neg_part)
            del grad_neg, neg_part, part
            grad_q, grad_power = signed_power_backward_(q, signed, power32, grad_signed)
            grad_q = grad_q.to(q.dtype)
            grad_power = _restore_power_grad(grad_power, power)
        return grad_q, grad_power, grad_mixing, None


def scale_row_weight(power: Tensor, scale: Optional[Tensor]) -> Optional[Tensor]:
    """``scale^-2p`` (1, h, 1, d): dividing q and k by ``scale`` scales channel i of both
    polarity maps by ``scale_i^-p_i``. Written as ``exp(-2p log scale)``: its backward is
    a third of the small kernels of ``pow(scale, -2p)``'s."""
    return None if scale is None else torch.exp(scale.float().log() * (-2 * power.float()))


def polarity_linear_attention_torch(q: Tensor, k: Tensor, v: Tensor, power: Tensor,
                                    eps: float = 1e-6, scale: Optional[Tensor] = None) -> Tensor:
    """Lean PyTorch polarity-aware linear attention; same contract as
    :func:`pola_mm.ops.polarity_attention.polarity_linear_attention`.

    Args:
        q (Tensor): (B, h, N, d) queries.
        k (Tensor): (B, h, n, d) keys.
        v (Tensor): (B, h, n, d) values, d even.
        power (Tensor): (1, h, 1, d) exponents (>= 1).
        eps (float): normaliser epsilon.
        scale (Tensor, optional): (1, h, 1, d) positive divisor of q and k.

    Returns:
        Tensor: (B, h, N, d) in q's dtype (laid out as (B, N, h, d)), computed in float32
        with autocast off.
    """
    check_polarity_inputs(q, k, v, power, scale)
    with torch.autocast(device_type=q.device.type, enabled=False):
        mixing = mixing_matrix(KeyStatistics.apply(k, v, power), scale_row_weight(power, scale))
        return QueryOutput.apply(q, power, mixing, eps).to(q.dtype)
