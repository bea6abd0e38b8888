"""depthwise_conv2d (its own kernel gradient on CPU, eager or compiled) and the
head-shared conv module against PyTorch's depthwise conv."""
import warnings

import pytest
import torch
import torch.nn.functional as F

from pola_mm.ops import cpu_fusion, depthwise_conv
from pola_mm.ops.depthwise_conv import DepthwiseConv2d, HeadSharedDepthwiseConv2d, depthwise_conv2d


def reference(x, weight, bias):
    padding = (weight.shape[-2] // 2, weight.shape[-1] // 2)
    return F.conv2d(x, weight, bias, padding=padding, groups=x.shape[1])


def forward_backward(fn, inputs, grad):
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    out.backward(grad)
    return out, [None if t is None else t.grad for t in leaves]


# (batch, channels, height, width, kernel (h, w), memory layout of x, with bias)
CASES = [(1, 6, 9, 11, (5, 5), 'channels_last', True),
         (3, 4, 7, 5, (3, 3), 'contiguous', True),
         (2, 5, 6, 13, (3, 5), 'channels_last', False),
         (2, 8, 1, 9, (1, 3), 'contiguous', True),
         (2, 3, 4, 4, (5, 5), 'interleaved', True)]  # kernel larger than the map


def make_x(batch, channels, height, width, layout, gen):
    if layout == 'interleaved':  # a channel slice of a wider (B, H*W, 3C) projection
        wide = torch.randn(batch, height * width, 3 * channels, generator=gen, dtype=torch.float64)
        return wide[..., channels:2 * channels].reshape(batch, height, width, channels
                                                        ).permute(0, 3, 1, 2)
    x = torch.randn(batch, channels, height, width, generator=gen, dtype=torch.float64)
    if layout == 'channels_last':
        return x.contiguous(memory_format=torch.channels_last)
    return x


@pytest.mark.parametrize('case', CASES)
def test_forward_and_gradients_match_pytorch(case):
    batch, channels, height, width, kernel, layout, with_bias = case
    gen = torch.Generator().manual_seed(sum(kernel) + batch * channels)
    x = make_x(batch, channels, height, width, layout, gen)
    weight = torch.randn(channels, 1, *kernel, generator=gen, dtype=torch.float64)
    bias = torch.randn(channels, generator=gen, dtype=torch.float64) if with_bias else None
    grad = torch.randn(batch, channels, height, width, generator=gen, dtype=torch.float64)

    out, grads = forward_backward(depthwise_conv2d, [x, weight, bias], grad)
    ref, ref_grads = forward_backward(reference, [x, weight, bias], grad)
    assert out.shape == (batch, channels, height, width)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    for name, ours, theirs in zip(('x', 'weight', 'bias'), grads, ref_grads):
        if theirs is None:
            assert ours is None, name
        else:
            assert ours.shape == theirs.shape, name
            torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10, msg=name)


@pytest.fixture
def fused_for_any_size(monkeypatch):
    """The compiled kernel gradient for maps of any size, in bands of 2 rows of the
    channels-last cases below."""
    monkeypatch.setattr(depthwise_conv, 'FUSE_MIN_ELEMENTS', 0)
    monkeypatch.setattr(depthwise_conv, 'KERNEL_GRAD_BAND_ELEMENTS', 2 * 6 * 11)
    monkeypatch.setattr(cpu_fusion, '_failure', [])


@pytest.mark.parametrize('case', [CASES[0], CASES[4]])
def test_compiled_kernel_gradient_matches_pytorch(fused_for_any_size, monkeypatch, case):
    """With ``fused_grad`` on CPU, the kernel gradient of a channels-last map is summed a
    band of rows at a time by a compiled step (bands of 2 rows, the last one shorter; and
    a kernel larger than the map): PyTorch's gradients."""
    def not_the_convolution(*args):
        raise AssertionError("the convolution's kernel gradient ran")

    monkeypatch.setattr(depthwise_conv, '_conv_kernel_grad', not_the_convolution)
    batch, channels, height, width, kernel, layout, with_bias = case
    gen = torch.Generator().manual_seed(3)
    x = make_x(batch, channels, height, width, layout, gen)
    weight = torch.randn(channels, 1, *kernel, generator=gen, dtype=torch.float64)
    bias = torch.randn(channels, generator=gen, dtype=torch.float64)
    grad = torch.randn(batch, channels, height, width, generator=gen, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter('error', RuntimeWarning)  # no fallback to the convolution
        _, grads = forward_backward(lambda *t: depthwise_conv2d(*t, fused_grad=True),
                                    [x, weight, bias], grad)
    _, ref_grads = forward_backward(reference, [x, weight, bias], grad)
    for name, ours, theirs in zip(('x', 'weight', 'bias'), grads, ref_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10, msg=name)


def test_which_kernel_gradients_are_compiled(fused_for_any_size, monkeypatch):
    """Compiled: ``fused_grad``, CPU, at least ``FUSE_MIN_ELEMENTS`` elements and not an
    NCHW-contiguous map (oneDNN needs no transposing copy there); a failing compilation
    warns once and gives the convolution's gradient."""
    compiled = []
    banded = depthwise_conv._banded_kernel_grad
    monkeypatch.setattr(depthwise_conv, '_banded_kernel_grad',
                        lambda *args: compiled.append(True) or banded(*args))
    conv = DepthwiseConv2d(4, 3, fused_grad=True).double()
    x = torch.randn(1, 6, 7, 4, dtype=torch.float64).permute(0, 3, 1, 2)  # channels-last

    def uses_compiled(module, x):
        compiled.clear()
        module(x).sum().backward()
        return bool(compiled)

    assert uses_compiled(conv, x)
    assert not uses_compiled(conv, x.contiguous())
    assert not uses_compiled(DepthwiseConv2d(4, 3).double(), x)
    monkeypatch.setattr(depthwise_conv, 'FUSE_MIN_ELEMENTS', x.numel() + 1)
    assert not uses_compiled(conv, x)

    monkeypatch.setattr(depthwise_conv, 'FUSE_MIN_ELEMENTS', 0)
    monkeypatch.setattr(depthwise_conv.shifted_products, '_compiled', lambda *args: 1 / 0)
    conv.zero_grad()
    with pytest.warns(RuntimeWarning, match="(?s)ZeroDivisionError.*attn_impl='torch'"):
        conv(x).sum().backward()
    expected = torch.autograd.grad(reference(x, conv.weight, conv.bias).sum(), conv.weight)[0]
    torch.testing.assert_close(conv.weight.grad, expected, rtol=1e-12, atol=1e-12)


def test_gradcheck():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 1, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(depthwise_conv2d, (x, weight, bias))


def test_only_some_inputs_need_gradients():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 6, 7, generator=gen)
    weight = torch.randn(4, 1, 3, 3, generator=gen, requires_grad=True)
    bias = torch.randn(4, generator=gen)
    depthwise_conv2d(x, weight, bias).square().sum().backward()
    expected = torch.autograd.grad(reference(x, weight, bias).square().sum(), weight)[0]
    torch.testing.assert_close(weight.grad, expected, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_gives_float32_parameter_gradients():
    """Under CPU autocast the conv runs in bf16; the float32 parameters still get float32
    gradients close to those of PyTorch's own conv under the same autocast."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 8, 12, 10, generator=gen)
    weight = torch.randn(8, 1, 5, 5, generator=gen)
    bias = torch.randn(8, generator=gen)
    grad = torch.randn(2, 8, 12, 10, generator=gen).bfloat16()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out, grads = forward_backward(depthwise_conv2d, [x, weight, bias], grad)
        ref, ref_grads = forward_backward(reference, [x, weight, bias], grad)
    assert out.dtype == ref.dtype == torch.bfloat16
    for ours, theirs in zip(grads, ref_grads):
        assert ours.dtype == theirs.dtype == torch.float32
        assert ((ours - theirs).norm() / theirs.norm()).item() < 2e-2


@pytest.mark.parametrize('kernel', [(4, 4), (3, 2)])
def test_even_kernel_is_rejected(kernel):
    with pytest.raises(ValueError, match='odd'):
        depthwise_conv2d(torch.randn(1, 2, 8, 8), torch.randn(2, 1, *kernel), None)


def test_head_shared_conv_applies_one_kernel_to_every_head():
    torch.manual_seed(0)
    heads, dims, height, width = 3, 4, 6, 7
    conv = HeadSharedDepthwiseConv2d(dims, 5, heads).double()
    assert {k: tuple(v.shape) for k, v in conv.state_dict().items()} == {
        'weight': (dims, 1, 5, 5), 'bias': (dims, )}  # the official checkpoints' layout
    x = torch.randn(2, heads * dims, height, width, dtype=torch.float64, requires_grad=True)
    out = conv(x)
    per_head = reference(x.reshape(2 * heads, dims, height, width), conv.weight, conv.bias)
    torch.testing.assert_close(out, per_head.reshape(out.shape), rtol=0, atol=1e-12)
    grad = torch.randn_like(out)
    out.backward(grad)
    ours = conv.weight.grad.clone(), conv.bias.grad.clone(), x.grad.clone()
    conv.zero_grad(), x.grad.zero_()
    per_head.backward(grad.reshape(per_head.shape))
    for mine, theirs in zip(ours, (conv.weight.grad, conv.bias.grad, x.grad)):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-10)


def test_head_shared_conv_rejects_an_even_kernel():
    with pytest.raises(ValueError, match='kernel_size must be odd'):
        HeadSharedDepthwiseConv2d(4, 4, 2)
