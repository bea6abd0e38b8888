"""The released architectures with ``attn_impl='triton'`` against ``'torch'``: every
distinct Pola layer (embed dims, head count, projection) of every released arch, and one
whole backbone per family at a small input, forward and gradients, in fp32 and under
bf16 autocast (which hands the core bf16 q and v with fp32 k).

No GPU in CI: the kernels run in Triton's CPU interpreter, in a child process (this file
run as a script with ``TRITON_INTERPRET=1``, as in ``test_ops_pola_triton.py``).
"""
import json

import pytest
import torch

from triton_interpreter import run_under_interpreter

# a small odd grid: 35 tokens = two full blocks of 16 and a partial one
LAYER_GRID = (5, 7)
BACKBONE_INPUT = (64, 96)  # stage grids 16x24, 8x12, 4x6, 2x3
TOLERANCE = {'fp32': 1e-4, 'bf16': 2e-2}


def released_layers():
    """{'<embed dims>/<heads>/<projection>': (embed dims, heads, projection, archs)} over
    the Pola layers of every released model's backbone."""
    from pola_mm.models import PolaLinearAttention, released_backbone
    from pola_mm.variants import RELEASED, V1_FAMILIES
    layers = {}
    for model in (m for m in RELEASED if m.family in V1_FAMILIES):  # the kernels' family
        backbone = released_backbone(model.name)
        for module in backbone.modules():
            if isinstance(module, PolaLinearAttention):
                key = f'{module.embed_dims}/{module.num_heads}/{module.projection}'
                entry = layers.setdefault(
                    key, [module.embed_dims, module.num_heads, module.projection, []])
                if model.name not in entry[3]:
                    entry[3].append(model.name)
    return layers


def rel_err(ours, ref):
    return ((ours.double() - ref.double()).norm() / ref.double().norm()).item()


def compare_modules(make, inputs, call, dtype):
    """Relative errors of output and parameter/input gradients, 'triton' against 'torch',
    for two modules built by ``make(impl)`` with the same weights."""
    torch.manual_seed(0)
    ours, theirs = make('triton'), make('torch')
    with torch.no_grad():
        for param in ours.parameters():  # weights away from zero init: every path matters
            param.add_(torch.randn_like(param) * 0.05)
    theirs.load_state_dict(ours.state_dict())
    results = []
    for module in (ours, theirs):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype == 'bf16'):
            out = call(module, *leaves)
        outs = out if isinstance(out, (tuple, list)) else (out, )
        sum(o.float().square().mean() for o in outs).backward()
        grads = {name: p.grad for name, p in module.named_parameters() if p.grad is not None}
        grads.update({f'input{i}': t.grad for i, t in enumerate(leaves)})
        results.append(([o.detach() for o in outs], grads))
    (outs, grads), (ref_outs, ref_grads) = results
    errors = {f'out{i}': rel_err(o, r) for i, (o, r) in enumerate(zip(outs, ref_outs))}
    errors['dtype_kept'] = all(o.dtype == r.dtype for o, r in zip(outs, ref_outs))
    errors['same_grads'] = sorted(grads) == sorted(ref_grads)
    # gradients of whole parameter groups, the core's own (power, scale) included
    errors['grads'] = max(rel_err(grads[name], ref_grads[name]) for name in ref_grads
                          if ref_grads[name].abs().sum() > 0)
    return errors


def compare_all():
    from pola_mm.models import PolaLinearAttention, PolaPVT, PolaSwinTransformer
    from pola_mm.ops.pola_triton import triton_interpreted
    assert triton_interpreted()
    results = {'layers': {}}
    tokens = LAYER_GRID[0] * LAYER_GRID[1]
    for key, (channels, heads, projection, archs) in released_layers().items():
        x = torch.randn(2, tokens, channels, generator=torch.Generator().manual_seed(1))
        for dtype in ('fp32', 'bf16'):
            results['layers'][f'{key}/{dtype}'] = dict(compare_modules(
                lambda impl: PolaLinearAttention(channels, heads, (4, 4), projection,
                                                 attn_impl=impl),
                [x], lambda module, x: module(x, LAYER_GRID), dtype), archs=archs)
    image = torch.randn(1, 3, *BACKBONE_INPUT, generator=torch.Generator().manual_seed(2))
    for name, backbone in (('PolaSwinTransformer', PolaSwinTransformer),
                           ('PolaPVT', PolaPVT)):
        results[name] = compare_modules(
            lambda impl: backbone('tiny', drop_path_rate=0., attn_impl=impl), [image],
            lambda module, image: module(image), 'fp32')
    return results


@pytest.fixture(scope='module')
def interpreter_results():
    return run_under_interpreter(__file__, timeout=900)


def check(errors, tolerance):
    assert errors['dtype_kept'] and errors['same_grads'], errors
    for name, error in errors.items():
        if name.startswith('out') or name == 'grads':
            assert error < tolerance, (name, error)


def test_every_released_arch_has_its_layers_checked(interpreter_results):
    from pola_mm.variants import RELEASED, V1_FAMILIES
    covered = {arch for errors in interpreter_results['layers'].values()
               for arch in errors['archs']}
    assert covered == {model.name for model in RELEASED if model.family in V1_FAMILIES}
    # Swin's head dims 32, PVT's 64, in fp32 and bf16
    keys = set(interpreter_results['layers'])
    assert {'96/3/qkvg/fp32', '64/1/qg_kv/bf16', '512/8/qg_kv/fp32'} <= keys


def test_released_layers_match_pytorch_path(interpreter_results):
    for key, errors in interpreter_results['layers'].items():
        check(dict(errors), TOLERANCE[key.rsplit('/', 1)[1]])


@pytest.mark.parametrize('backbone', ['PolaSwinTransformer', 'PolaPVT'])
def test_backbones_match_pytorch_path(interpreter_results, backbone):
    check(interpreter_results[backbone], TOLERANCE['fp32'])


if __name__ == '__main__':
    torch.set_num_threads(1)
    print(json.dumps(compare_all()))
