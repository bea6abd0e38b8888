"""The polarity-aware linear attention core: its contract, and which implementation runs it.

Two implementations compute the same function: the lean PyTorch path
(:mod:`pola_mm.ops.pola_torch`, any device, any even head dims) and fused Triton kernels
(:mod:`pola_mm.ops.pola_triton`, CUDA, head dims 16/32/64/128). ``impl='auto'`` takes the
kernels wherever they apply and PyTorch elsewhere; a model selects one with its
``attn_impl`` argument. While a model is exported to ONNX, whatever its ``attn_impl``,
the graph records the lean path's forward in plain tensor operations
(:func:`polarity_linear_attention_traceable`). The plain form of the official code is kept
only as the tests' reference (``tests/reference_pola.py``).
"""
from typing import Optional

import torch
from torch import Tensor

from .pola_torch import (check_polarity_inputs, mixing_matrices,
                         polarity_linear_attention_torch, scale_row_weight)

ATTENTION_IMPLS = ('auto', 'torch', 'triton')


def check_attention_impl(impl: str) -> str:
    """Return ``impl`` or raise a ValueError naming the accepted values."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f'attn_impl must be one of {ATTENTION_IMPLS}, got {impl!r}')
    return impl


def _triton_applies(q: Tensor, k: Tensor, v: Tensor) -> bool:
    if not q.is_cuda:
        return False
    try:
        from .pola_triton import triton_supports
    except ImportError:  # a torch build without Triton
        return False
    return all(triton_supports(t) for t in (q, k, v))


def polarity_linear_attention(q: Tensor, k: Tensor, v: Tensor, power: Tensor,
                              eps: float = 1e-6, impl: str = 'auto',
                              scale: Optional[Tensor] = None) -> Tensor:
    """Polarity-aware linear attention of PolaFormer for one set of queries and keys.

    With ``phi_p(x) = relu(x / scale) ** p`` (per head and channel exponent ``p`` and
    divisor ``scale``, 1 if not given):
    ``q+ = phi_p(q)``, ``q- = phi_p(-q)`` (likewise for ``k``), ``K = [k+, k-]``,
    ``q_sim = [q+, q-]`` (same-sign interactions) and ``q_opp = [q-, q+]``
    (opposite-sign interactions). The sim stream attends with the first half of the value
    channels, the opp stream with the second half::

        out_t[i] = sum_j (q_t[i] . K[j]) v_t[j] / (sum_j q_t[i] . K[j] + n * eps)

    which is the official linear form
    ``(q_t @ (K^T / sqrt(n)) @ (v_t / sqrt(n))) / (q_t . mean_j K[j] + eps)``.

    The feature maps and their products are computed in float32 with autocast disabled
    (exponents up to 5 overflow fp16) and the result is cast back to ``q``'s dtype.

    Args:
        q (Tensor): (B, h, N, d) queries.
        k (Tensor): (B, h, n, d) keys (positional encoding added).
        v (Tensor): (B, h, n, d) values; ``d`` must be even.
        power (Tensor): (1, h, 1, d) exponents ``1 + alpha * sigmoid(param)``.
        eps (float): normaliser epsilon (official value 1e-6).
        impl (str): 'auto' (Triton kernels on CUDA where they support the head dims,
            else PyTorch), 'torch' or 'triton'.
        scale (Tensor, optional): (1, h, 1, d) positive divisor of q and k
            (``softplus(scale)`` of the models); the PyTorch path folds it into its small
            matrices instead of dividing the (B, h, L, d) tensors.

    Returns:
        Tensor: (B, h, N, d); channels ``[:d/2]`` come from the sim stream, ``[d/2:]``
        from the opp stream.
    """
    check_attention_impl(impl)
    if torch.onnx.is_in_onnx_export():
        return polarity_linear_attention_traceable(q, k, v, power, eps, scale)
    if impl == 'triton' or (impl == 'auto' and _triton_applies(q, k, v)):
        from .pola_triton import polarity_linear_attention_triton
        if scale is not None:
            q, k = q / scale, k / scale
        return polarity_linear_attention_triton(q, k, v, power, eps)
    return polarity_linear_attention_torch(q, k, v, power, eps, scale)


def polarity_linear_attention_traceable(q: Tensor, k: Tensor, v: Tensor, power: Tensor,
                                        eps: float = 1e-6,
                                        scale: Optional[Tensor] = None) -> Tensor:
    """The lean path's forward (:mod:`.pola_torch`'s signed powers and mixing matrices) in
    plain tensor operations, for inference graphs exported to ONNX.

    The lean path runs as custom autograd Functions with per-batch-item products, and its
    ``sign(x) |x|^p`` is a ``copysign``, which has no ONNX operator; here the products are
    4-D ``matmul`` and the signed power is ``|x|^p * sign(x)`` (the same value: both vanish
    at 0). Same arguments and result as :func:`polarity_linear_attention`, computed in
    float32.
    """
    check_polarity_inputs(q, k, v, power, scale)
    power = power.float()

    def signed_power(x: Tensor) -> Tensor:
        x = x.float()
        return x.abs().pow(power) * x.sign()

    keys = signed_power(k)
    pos_keys, neg_keys = keys.clamp(min=0), keys.neg().clamp(min=0)
    values = v.float() / k.shape[-2]
    top, bottom = mixing_matrices(
        pos_keys.transpose(-2, -1) @ values, neg_keys.transpose(-2, -1) @ values,
        pos_keys.mean(dim=-2, keepdim=True), neg_keys.mean(dim=-2, keepdim=True),
        scale_row_weight(power, scale))
    queries = signed_power(q)
    mixed = queries.clamp(min=0) @ top + queries.neg().clamp(min=0) @ bottom  # (B,h,N,d+2)
    dims = q.shape[-1]
    out = mixed[..., :dims].unflatten(-1, (2, dims // 2)) / (
        mixed[..., dims:] + eps).unsqueeze(-1)
    return out.flatten(-2).to(q.dtype)
