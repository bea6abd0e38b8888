"""The guard around the fused Triton kernels: a kernel failure under ``attn_impl='auto'``
gives one warning and the PyTorch path's result; ``'triton'`` re-raises it naming
``attn_impl='torch'``; launch geometry, device and precision choice.

No GPU in CI: CPU tensors are made to look as if they lived on a checked GPU (the device
test of :mod:`pola_mm.ops.polarity_attention` is patched). Kernel failures in forward are
simulated in this process; the failure of a backward kernel after real forward kernels
needs Triton's interpreter, so those cases run once in a child process (this file run as
a script with ``TRITON_INTERPRET=1``, as in ``test_ops_pola_triton.py``).
"""
import json
import sys
import warnings
from contextlib import nullcontext

import pytest
import torch

from pola_mm.models import PolaLinearAttention
from pola_mm.ops import pola_triton, polarity_attention
from pola_mm.ops.polarity_attention import polarity_linear_attention
from pola_mm.ops.triton_compile import kernel_precision
from triton_interpreter import run_under_interpreter

SHARED_MEMORY_ERROR = ('out of resource: shared memory, Required: 311296, '
                       'Hardware limit: 232448')


def make_inputs(dims=32, heads=2, tokens=21, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, heads, tokens, dims, generator=gen) for _ in range(3))
    power = 1 + 4 * torch.rand(1, heads, 1, dims, generator=gen)
    scale = 0.5 + torch.rand(1, heads, 1, dims, generator=gen)
    return [q, k, v, power, scale]


def run(impl, inputs, alpha=None):
    """Output and gradients of every input of one call (``alpha``: power and scale are
    parameters before their activations)."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    q, k, v, power, scale = leaves
    out = polarity_linear_attention(q, k, v, power, impl=impl, scale=scale, alpha=alpha)
    out.square().sum().backward()
    return out.detach(), [t.grad for t in leaves]


def assert_same_result(ours, theirs):
    torch.testing.assert_close(ours[0], theirs[0])
    for grad, expected in zip(ours[1], theirs[1]):
        torch.testing.assert_close(grad, expected)


def triton_warnings(record):
    return [w for w in record if 'Triton kernels failed' in str(w.message)]


@pytest.fixture
def looks_like_cuda(monkeypatch):
    """CPU tensors take the kernels' path ('auto' sees a checked GPU, and the kernels'
    own device test passes), with a fresh record of configurations."""
    monkeypatch.setattr(polarity_attention, '_on_checked_gpu', lambda t: True)
    monkeypatch.setattr(polarity_attention, '_KERNEL_STATUS', {})
    monkeypatch.setattr(pola_triton, 'triton_interpreted', lambda: True)


@pytest.fixture
def failing_kernels(monkeypatch, looks_like_cuda):
    """The forward kernels raise what Triton raises when a block needs too much shared
    memory; returns the list of their calls."""
    from triton.runtime.errors import OutOfResources
    calls = []

    def fail(*args, **kwargs):
        calls.append(args)
        raise OutOfResources(311296, 232448, 'shared memory')

    monkeypatch.setattr(pola_triton, '_forward_kernels', fail)
    return calls


def test_auto_falls_back_with_one_warning(failing_kernels):
    inputs = make_inputs()
    expected = run('torch', inputs)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter('always')
        first = run('auto', inputs)
        second = run('auto', inputs)
    assert_same_result(first, expected)
    assert_same_result(second, expected)
    messages = [str(w.message) for w in triton_warnings(record)]
    assert len(messages) == 1, messages
    assert SHARED_MEMORY_ERROR in messages[0] and 'OutOfResources' in messages[0]
    assert "attn_impl='torch'" in messages[0] and 'head dims 32' in messages[0]
    assert len(failing_kernels) == 1  # the failed configuration is not tried again


def test_kernels_that_do_not_import_fall_back(monkeypatch, looks_like_cuda):
    """A broken Triton install fails at the kernels' import: the same guard applies."""
    monkeypatch.setitem(sys.modules, 'pola_mm.ops.pola_triton', None)
    inputs = make_inputs()
    with pytest.warns(RuntimeWarning, match="ModuleNotFoundError.*pola_triton") as record:
        assert_same_result(run('auto', inputs), run('torch', inputs))
    assert "attn_impl='torch'" in str(record[0].message)


def test_fallback_is_per_configuration(failing_kernels):
    with pytest.warns(RuntimeWarning, match='head dims 32'):
        run('auto', make_inputs(dims=32))
    with pytest.warns(RuntimeWarning, match='head dims 64'):
        run('auto', make_inputs(dims=64))
    assert len(failing_kernels) == 2


def test_triton_reraises_naming_the_pytorch_path(failing_kernels):
    q, k, v, power, scale = make_inputs()
    with pytest.raises(RuntimeError, match="attn_impl='torch'") as error:
        polarity_linear_attention(q, k, v, power, impl='triton', scale=scale)
    assert SHARED_MEMORY_ERROR in str(error.value)
    assert type(error.value.__cause__).__name__ == 'OutOfResources'
    assert not polarity_attention._KERNEL_STATUS  # 'triton' never marks a fallback


def test_out_of_memory_is_not_a_reason_to_switch(monkeypatch, looks_like_cuda):
    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError('CUDA out of memory')

    monkeypatch.setattr(pola_triton, '_forward_kernels', out_of_memory)
    q, k, v, power, scale = make_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        with pytest.raises(torch.cuda.OutOfMemoryError):
            polarity_linear_attention(q, k, v, power, impl='auto', scale=scale)


def test_layer_with_auto_falls_back_once(failing_kernels):
    torch.manual_seed(0)
    layer = PolaLinearAttention(64, 2, (4, 4), 'qkvg', attn_impl='auto')
    reference = PolaLinearAttention(64, 2, (4, 4), 'qkvg', attn_impl='torch')
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(2, 30, 64)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter('always')
        outputs = [layer(x, (5, 6)) for _ in range(3)]
    assert len(triton_warnings(record)) == 1
    expected = reference(x, (5, 6))
    for out in outputs:
        torch.testing.assert_close(out, expected)


def test_unsupported_head_dims_never_reach_the_kernels(failing_kernels):
    """'auto' takes the kernels only for the compile-checked head dims."""
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        run('auto', make_inputs(dims=128))
        run('auto', make_inputs(dims=8))
    assert not failing_kernels


class _Launcher:
    """Stands in for a kernel: records the grid of each launch and does nothing."""

    def __init__(self, name, grids):
        self.name, self.grids = name, grids

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.grids.append((self.name, grid, kwargs['num_warps'], kwargs['num_stages'],
                               kwargs['maxnreg']))
        return launch


def test_every_launch_is_on_grid_axis_0_alone(monkeypatch, looks_like_cuda):
    """(batch x head) shares axis 0 with the token parts: axes 1 and 2 allow only 65535
    blocks, which would cap batch x heads."""
    from pola_mm.ops.triton_compile import KERNEL_NAMES, MAX_REGISTERS, NUM_STAGES, NUM_WARPS
    options = NUM_WARPS, NUM_STAGES, MAX_REGISTERS
    grids = []
    for name in KERNEL_NAMES:
        monkeypatch.setattr(pola_triton, name, _Launcher(name, grids))
    batch, heads, queries, keys = 3, 2, 1000, 600
    q = torch.randn(batch, heads, queries, 32, requires_grad=True)
    k, v = (torch.randn(batch, heads, keys, 32, requires_grad=True) for _ in range(2))
    power = torch.full((1, heads, 1, 32), 2.0, requires_grad=True)
    out = pola_triton.polarity_linear_attention_triton(q, k, v, power, chunk=256)
    out.backward(torch.ones_like(out))
    assert grids == [
        ('_key_state_kernel', (batch * heads * 3, ), *options),  # 600 keys / chunk 256
        ('_mixing_kernel', (batch * heads, ), *options),
        ('_query_output_kernel', (batch * heads * 4, ), *options),  # 1000 queries / 256
        ('_query_backward_kernel', (batch * heads * 4, ), *options),
        ('_mixing_backward_kernel', (batch * heads, ), *options),
        ('_key_backward_kernel', (batch * heads * 3, ), *options),
    ]


def test_launches_are_made_on_the_inputs_device(monkeypatch):
    entered = []
    monkeypatch.setattr(torch.cuda, 'device', lambda device: entered.append(device) or
                        nullcontext())

    class OnSecondGpu:
        is_cuda = True
        device = torch.device('cuda', 1)

    with pola_triton._on_device(OnSecondGpu()):
        pass
    assert entered == [torch.device('cuda', 1)]
    with pola_triton._on_device(torch.zeros(1)):  # the interpreter: no CUDA context
        pass
    assert len(entered) == 1


def _legacy_flag():
    torch.backends.cuda.matmul.allow_tf32 = True


def _new_matmul_setting():
    torch.backends.cuda.matmul.fp32_precision = 'tf32'


def _new_global_setting():
    torch.backends.cuda.matmul.fp32_precision = 'none'  # inherit, as in a fresh process
    torch.backends.fp32_precision = 'tf32'


@pytest.mark.parametrize('allow,capability,hip,expected', [
    (None, (9, 0), None, 'ieee'),  # PyTorch's default float32 matmul precision
    (lambda: torch.set_float32_matmul_precision('high'), (9, 0), None, 'tf32'),
    (_legacy_flag, (8, 6), None, 'tf32'),
    (_new_matmul_setting, (9, 0), None, 'tf32'),  # reading allow_tf32 would raise here
    (_new_global_setting, (8, 0), None, 'tf32'),
    (_new_matmul_setting, (7, 5), None, 'ieee'),  # no TF32 before Ampere
    (_new_matmul_setting, (9, 4), '6.2', 'ieee'),  # ROCm
])
def test_precision_follows_pytorch_setting(monkeypatch, allow, capability, hip, expected):
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: capability)
    monkeypatch.setattr(torch.version, 'hip', hip)
    previous = torch.get_float32_matmul_precision(), torch.backends.fp32_precision
    try:
        if allow is not None:
            allow()
        assert kernel_precision(torch.device('cuda', 0)) == expected
        assert kernel_precision(torch.device('cpu')) == 'ieee'
    finally:  # restores every backend the settings touch (mkldnn's too)
        torch.backends.fp32_precision = previous[1]
        torch.set_float32_matmul_precision(previous[0])
    assert not torch.backends.cuda.matmul.allow_tf32  # legacy reads work again


def interpreted_cases():
    """In the interpreter: real kernels through 'auto' (the guard passes them), and a
    backward kernel that fails after real forward kernels, under 'auto' and 'triton'."""
    assert pola_triton.triton_interpreted()
    polarity_attention._on_checked_gpu = lambda t: True
    results = {}
    inputs = make_inputs(dims=32, heads=2, tokens=37)
    expected = run('torch', inputs)

    def errors(result, expected=expected):
        return [((ours - ref).norm() / ref.norm()).item()
                for ours, ref in zip([result[0], *result[1]], [expected[0], *expected[1]])]

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter('always')
        results['real'] = errors(run('auto', inputs))
        results['real_status'] = list(polarity_attention._KERNEL_STATUS.values())
        results['real_warnings'] = len(triton_warnings(record))

    polarity_attention._KERNEL_STATUS.clear()
    launches = []

    class FailingBackward:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.append(grid)
                raise RuntimeError('PassManager::run failed')
            return launch

    pola_triton._key_backward_kernel = FailingBackward()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter('always')
        results['fallback'] = [errors(run('auto', inputs)) for _ in range(2)]
        results['fallback_messages'] = [str(w.message) for w in triton_warnings(record)]
    results['fallback_launches'] = len(launches)
    results['fallback_status'] = list(polarity_attention._KERNEL_STATUS.values())
    # the layers' parameters before their activations: the PyTorch path's gradients
    polarity_attention._KERNEL_STATUS.clear()
    logits = inputs[:3] + [torch.randn(1, 2, 1, 32), torch.randn(1, 2, 1, 32)]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        results['fallback_logits'] = errors(run('auto', logits, alpha=4.),
                                            run('torch', logits, alpha=4.))
    try:
        run('triton', inputs)
        results['triton_error'] = None
    except RuntimeError as error:
        results['triton_error'] = str(error)
    return results


@pytest.fixture(scope='module')
def interpreted():
    return run_under_interpreter(__file__)


def test_auto_runs_real_kernels_through_the_guard(interpreted):
    assert max(interpreted['real']) < 1e-4
    assert interpreted['real_status'] == ['verified'] and interpreted['real_warnings'] == 0


def test_backward_failure_falls_back_with_one_warning(interpreted):
    for call in interpreted['fallback']:  # output and gradients as the PyTorch path's
        assert max(call) < 1e-4
    messages = interpreted['fallback_messages']
    assert len(messages) == 1, messages
    assert 'failed in backward' in messages[0] and 'PassManager::run failed' in messages[0]
    assert "attn_impl='torch'" in messages[0]
    assert interpreted['fallback_launches'] == 1 and interpreted['fallback_status'] == ['failed']
    assert max(interpreted['fallback_logits']) < 1e-4  # activations applied in PyTorch


def test_backward_failure_under_triton_names_the_pytorch_path(interpreted):
    error = interpreted['triton_error']
    assert error and 'PassManager::run failed' in error and "attn_impl='torch'" in error


if __name__ == '__main__':
    print(json.dumps(interpreted_cases()))
