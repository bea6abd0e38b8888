"""Mixed precision: under fp16 and bf16 autocast (and in fp32) the Pola attention and the
backbones stay finite, forward and backward (with AMP's loss scaling), on inputs of
realistic scale with the sharp polarity maps of trained models (power near 5, q and k
scaled up 20x), where the powers of the core would overflow fp16. Outputs and gradients
are compared with float64.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from pola_mm.models import PolaLinearAttention
from test_backbones import SMALL_BACKBONES

FP16_MAX = torch.finfo(torch.float16).max
GRID = (28, 28)
# relative errors to float64 allowed (measured: at most 40 % of these)
TOLERANCE = {torch.float16: 5e-3, torch.bfloat16: 3e-2, torch.float32: 1e-5}
GRAD_TOLERANCE = {torch.float16: 2e-2, torch.bfloat16: 0.25, torch.float32: 1e-5}


def sharpen(module):
    """Polarity maps as sharp as trained models make them: power 1 + 4 * sigmoid(4) = 4.93,
    q and k divided by softplus(-3) = 0.049."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith('power'):
                param.fill_(4.)
            elif name.endswith('scale'):
                param.fill_(-3.)
            elif name.endswith('positional_encoding'):
                param.normal_(0, 0.1)
    return module


def relative_error(value, reference):
    return ((value.double() - reference).norm() / reference.norm()).item()


def forward_backward(module, inputs, dtype, *args):
    """Outputs and input gradient of ``sum(mean(out ** 2))`` under ``dtype`` autocast.

    With dynamic loss scaling, as AMP's GradScaler: the loss is scaled by 2**16, and
    halved down to 1 while the gradients are not finite (fp16 gradients underflow without
    a scale and overflow with too large a one); the gradients are then unscaled.
    """
    inputs = inputs.clone().requires_grad_()
    with torch.autocast('cpu', dtype=dtype, enabled=dtype != torch.float32):
        outputs = module(inputs, *args)
    outputs = outputs if isinstance(outputs, tuple) else (outputs, )
    loss = sum(out.float().square().mean() for out in outputs)
    scale = 2.**16
    while True:
        inputs.grad = None
        module.zero_grad(set_to_none=True)
        (scale * loss).backward(retain_graph=True)
        grads = [inputs.grad, *(p.grad for p in module.parameters() if p.grad is not None)]
        if scale == 1 or all(torch.isfinite(grad).all() for grad in grads):
            for grad in grads:
                grad /= scale
            return outputs, inputs.grad
        scale /= 2


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float32],
                         ids=['fp16', 'bf16', 'fp32'])
@pytest.mark.parametrize('projection,sr_ratio', [('qkvg', 1), ('qg_kv', 2)])
@pytest.mark.parametrize('token_std', [1., 20.])
def test_attention_under_autocast_is_finite_and_accurate(token_std, projection, sr_ratio,
                                                         dtype):
    torch.manual_seed(0)
    layer = sharpen(PolaLinearAttention(64, 2, GRID, projection, sr_ratio=sr_ratio))
    tokens = torch.randn(2, GRID[0] * GRID[1], 64) * token_std
    if token_std > 1:  # a core computing in fp16 would overflow on these inputs
        q = (layer.qkvg if projection == 'qkvg' else layer.qg)(tokens)[..., :64]
        power = 1 + layer.alpha * torch.sigmoid(layer.power)
        assert (q.abs().max() / F.softplus(layer.scale).min())**power.max() > FP16_MAX

    reference, reference_grad = forward_backward(copy.deepcopy(layer).double(),
                                                 tokens.double(), torch.float32, GRID)
    outputs, grad = forward_backward(layer, tokens, dtype, GRID)
    assert outputs[0].dtype == dtype
    assert torch.isfinite(outputs[0]).all() and torch.isfinite(grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    assert relative_error(outputs[0], reference[0]) < TOLERANCE[dtype]
    assert relative_error(grad, reference_grad) < GRAD_TOLERANCE[dtype]


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float32],
                         ids=['fp16', 'bf16', 'fp32'])
@pytest.mark.parametrize('family', ['swin', 'pvt'])
def test_backbone_under_autocast_is_finite_and_accurate(family, dtype):
    torch.manual_seed(0)
    backbone = SMALL_BACKBONES[family](drop_path_rate=0.)
    backbone.init_weights()
    sharpen(backbone)
    image = torch.randn(2, 3, 96, 128) * 2.5  # ImageNet-normalised pixel range
    double = copy.deepcopy(backbone).double()
    reference, _ = forward_backward(double, image.double(), torch.float32)
    outputs, _ = forward_backward(backbone, image, dtype)
    assert all(torch.isfinite(out).all() for out in outputs)
    for out, ref in zip(outputs, reference):
        assert relative_error(out, ref) < TOLERANCE[dtype]
    grads = [(p.grad, q.grad) for p, q in zip(backbone.parameters(), double.parameters())
             if q.grad is not None]
    assert len(grads) > 100 and all(torch.isfinite(grad).all() for grad, _ in grads)
    assert relative_error(torch.cat([g.flatten() for g, _ in grads]),
                          torch.cat([r.flatten() for _, r in grads])) < GRAD_TOLERANCE[dtype]
