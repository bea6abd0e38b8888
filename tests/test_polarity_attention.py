"""Polarity-aware linear attention: the core against a hand-written reference of the
paper's math, the module against the authors' PVT attention, and its numerics."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from official_layout import GOLDEN_DIR
from pola_mm.models import PolaLinearAttention
from pola_mm.ops import polarity_attention
from pola_mm.ops.polarity_attention import ATTENTION_IMPLS, polarity_linear_attention


def loop_reference(q, k, v, power, eps=1e-6):
    """One query at a time, straight from the closed form (float64):
    out_t[i] = sum_j (q_t[i].K[j]) v_t[j] / (sum_j q_t[i].K[j] + n * eps)."""
    batch, heads, num_queries, dims = q.shape
    n = k.shape[2]
    out = torch.zeros(batch, heads, num_queries, dims, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            p = power[0, h, 0].double()
            kp, kn = k[b, h].double().clamp(min=0)**p, (-k[b, h].double()).clamp(min=0)**p
            keys = torch.cat([kp, kn], dim=-1)  # (n, 2d)
            for i in range(num_queries):
                qi = q[b, h, i].double()
                qp, qn = qi.clamp(min=0)**p, (-qi).clamp(min=0)**p
                for half, query in enumerate((torch.cat([qp, qn]), torch.cat([qn, qp]))):
                    values = v[b, h, :, half * dims // 2:(half + 1) * dims // 2].double()
                    weights = keys @ query  # (n,)
                    out[b, h, i, half * dims // 2:(half + 1) * dims // 2] = (
                        weights @ values) / (weights.sum() + n * eps)
    return out


@pytest.mark.parametrize('heads,num_queries,num_keys,dims', [(1, 7, 7, 4), (3, 33, 12, 8),
                                                             (2, 1, 5, 6), (4, 97, 97, 2)])
def test_core_matches_closed_form(heads, num_queries, num_keys, dims):
    gen = torch.Generator().manual_seed(heads * 100 + num_queries)
    q = torch.randn(2, heads, num_queries, dims, generator=gen, dtype=torch.float64)
    k = torch.randn(2, heads, num_keys, dims, generator=gen, dtype=torch.float64)
    v = torch.randn(2, heads, num_keys, dims, generator=gen, dtype=torch.float64)
    power = 1 + 4 * torch.rand(1, heads, 1, dims, generator=gen, dtype=torch.float64)
    ours = polarity_linear_attention(q.float(), k.float(), v.float(), power.float())
    assert ours.dtype == torch.float32
    ref = loop_reference(q, k, v, power)
    assert ((ours.double() - ref).norm() / ref.norm()) < 1e-5


def test_core_gradients_reach_all_inputs():
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(1, 2, 9, 4, generator=gen, requires_grad=True) for _ in range(3)]
    power = (1 + torch.rand(1, 2, 1, 4, generator=gen)).requires_grad_()
    polarity_linear_attention(*tensors, power).square().sum().backward()
    for tensor in (*tensors, power):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0


def module_reference(module, x, hw_shape):
    """PolaLinearAttention written out from the design note, for one module's weights."""
    batch, num_tokens, channels = x.shape
    heads, dims = module.num_heads, module.head_dims
    if module.projection == 'qkvg':
        q, k, v, g = F.linear(x, module.qkvg.weight, module.qkvg.bias).split(channels, -1)
        kv_hw = hw_shape
    else:
        q, g = F.linear(x, module.qg.weight, module.qg.bias).split(channels, -1)
        source, kv_hw = x, hw_shape
        if module.sr_ratio > 1:
            grid = x.transpose(1, 2).reshape(batch, channels, *hw_shape)
            grid = F.conv2d(grid, module.sr.weight, module.sr.bias, stride=module.sr_ratio)
            kv_hw = grid.shape[2:]
            source = module.norm(grid.flatten(2).transpose(1, 2))
        k, v = F.linear(source, module.kv.weight, module.kv.bias).split(channels, -1)
    pos = module.positional_encoding.reshape(1, *module.pos_grid, channels).permute(0, 3, 1, 2)
    if module.pos_grid != tuple(kv_hw):
        pos = F.interpolate(pos, size=tuple(kv_hw), mode='bicubic', align_corners=False)
    k = k + pos.flatten(2).transpose(1, 2)
    scale = F.softplus(module.scale)
    power = 1 + module.alpha * torch.sigmoid(module.power)

    def split(t):
        return t.reshape(batch, -1, heads, dims).transpose(1, 2)

    out = loop_reference(split(q / scale), split(k / scale), split(v), power).float()
    out = out.transpose(1, 2).reshape(batch, num_tokens, channels)
    v = split(v)
    if module.sr_ratio > 1:
        v = F.interpolate(v.transpose(-2, -1).reshape(batch * heads, dims, -1),
                          size=num_tokens, mode='linear').reshape(
                              batch, heads, dims, num_tokens).transpose(-2, -1)
    local = F.conv2d(v.reshape(batch * heads, *hw_shape, dims).permute(0, 3, 1, 2),
                     module.dwc.weight, module.dwc.bias, padding=module.dwc.padding,
                     groups=dims)
    out = (out + local.reshape(batch, channels, num_tokens).transpose(1, 2)) * g
    return F.linear(out, module.proj.weight, module.proj.bias)


@pytest.mark.parametrize('projection,sr_ratio,hw_shape,pos_grid', [
    ('qkvg', 1, (5, 7), (4, 4)),   # non-square map, positional encoding resized
    ('qkvg', 1, (6, 6), (6, 6)),   # no resize
    ('qg_kv', 1, (7, 9), (8, 8)),
    ('qg_kv', 2, (7, 9), (4, 4)),  # reduced key grid 3x4, 1-D interpolation of v
])
def test_module_matches_reference(projection, sr_ratio, hw_shape, pos_grid):
    torch.manual_seed(0)
    module = PolaLinearAttention(24, 3, pos_grid, projection, sr_ratio=sr_ratio).eval()
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0, 0.3)
    x = torch.randn(2, hw_shape[0] * hw_shape[1], 24)
    with torch.no_grad():
        ours = module(x, hw_shape)
    ref = module_reference(module, x, hw_shape)
    assert ((ours - ref).norm() / ref.norm()) < 1e-5


@pytest.mark.parametrize('sr_ratio', [1, 2])
def test_module_matches_official_pvt_attention(sr_ratio):
    golden = np.load(GOLDEN_DIR / f'pvt_attention_sr{sr_ratio}.npz')
    state = {k[len('state.'):]: torch.from_numpy(golden[k]) for k in golden if
             k.startswith('state.')}
    hw_shape = tuple(int(n) for n in golden['hw'])
    # the authors built the module for exactly this (reduced) key grid
    key_grid = (hw_shape[0] // sr_ratio, hw_shape[1] // sr_ratio)
    module = PolaLinearAttention(64, int(golden['num_heads']), key_grid, 'qg_kv',
                                 sr_ratio=sr_ratio).eval()
    module.load_state_dict(state)
    with torch.no_grad():
        out = module(torch.from_numpy(golden['input']), hw_shape)
    ref = golden['output']
    assert np.linalg.norm(out.numpy() - ref) / np.linalg.norm(ref) < 1e-5


def test_eval_cache_follows_weight_updates():
    module = PolaLinearAttention(8, 2, (4, 4), 'qkvg').eval()
    x = torch.randn(1, 15, 8)
    with torch.no_grad():
        first = module(x, (3, 5))
        module.positional_encoding.add_(1.)
        second = module(x, (3, 5))
    assert not torch.allclose(first, second)
    with torch.no_grad():
        assert torch.equal(second, module(x, (3, 5)))


def test_eval_cache_follows_writes_through_data():
    """MMEngine's EMAHook swaps the averaged weights in with ``p.data.copy_`` (no version
    bump) before its validation loop calls ``eval()``."""
    module = PolaLinearAttention(8, 2, (4, 4), 'qkvg').eval()
    x = torch.randn(1, 15, 8)
    with torch.no_grad():
        first = module(x, (3, 5))
        module.positional_encoding.data.copy_(torch.randn_like(module.positional_encoding))
        module.eval()
        second = module(x, (3, 5))
        module._pos_cache = None
        assert torch.equal(second, module(x, (3, 5)))
    assert not torch.allclose(first, second)


def test_eval_cache_follows_a_replaced_table():
    """``load_state_dict(..., assign=True)`` puts new Parameters in place, whose version
    counts from 0 again: the cache must tell them from the table it resized."""
    module = PolaLinearAttention(8, 2, (4, 4), 'qkvg').eval()
    fresh = PolaLinearAttention(8, 2, (4, 4), 'qkvg').eval()
    x = torch.randn(1, 15, 8)
    state = {k: torch.randn_like(v) for k, v in module.state_dict().items()}
    with torch.no_grad():
        module(x, (3, 5))
        module.load_state_dict(state, assign=True)
        fresh.load_state_dict(state)
        assert module.positional_encoding._version == 0
        assert torch.equal(module(x, (3, 5)), fresh(x, (3, 5)))


def test_fp16_inputs_are_computed_in_fp32():
    """Powers up to 5 of inputs divided by softplus(scale) overflow fp16 (max 65504);
    the core computes in fp32 and only the result is cast back."""
    q = torch.full((1, 1, 4, 4), 12.0)  # 12 ** 5 = 248832 > 65504
    k, v = torch.full((1, 1, 4, 4), 12.0), torch.ones(1, 1, 4, 4)
    power = torch.full((1, 1, 1, 4), 5.0)
    naive = (F.relu(q.half())**power.half())
    assert torch.isinf(naive).any()
    out = polarity_linear_attention(q.half(), k.half(), v.half(), power.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    # all-positive q and k: the same-sign stream averages v, the opposite-sign one is 0
    expected = torch.cat([torch.ones(1, 1, 4, 2), torch.zeros(1, 1, 4, 2)], dim=-1)
    torch.testing.assert_close(out.float(), expected, rtol=1e-3, atol=1e-3)


def test_fp16_autocast_stays_out_of_the_core():
    """Under fp16 autocast q and k come from fp16 matmuls; the core must not let autocast
    run its own products in fp16 (12 ** 5 overflows): finite, fp16 out, as in fp32."""
    weight = torch.eye(4) * 12
    x, v = torch.ones(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    power = torch.full((1, 1, 1, 4), 5.0)
    with torch.autocast('cpu', dtype=torch.float16):
        q = x @ weight  # fp16 under autocast
        assert q.dtype == torch.float16
        out = polarity_linear_attention(q, q, v.half(), power, impl='torch')
        reference = polarity_linear_attention(q, q, v.half(), power, impl='reference')
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    expected = polarity_linear_attention(q.float(), q.float(), v, power)
    torch.testing.assert_close(out.float(), expected, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(reference.float(), expected, rtol=1e-3, atol=1e-3)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match='projection must be one of'):
        PolaLinearAttention(8, 2, (4, 4), 'qkv')
    with pytest.raises(ValueError, match='even number of channels'):
        PolaLinearAttention(9, 3, (4, 4))
    with pytest.raises(ValueError, match='kernel_size must be odd'):
        PolaLinearAttention(8, 2, (4, 4), kernel_size=4)
    module = PolaLinearAttention(8, 2, (4, 4))
    with pytest.raises(ValueError, match='do not form the grid 3x4'):
        module(torch.randn(1, 10, 8), (3, 4))


def test_attention_implementation_switch():
    with pytest.raises(ValueError, match="attn_impl must be one of"):
        PolaLinearAttention(8, 2, (4, 4), attn_impl='flash')
    assert set(ATTENTION_IMPLS) == {'auto', 'torch', 'triton', 'reference'}


@pytest.mark.parametrize('impl', ['auto', 'torch', 'reference'])
def test_every_cpu_implementation_matches_closed_form(impl):
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 2, 9, 16, generator=gen, dtype=torch.float64) for _ in range(3))
    power = 1 + 4 * torch.rand(1, 2, 1, 16, generator=gen, dtype=torch.float64)
    scale = 0.5 + torch.rand(1, 2, 1, 16, generator=gen, dtype=torch.float64)
    ours = polarity_linear_attention(q.float(), k.float(), v.float(), power.float(), impl=impl,
                                     scale=scale.float())
    ref = loop_reference(q / scale, k / scale, v, power)
    assert ours.dtype == torch.float32
    assert ((ours.double() - ref).norm() / ref.norm()) < 1e-5


def test_auto_on_cpu_does_not_try_the_kernels(monkeypatch):
    """On CPU 'auto' is the PyTorch path, whose autograd Functions run; the kernels (here
    made to fail loudly) are never called."""
    from pola_mm.ops import pola_torch, pola_triton

    def kernels(*args, **kwargs):
        raise AssertionError('the Triton path ran on CPU')

    calls = []
    original = pola_torch.polarity_linear_attention_torch
    monkeypatch.setattr(pola_triton, 'polarity_linear_attention_triton', kernels)
    monkeypatch.setattr(polarity_attention, 'polarity_linear_attention_torch',
                        lambda *args: calls.append(args) or original(*args))
    q, k, v = (torch.randn(1, 1, 6, 32) for _ in range(3))
    polarity_linear_attention(q, k, v, torch.full((1, 1, 1, 32), 2.0), impl='auto')
    assert len(calls) == 1


def test_triton_on_cpu_names_the_pytorch_path():
    from pola_mm.ops.pola_triton import triton_interpreted
    if triton_interpreted():
        pytest.skip('TRITON_INTERPRET is set in this process')
    q = torch.randn(1, 1, 6, 32)
    with pytest.raises(RuntimeError, match="CUDA.*attn_impl='torch'"):
        polarity_linear_attention(q, q, q, torch.full((1, 1, 1, 32), 2.0), impl='triton')
