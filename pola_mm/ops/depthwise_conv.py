"""Depthwise convolution with a kernel gradient that is fast on CPU."""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .cpu_fusion import FUSE_MIN_ELEMENTS, CompiledStep, run_fused


def _conv_kernel_grad(x: Tensor, grad: Tensor, padding: Tuple[int, int]) -> Tensor:
    """The kernel gradient (C, 1, kh, kw) of a depthwise 'same' convolution of x (B, C, H, W)
    whose output has the gradient ``grad``, as one more depthwise convolution per item:
    that of the (padded) input with the output gradient as kernel,
    ``dW[c] = x_pad[c] (*) dy[c]``, an (H, W) kernel whose output is (kh, kw). On CPU,
    oneDNN's own depthwise kernel gradient is several times slower than this forward
    convolution (stage 1 of an 800 x 1344 image, C = 96, 2 threads: about 55 ms against
    15 ms, 22 ms with a channels-last output gradient)."""
    channels, kernel_hw = x.shape[1], (2 * padding[0] + 1, 2 * padding[1] + 1)
    grad_weight = sum((F.conv2d(x[item:item + 1], grad[item].unsqueeze(1), padding=padding,
                                groups=channels) for item in range(x.shape[0])),
                      x.new_zeros(1, channels, *kernel_hw))  # an empty batch: no gradient
    return grad_weight.view(channels, 1, *kernel_hw)


def _shifted_products(x: Tensor, grad: Tensor, kernel_size: Tuple[int, int]) -> Tensor:
    """``sum over b, y, x of x[b, c, y + i, x + j] grad[b, c, y, x]`` for every tap (i, j) of
    a (kh, kw) kernel: the padded input (B, C, rows + kh - 1, W + kw - 1) and the output
    gradient (B, C, rows, W) of a band of rows -> (C, kh * kw)."""
    rows, width = grad.shape[-2:]
    return torch.stack([(x[..., i:i + rows, j:j + width] * grad).sum((0, 2, 3))
                        for i in range(kernel_size[0]) for j in range(kernel_size[1])], -1)


shifted_products = CompiledStep(_shifted_products)

# rows per band of :func:`_banded_kernel_grad`: about this many elements (2 MiB in float32)
# per band of the gradient, so that the band's input and gradient stay in cache over the
# kh * kw taps
KERNEL_GRAD_BAND_ELEMENTS = 1 << 19


def _banded_kernel_grad(x: Tensor, grad: Tensor, padding: Tuple[int, int]) -> Tensor:
    """:func:`_conv_kernel_grad`'s result as sums of shifted products
    (:data:`shifted_products`, compiled), a band of rows at a time: on CPU, for
    channels-last maps, it spares the convolution's transposing copy of the output
    gradient (stage 1 of an 800 x 1344 image, 2 threads: 13 ms against 24 ms at C = 64 and
    k = 5, 26 ms against 86 ms at C = 224 and k = 3)."""
    batch, channels, height, width = x.shape
    (pad_h, pad_w), kernel_size = padding, (2 * padding[0] + 1, 2 * padding[1] + 1)
    rows = max(1, KERNEL_GRAD_BAND_ELEMENTS // (batch * channels * width))
    grad_weight = 0
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        first, last = max(0, top - pad_h), min(height, bottom + pad_h)  # input rows it reads
        band = F.pad(x[:, :, first:last],
                     (pad_w, pad_w, pad_h - (top - first), bottom + pad_h - last))
        grad_weight = grad_weight + shifted_products(band, grad[:, :, top:bottom], kernel_size)
    return grad_weight.view(channels, 1, *kernel_size)


class _DepthwiseConv2d(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, padding=padding, groups=C)`` with a kernel gradient fast
    on CPU: :func:`_banded_kernel_grad` if ``fuse`` (compiled; :func:`_conv_kernel_grad`
    where compiling fails), else :func:`_conv_kernel_grad`."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, padding: Tuple[int, int],
                fuse: bool) -> Tensor:
        ctx.padding, ctx.fuse = padding, fuse
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, bias, padding=padding, groups=x.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        channels, padding = x.shape[1], ctx.padding
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:  # correlation with the flipped kernel
            grad_x = F.conv2d(grad, weight.to(grad.dtype).flip(-2, -1), padding=padding,
                              groups=channels)
        if ctx.needs_input_grad[1]:
            x = x.to(grad.dtype)
            grad_weight = run_fused(lambda fused: (
                _banded_kernel_grad if fused else _conv_kernel_grad)(x, grad, padding),
                ctx.fuse)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(dim=(0, 2, 3))
        return grad_x, grad_weight, grad_bias, None, None


def check_odd_kernel(kernel_size: Tuple[int, int]) -> None:
    """Raise ValueError unless both sides of ``kernel_size`` (kh, kw) are odd, as a 'same'
    convolution with padding (kh // 2, kw // 2) needs."""
    if kernel_size[0] % 2 == 0 or kernel_size[1] % 2 == 0:
        raise ValueError('kernel_size must be odd to keep the map size, got '
                         f'{tuple(kernel_size)}')


def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Tensor,
                     fused_grad: bool = False) -> Tensor:
    """Depthwise 'same' convolution: (B, C, H, W) with a (C, 1, kh, kw) kernel, kh and kw
    odd, padding (kh // 2, kw // 2), and a (C,) bias -> (B, C, H, W).

    On CPU the backward is :class:`_DepthwiseConv2d`'s, its kernel gradient compiled
    (:func:`_banded_kernel_grad`) if ``fused_grad`` and x is a map of at least
    ``FUSE_MIN_ELEMENTS`` elements that is not NCHW-contiguous (where oneDNN needs no
    transposing copy); elsewhere the backward is ``F.conv2d``'s."""
    check_odd_kernel(weight.shape[-2:])
    padding = (weight.shape[-2] // 2, weight.shape[-1] // 2)
    if x.device.type == 'cpu' and torch.is_grad_enabled():
        fuse = fused_grad and x.numel() >= FUSE_MIN_ELEMENTS and not x.is_contiguous()
        return _DepthwiseConv2d.apply(x, weight, bias, padding, fuse)
    return F.conv2d(x, weight, bias, padding=padding, groups=x.shape[1])


class DepthwiseConv2d(nn.Conv2d):
    """Depthwise 'same' convolution (``groups = channels``, odd ``kernel_size``, padding
    ``kernel_size // 2``) with :func:`depthwise_conv2d`'s fast CPU backward; the
    parameters of a plain ``nn.Conv2d``.

    Args:
        channels (int): channels C.
        kernel_size (int): odd kernel size k.
        fused_grad (bool): on CPU, compile the kernel gradient of large channels-last maps
            (:func:`depthwise_conv2d`).
    """

    def __init__(self, channels: int, kernel_size: int, fused_grad: bool = False):
        check_odd_kernel((kernel_size, kernel_size))
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2,
                         groups=channels)
        self.fused_grad = fused_grad

    def forward(self, x: Tensor) -> Tensor:
        return depthwise_conv2d(x, self.weight, self.bias, self.fused_grad)


class HeadSharedDepthwiseConv2d(DepthwiseConv2d):
    """Depthwise 'same' convolution of ``num_heads`` blocks of ``head_dims`` channels with
    one (head_dims, 1, k, k) kernel and (head_dims,) bias shared by all blocks.

    Its parameters are a plain depthwise ``nn.Conv2d`` over ``head_dims`` channels (the
    official checkpoints' layout); the forward applies them to all heads at once as one
    depthwise conv over ``num_heads * head_dims`` channels with the kernel repeated per
    head, through :func:`depthwise_conv2d`.

    Args:
        head_dims (int): channels d of one head.
        kernel_size (int): odd kernel size k.
        num_heads (int): blocks h.
    """

    def __init__(self, head_dims: int, kernel_size: int, num_heads: int):
        super().__init__(head_dims, kernel_size)
        self.num_heads = num_heads

    def forward(self, x: Tensor) -> Tensor:
        """(B, h*d, H, W), channel c of head i at index i*d + c -> (B, h*d, H, W)."""
        return depthwise_conv2d(x, self.weight.repeat(self.num_heads, 1, 1, 1),
                                self.bias.repeat(self.num_heads))

    def extra_repr(self) -> str:
        return f'{super().extra_repr()}, num_heads={self.num_heads}'
