"""The polarity-aware linear attention core: its contract, and which implementation runs it.

Three implementations compute the same function: the lean PyTorch path
(:mod:`pola_mm.ops.pola_torch`, any device, any even head dims), fused Triton kernels
(:mod:`pola_mm.ops.pola_triton`, CUDA, the head dims of
:data:`~pola_mm.ops.triton_compile.SUPPORTED_HEAD_DIMS`) and the plain official math
(:mod:`pola_mm.ops.pola_reference`, for reference and comparison only). A model selects one
with its ``attn_impl`` argument:

* ``'auto'`` takes the kernels for inputs on an NVIDIA GPU of compute capability 8.0 or
  later with supported head dims, and PyTorch elsewhere. The first call for each
  (device, head dims, dtypes, precision) runs the kernels inside a guard, forward and
  (on its first backward) backward: if they raise (no C compiler for Triton's launcher,
  a GPU without the resources a kernel needs, ...) one warning names the error and
  ``attn_impl='torch'``, that call's result (or gradients) comes from the PyTorch path, and
  so does every later call for that configuration.
* ``'triton'`` always runs the kernels and re-raises their errors, naming
  ``attn_impl='torch'``; ``'torch'`` and ``'reference'`` always run their path.

While a model is exported to ONNX, whatever its ``attn_impl``, the graph records the lean
path's forward in plain tensor operations (:func:`polarity_linear_attention_traceable`).
"""
import warnings
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from .pola_reference import plain_polarity_attention
from .pola_torch import (activate_parameters, check_polarity_inputs, check_positive_parameters,
                         mixing_matrix, polarity_linear_attention_torch, scale_row_weight)
from .triton_compile import KERNEL_DTYPES, SUPPORTED_HEAD_DIMS, kernel_precision

ATTENTION_IMPLS = ('auto', 'torch', 'triton', 'reference')
#: (device, head dims, q/k/v dtypes, precision) -> 'forward' (its forward ran),
#: 'verified' (its backward too) or 'failed' (the PyTorch path runs it from then on).
_KERNEL_STATUS: Dict[Tuple, str] = {}


def check_attention_impl(impl: str) -> str:
    """Return ``impl`` or raise a ValueError naming the accepted values."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f'attn_impl must be one of {ATTENTION_IMPLS}, got {impl!r}')
    return impl


def _on_checked_gpu(t: Tensor) -> bool:
    """Whether ``t`` lives on an NVIDIA GPU of an architecture the compile check covers
    (compute capability 8.0 or later)."""
    return (t.is_cuda and torch.version.hip is None and
            torch.cuda.get_device_capability(t.device)[0] >= 8)


def _kernels_apply(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether ``'auto'`` takes the Triton kernels for these inputs."""
    if not _on_checked_gpu(q) or q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        return False
    if any(t.dtype not in KERNEL_DTYPES for t in (q, k, v)):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:  # a torch build without Triton
        return False
    return True


class _KernelGuard:
    """Outcome of the kernels for one configuration ``key``: records successes, and turns
    a failure into one warning and the PyTorch path (``fallback``) or into an error that
    names ``attn_impl='torch'``."""

    def __init__(self, key: Tuple, fallback: bool):
        self.key = key
        self.fallback = fallback

    def _describe(self) -> str:
        device, dims, dtypes, precision = self.key
        return (f'on {device} (head dims {dims}, q/k/v {"/".join(dtypes)}, '
                f'{precision} products)')

    def failed(self, error: Exception, stage: str) -> None:
        """Raise, or (``fallback``) warn once and mark the configuration failed."""
        if isinstance(error, torch.cuda.OutOfMemoryError):
            raise error  # memory is short for any path: not a reason to switch
        message = (f'the fused Triton kernels failed in {stage} {self._describe()}: '
                   f'{type(error).__name__}: {error}')
        if not self.fallback:
            raise RuntimeError(f"{message}\nattn_impl='torch' runs the PyTorch path "
                               'instead') from error
        _KERNEL_STATUS[self.key] = 'failed'
        warnings.warn(f"{message}\nFalling back to attn_impl='torch' (the PyTorch path) for "
                      "this configuration; set attn_impl='torch' to choose it from the start.",
                      RuntimeWarning, stacklevel=4)

    def passed(self, stage: str) -> None:
        if _KERNEL_STATUS.get(self.key) != 'failed':
            _KERNEL_STATUS[self.key] = 'verified' if stage == 'backward' else 'forward'


def _run_triton(q: Tensor, k: Tensor, v: Tensor, power: Tensor, eps: float,
                scale: Optional[Tensor], alpha: Optional[float],
                fallback: bool) -> Optional[Tensor]:
    """The kernels' result, or None where ``fallback`` and the configuration has failed
    (now or before): the caller then runs the PyTorch path."""
    key = (str(q.device), q.shape[-1], tuple(str(t.dtype).replace('torch.', '')
                                             for t in (q, k, v)), kernel_precision(q.device))
    status = _KERNEL_STATUS.get(key)
    if fallback and status == 'failed':
        return None
    guard = _KernelGuard(key, fallback)
    if status in ('forward', 'verified'):  # its forward has run: at most backward unproven
        from .pola_triton import polarity_linear_attention_triton
        return polarity_linear_attention_triton(q, k, v, power, eps, scale=scale, alpha=alpha,
                                                guard=guard if status == 'forward' else None)
    try:  # importing the kernels (Triton itself) can fail too
        from .pola_triton import polarity_linear_attention_triton
        out = polarity_linear_attention_triton(q, k, v, power, eps, scale=scale, alpha=alpha,
                                               guard=guard)
    except Exception as error:  # noqa: BLE001 (any kernel failure, see _KernelGuard)
        guard.failed(error, 'forward')
        return None
    guard.passed('forward')
    return out


def polarity_linear_attention(q: Tensor, k: Tensor, v: Tensor, power: Tensor,
                              eps: float = 1e-6, impl: str = 'auto',
                              scale: Optional[Tensor] = None,
                              alpha: Optional[float] = None) -> Tensor:
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
        power (Tensor): (1, h, 1, d) exponents (``1 + alpha * sigmoid(param)`` in the
            models), or with ``alpha`` the parameter ``param`` itself. Without ``alpha``,
            the exponents and ``scale`` must be positive (checked, which reads them on the
            host).
        eps (float): normaliser epsilon (official value 1e-6).
        impl (str): 'auto' (Triton kernels on CUDA where they support the head dims and
            pass their first call, else PyTorch), 'torch', 'triton' or 'reference' (the
            plain official math: slow, for comparison).
        scale (Tensor, optional): (1, h, 1, d) positive divisor of q and k
            (``softplus(scale)`` of the models); the PyTorch path and the kernels fold it
            into their small matrices instead of dividing the (B, h, L, d) tensors.
        alpha (float, optional): if given, ``power`` and ``scale`` (then required) are the
            models' parameters before their activations: the exponents are
            ``1 + alpha * sigmoid(power)`` and the divisor ``softplus(scale)``. The Triton
            kernels compute both (and their derivatives) themselves, which saves the
            launches of the activations and of their backward; the other paths apply
            them first (:func:`~pola_mm.ops.pola_torch.activate_parameters`).

    Returns:
        Tensor: (B, h, N, d) of ``q``'s dtype; channels ``[:d/2]`` come from the sim
        stream, ``[d/2:]`` from the opp stream.
    """
    check_attention_impl(impl)
    check_polarity_inputs(q, k, v, power, scale, alpha)  # bad input is no kernel failure
    if alpha is None:
        check_positive_parameters(power, scale)
    if torch.onnx.is_in_onnx_export():
        power, scale = activate_parameters(power, scale, alpha)
        return polarity_linear_attention_traceable(q, k, v, power, eps, scale)
    if impl == 'triton' or (impl == 'auto' and _kernels_apply(q, k, v)):
        out = _run_triton(q, k, v, power, eps, scale, alpha, fallback=impl == 'auto')
        if out is not None:
            return out
    power, scale = activate_parameters(power, scale, alpha)
    if impl == 'reference':
        dtype = q.dtype
        if scale is not None:
            q, k = q / scale, k / scale
        return plain_polarity_attention(q, k, v, power, eps).to(dtype)
    return polarity_linear_attention_torch(q, k, v, power, eps, scale)


def polarity_linear_attention_traceable(q: Tensor, k: Tensor, v: Tensor, power: Tensor,
                                        eps: float = 1e-6,
                                        scale: Optional[Tensor] = None) -> Tensor:
    """The lean path's forward (:mod:`.pola_torch`'s signed powers and mixing matrices) in
    plain tensor operations, for inference graphs exported to ONNX.

    The lean path runs as custom autograd Functions with per-batch-item products, and its
    ``sign(x) |x|^p`` is a ``copysign``, which has no ONNX operator; here the products are
    4-D ``matmul`` and the signed power is ``|x|^p * sign(x)`` (the same value: both vanish
    at 0). Every operation exports to ONNX opset 11, which MMDeploy's configs use with the
    TorchScript exporter: the split of the d output channels between the two streams is a
    ``reshape`` (that exporter needs opset 13 for ``unflatten``). Same arguments and result
    as :func:`polarity_linear_attention`, computed in float32.
    """
    check_polarity_inputs(q, k, v, power, scale)
    power = power.float()

    def signed_power(x: Tensor) -> Tensor:
        x = x.float()
        return x.abs().pow(power) * x.sign()

    keys = signed_power(k)
    features = torch.cat([keys.clamp(min=0), keys.neg().clamp(min=0)], dim=-1)  # (B,h,n,2d)
    values = torch.cat([v.float(), torch.ones_like(keys[..., :1])], dim=-1) / k.shape[-2]
    mixing = mixing_matrix(features.transpose(-2, -1) @ values,  # key state (B,h,2d,d+1)
                           scale_row_weight(power, scale))
    dims = q.shape[-1]
    queries = signed_power(q)
    mixed = (queries.clamp(min=0) @ mixing[..., :dims, :] +
             queries.neg().clamp(min=0) @ mixing[..., dims:, :])  # (B, h, N, d + 2)
    streams = mixed[..., :dims].reshape(*mixed.shape[:-1], 2, dims // 2)  # (B,h,N,2,d/2)
    out = streams / (mixed[..., dims:] + eps).unsqueeze(-1)
    return out.flatten(-2).to(q.dtype)
