"""Depthwise convolution with a kernel gradient that is fast on CPU."""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


class _DepthwiseConv2d(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, padding=padding, groups=C)``, whose backward computes the
    kernel gradient as one more depthwise convolution: that of the (padded) input with the
    output gradient as kernel, ``dW[c] = x_pad[c] (*) dy[c]``, an (H, W) kernel whose
    output is (kh, kw). On CPU, oneDNN's own depthwise kernel gradient is several times
    slower than this forward convolution (stage 1 of an 800 x 1344 image, C = 96, 2
    threads: about 55 ms against 15 ms, 22 ms with a channels-last output gradient)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor,
                padding: Tuple[int, int]) -> Tensor:
        ctx.padding = padding
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
            grad_weight = sum(
                F.conv2d(x[item:item + 1], grad[item].unsqueeze(1), padding=padding,
                         groups=channels) for item in range(x.shape[0]))
            grad_weight = grad_weight.view(weight.shape)
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum(dim=(0, 2, 3))
        return grad_x, grad_weight, grad_bias, None


def check_odd_kernel(kernel_size: Tuple[int, int]) -> None:
    """Raise ValueError unless both sides of ``kernel_size`` (kh, kw) are odd, as a 'same'
    convolution with padding (kh // 2, kw // 2) needs."""
    if kernel_size[0] % 2 == 0 or kernel_size[1] % 2 == 0:
        raise ValueError('kernel_size must be odd to keep the map size, got '
                         f'{tuple(kernel_size)}')


def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Depthwise 'same' convolution: (B, C, H, W) with a (C, 1, kh, kw) kernel, kh and kw
    odd, padding (kh // 2, kw // 2), and a (C,) bias -> (B, C, H, W).

    On CPU the backward is :class:`_DepthwiseConv2d`'s; elsewhere it is ``F.conv2d``'s."""
    check_odd_kernel(weight.shape[-2:])
    padding = (weight.shape[-2] // 2, weight.shape[-1] // 2)
    if x.device.type == 'cpu' and torch.is_grad_enabled():
        return _DepthwiseConv2d.apply(x, weight, bias, padding)
    return F.conv2d(x, weight, bias, padding=padding, groups=x.shape[1])


class DepthwiseConv2d(nn.Conv2d):
    """Depthwise 'same' convolution (``groups = channels``, odd ``kernel_size``, padding
    ``kernel_size // 2``) with :func:`depthwise_conv2d`'s fast CPU backward; the
    parameters of a plain ``nn.Conv2d``."""

    def __init__(self, channels: int, kernel_size: int):
        check_odd_kernel((kernel_size, kernel_size))
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2,
                         groups=channels)

    def forward(self, x: Tensor) -> Tensor:
        return depthwise_conv2d(x, self.weight, self.bias)


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
