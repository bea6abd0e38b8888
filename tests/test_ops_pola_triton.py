"""The fused Triton kernels against the plain reference, forward and gradients.

There is no GPU in CI, so the kernels run in Triton's CPU interpreter. ``TRITON_INTERPRET``
must be set before Triton is imported and must not leak into the other tests, so the
comparisons run once in a child process (this file run as a script) and the tests check
the errors it reports.
"""
import json

import pytest
import torch
import triton
import triton.language as tl

from pola_mm.ops.pola_triton import _divisors, _exponents
from triton_interpreter import run_under_interpreter

# (batch, heads, queries N, keys n, head dims d, chunk, layout): odd token counts, n != N,
# several chunks per reduction (chunk 32 with 97 tokens, chunks of one block: 16 with 45),
# every supported head dim (16, 32 as Swin, 64 as PVT), and inputs that are views of
# (B, L, h*d) maps with a per-channel scale ('interleaved'), as the layers pass them
CASES = [(2, 3, 33, 33, 32, 1024, 'interleaved'), (1, 2, 1, 7, 32, 32, 'contiguous'),
         (1, 1, 97, 70, 64, 32, 'contiguous'), (2, 2, 7, 33, 64, 32, 'interleaved'),
         (1, 4, 40, 3, 32, 1024, 'contiguous'), (1, 2, 19, 45, 16, 16, 'interleaved')]
# q, k, v dtypes; 'autocast': bf16 q and v and fp32 k (the bf16 projection plus the fp32
# positional encoding), as bf16 autocast hands them to the core
DTYPES = {'float32': (torch.float32, ) * 3, 'bfloat16': (torch.bfloat16, ) * 3,
          'float16': (torch.float16, ) * 3,
          'autocast': (torch.bfloat16, torch.float32, torch.bfloat16)}
TOLERANCE = {'float32': 1e-4, 'bfloat16': 2e-2, 'float16': 2e-2, 'autocast': 2e-2}


def kernel_inputs(shape, dtype, seed):
    """make_inputs with q, k and v in the dtypes of the DTYPES entry ``dtype``."""
    from test_ops_pola_torch import make_inputs
    inputs, grad = make_inputs(*shape, torch.float32, seed=seed)
    inputs[:3] = [t.to(t_dtype) for t, t_dtype in zip(inputs, DTYPES[dtype])]
    return inputs, grad


def random_scale(heads, dims, seed):
    """A (1, h, 1, d) divisor in [0.5, 1.5) (the models' ``softplus(scale)``)."""
    return 0.5 + torch.rand(1, heads, 1, dims, generator=torch.Generator().manual_seed(seed))


def scaled(fn):
    """``fn(q, k, v, p)`` as a function of (q, k, v, p[, s]) that divides q and k by s."""
    return lambda q, k, v, p, *s: fn(q / s[0], k / s[0], v, p) if s else fn(q, k, v, p)


def errors_between(out, grads, ref, ref_grads, dtype_kept):
    """{out, q, k, v, p[, scale]: relative error, dtype_kept}."""
    from test_ops_pola_torch import rel_err
    errors = {'out': rel_err(out, ref), 'dtype_kept': dtype_kept}
    for name, ours, theirs in zip(('q', 'k', 'v', 'p', 'scale'), grads, ref_grads):
        errors[name] = rel_err(ours, theirs)
    return errors


def triton_against_torch(inputs, grad, out_dtype):
    """Errors of ``polarity_linear_attention(q, k, v, p, scale=s)`` with
    ``impl='triton'`` against ``'torch'`` on ``inputs`` (q, k, v, p, s); the kernels'
    output must have ``out_dtype``."""
    from pola_mm.ops.polarity_attention import polarity_linear_attention
    from test_ops_pola_torch import forward_backward
    (out, grads), (ref, ref_grads) = (
        forward_backward(lambda q, k, v, p, s: polarity_linear_attention(
            q, k, v, p, impl=impl, scale=s), inputs, grad) for impl in ('triton', 'torch'))
    return errors_between(out, grads, ref, ref_grads, out.dtype == out_dtype)


def compare_all(device='cpu'):
    """Relative errors {case + dtype: {out, q, k, v, p[, scale]}} of the kernels against the
    reference; on 'cpu' (the child process) through the interpreter."""
    from pola_mm.ops.pola_reference import plain_polarity_attention
    from pola_mm.ops.pola_triton import polarity_linear_attention_triton, triton_interpreted
    from test_ops_pola_torch import forward_backward
    assert device == 'cuda' or triton_interpreted()
    results = {}
    for case in CASES:
        *shape, chunk, layout = case
        for dtype in DTYPES:
            inputs, grad = kernel_inputs(shape, dtype, seed=sum(shape))
            inputs, grad = [t.to(device) for t in inputs], grad.to(device)
            if layout == 'interleaved':  # (B, h, L, d) views of (B, L, h, d) memory
                inputs[:3] = [t.transpose(1, 2).contiguous().transpose(1, 2)
                              for t in inputs[:3]]
                inputs.append(random_scale(shape[1], shape[4], seed=sum(shape)).to(device))
            out, grads = forward_backward(
                lambda q, k, v, p, *s: polarity_linear_attention_triton(
                    q, k, v, p, chunk=chunk, scale=s[0] if s else None), inputs, grad)
            # fp32: float64 ground truth; half: the reference with the same half inputs
            ref_inputs = [t.double() for t in inputs] if dtype == 'float32' else inputs
            ref, ref_grads = forward_backward(scaled(plain_polarity_attention), ref_inputs,
                                              grad)
            results[str(case) + dtype] = errors_between(out, grads, ref, ref_grads,
                                                        out.dtype == inputs[0].dtype)
    results['scale'] = compare_scaled_dispatch(device)
    results['half_output'] = compare_half_output(device)
    results['broadcast'] = compare_broadcast_parameters(device)
    for dtype in ('float32', 'autocast'):
        results['logits' + dtype] = compare_parameters_before_activation(device, dtype)
    results['activations'] = compare_activations(device)
    results['edge_cases'] = edge_cases(device)
    results['nonfinite_gradient'] = compare_nonfinite_gradient(device)
    return results


def compare_nonfinite_gradient(device):
    """With a NaN and an inf in the incoming gradient: for q, k, v and p, whether the
    kernels' gradient is non-finite exactly where the PyTorch path's is, and the relative
    error of the finite rest."""
    from pola_mm.ops.pola_torch import polarity_linear_attention_torch
    from pola_mm.ops.pola_triton import polarity_linear_attention_triton
    from test_ops_pola_torch import forward_backward, nonfinite_gradient_case, rel_err
    inputs, grad = nonfinite_gradient_case()
    inputs, grad = [t.to(device) for t in inputs], grad.to(device)
    _, grads = forward_backward(polarity_linear_attention_triton, inputs, grad)
    _, ref_grads = forward_backward(polarity_linear_attention_torch, inputs, grad)
    results = {}
    for name, ours, theirs in zip('qkvp', grads, ref_grads):
        finite = torch.isfinite(theirs)
        results[name] = [bool((~finite).any()),
                         torch.equal(torch.isfinite(ours), finite),
                         rel_err(ours[finite], theirs[finite]) if finite.any() else 0.]
    return results


def edge_cases(device):
    """Through the kernels: an empty batch and an empty query set (output shape, gradient
    sums), and a second differentiation (its error message)."""
    from pola_mm.ops.pola_triton import polarity_linear_attention_triton
    results = {}
    for name, (batch, queries) in {'empty_batch': (0, 5), 'no_queries': (2, 0)}.items():
        q = torch.randn(batch, 2, queries, 16, device=device, requires_grad=True)
        k, v = (torch.randn(batch, 2, 5, 16, device=device, requires_grad=True)
                for _ in range(2))
        power, scale = (torch.rand(1, 2, 1, 16, device=device, requires_grad=True) + 1
                        for _ in range(2))
        out = polarity_linear_attention_triton(q, k, v, power, scale=scale)
        grads = torch.autograd.grad(out.sum(), (q, k, v, power, scale))
        results[name] = [list(out.shape)] + [g.abs().sum().item() for g in grads]
    q = torch.randn(1, 2, 9, 16, device=device, requires_grad=True)
    out = polarity_linear_attention_triton(q, q.detach(), q.detach(),
                                           torch.full((1, 2, 1, 16), 2., device=device))
    grad_q, = torch.autograd.grad(out.square().sum(), q, create_graph=True)
    try:
        grad_q.square().sum().backward()
        results['second_order'] = 'no error'
    except RuntimeError as error:
        results['second_order'] = str(error)
    return results


def compare_parameters_before_activation(device, dtype):
    """The layers hand the core their power and scale parameters before the activations
    (``alpha`` given): the kernels apply ``1 + alpha * sigmoid`` and ``softplus``
    themselves. Errors of output and gradients (those of the two parameters included)
    against the PyTorch path, which applies them first; the q, k, v dtypes of ``dtype``,
    heads interleaved as the layers pass them."""
    from pola_mm.ops.polarity_attention import polarity_linear_attention
    from test_ops_pola_torch import forward_backward
    _, heads, _, _, dims = shape = CASES[0][:5]
    inputs, grad = kernel_inputs(shape, dtype, seed=7)
    gen = torch.Generator().manual_seed(8)
    inputs[:3] = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in inputs[:3]]
    inputs[3] = 2 * torch.randn(1, heads, 1, dims, generator=gen)
    inputs.append(2 * torch.randn(1, heads, 1, dims, generator=gen))
    inputs, grad = [t.to(device) for t in inputs], grad.to(device)
    (out, grads), (ref, ref_grads) = (
        forward_backward(lambda q, k, v, p, s: polarity_linear_attention(
            q, k, v, p, impl=impl, scale=s, alpha=4.), inputs, grad)
        for impl in ('triton', 'torch'))
    return errors_between(out, grads, ref, ref_grads, out.dtype == inputs[0].dtype)


@triton.jit
def _activation_probe(power_ptr, scale_ptr, out_ptr, alpha, activate, D: tl.constexpr):
    """Stores the kernels' exponents, divisors and their slopes (4, d) for one table."""
    power, power_slope = _exponents(power_ptr, 0, alpha, activate, D)
    scale, scale_slope = _divisors(scale_ptr, 0, activate, D)
    cols = tl.arange(0, D)
    tl.store(out_ptr + cols, power)
    tl.store(out_ptr + D + cols, power_slope)
    tl.store(out_ptr + 2 * D + cols, scale)
    tl.store(out_ptr + 3 * D + cols, scale_slope)


def compare_activations(device):
    """Largest relative errors of the kernels' activations and slopes (activated and not)
    against PyTorch's ``1 + 4 * sigmoid``, ``softplus`` and their autograd derivatives, on
    parameters from -40 to 40 (both sides of softplus' threshold 20, and the far negative
    side where ``1 + exp(x)`` rounds to 1)."""
    table = torch.cat([torch.linspace(-40., 40., 57), torch.tensor([-17., 19.9, 20., 20.1,
                                                                   -1e-3, 0., 1e-3])])
    table = table.to(device)
    leaf = table.detach().clone().requires_grad_()
    power, scale = 1 + 4 * torch.sigmoid(leaf), torch.nn.functional.softplus(leaf)
    power_slope, = torch.autograd.grad(power.sum(), leaf)
    scale_slope, = torch.autograd.grad(scale.sum(), leaf)
    expected = {1: torch.stack([power, power_slope, scale, scale_slope]).detach(),
                0: torch.stack([table, torch.ones_like(table)] * 2)}
    errors = {}
    for activate, wanted in expected.items():
        out = torch.empty(4, table.numel(), device=device)
        _activation_probe[(1, )](table, table, out, 4., activate, D=table.numel())
        relative = (out - wanted).abs() / wanted.abs().clamp(min=1e-30)
        errors[activate] = relative.max(1).values.tolist()
    return errors


def compare_broadcast_parameters(device):
    """A power shared by the heads (1, 1, 1, d) and a scale shared by the channels
    (1, h, 1, 1): errors of the kernels' output and gradients (those of the two parameters
    in their own shapes) against the PyTorch path's, in float32."""
    _, heads, _, _, dims = shape = CASES[0][:5]
    inputs, grad = kernel_inputs(shape, 'float32', seed=5)
    gen = torch.Generator().manual_seed(6)
    inputs[3] = 1 + 2 * torch.rand(1, 1, 1, dims, generator=gen)
    inputs.append(0.5 + torch.rand(1, heads, 1, 1, generator=gen))
    inputs, grad = [t.to(device) for t in inputs], grad.to(device)
    return triton_against_torch(inputs, grad, torch.float32)


def compare_scaled_dispatch(device):
    """Errors of ``polarity_linear_attention(..., impl='triton', scale=s)`` (which hands
    the scale to the kernels' mixing matrices) against the reference of q / s and k / s,
    in float64."""
    from pola_mm.ops.pola_reference import plain_polarity_attention
    from pola_mm.ops.polarity_attention import polarity_linear_attention
    from test_ops_pola_torch import forward_backward
    shape = CASES[0][:5]
    inputs, grad = kernel_inputs(shape, 'float32', seed=1)
    scale = random_scale(shape[1], shape[4], seed=2)
    inputs, grad = [t.to(device) for t in inputs + [scale]], grad.to(device)
    out, grads = forward_backward(
        lambda q, k, v, p, s: polarity_linear_attention(q, k, v, p, impl='triton', scale=s),
        inputs, grad)
    ref, ref_grads = forward_backward(scaled(plain_polarity_attention),
                                      [t.double() for t in inputs], grad.double())
    return errors_between(out, grads, ref, ref_grads, out.dtype == inputs[0].dtype)


def compare_half_output(device):
    """Under autocast the layer hands the core bf16 q and v, fp32 k and an fp32 scale: the
    result must be bf16, as the PyTorch path's, and match it."""
    shape = CASES[0][:5]
    inputs, grad = kernel_inputs(shape, 'autocast', seed=3)
    scale = random_scale(shape[1], shape[4], seed=4)
    inputs, grad = [t.to(device) for t in inputs + [scale]], grad.to(device)
    return triton_against_torch(inputs, grad, torch.bfloat16)


@pytest.fixture(scope='module')
def interpreter_results():
    return run_under_interpreter(__file__)


@pytest.fixture(scope='module')
def cuda_results():
    if not torch.cuda.is_available():
        pytest.skip('no CUDA device: the compiled kernels are checked through the interpreter')
    return compare_all('cuda')


def check_errors(errors, dtype):
    assert errors.pop('dtype_kept')
    for name, error in errors.items():
        assert error < TOLERANCE[dtype], (name, error)


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('case', CASES)
def test_kernels_match_reference(interpreter_results, case, dtype):
    check_errors(interpreter_results[str(case) + dtype], dtype)


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('case', CASES)
def test_compiled_kernels_match_reference_on_cuda(cuda_results, case, dtype):
    check_errors(cuda_results[str(case) + dtype], dtype)


def test_dispatch_hands_the_scale_to_the_kernels(interpreter_results):
    check_errors(interpreter_results['scale'], 'float32')


def test_compiled_dispatch_hands_the_scale_to_the_kernels_on_cuda(cuda_results):
    check_errors(cuda_results['scale'], 'float32')


def test_parameters_shared_by_heads_or_channels(interpreter_results):
    check_errors(interpreter_results['broadcast'], 'float32')


def test_compiled_parameters_shared_by_heads_or_channels_on_cuda(cuda_results):
    check_errors(cuda_results['broadcast'], 'float32')


def test_output_keeps_the_input_dtype_under_autocast(interpreter_results):
    check_errors(interpreter_results['half_output'], 'bfloat16')


def test_compiled_output_keeps_the_input_dtype_on_cuda(cuda_results):
    check_errors(cuda_results['half_output'], 'bfloat16')


@pytest.mark.parametrize('results', ['interpreter_results', 'cuda_results'])
def test_half_output_costs_the_parameter_gradients_no_precision(request, results):
    """Their gradients go through the normalisers, which need the output in fp32: the
    backward recomputes it rather than reading the stored bf16 output (that cost them
    about 1e-2 relative); the PyTorch path keeps it in fp32."""
    errors = request.getfixturevalue(results)['half_output']
    assert errors['p'] < 1e-4 and errors['scale'] < 1e-4, errors


@pytest.mark.parametrize('dtype', ['float32', 'autocast'])
def test_kernels_apply_the_parameter_activations(interpreter_results, dtype):
    check_errors(interpreter_results['logits' + dtype], dtype)


@pytest.mark.parametrize('dtype', ['float32', 'autocast'])
def test_compiled_kernels_apply_the_parameter_activations_on_cuda(cuda_results, dtype):
    check_errors(cuda_results['logits' + dtype], dtype)


def test_activations_match_pytorch_to_a_few_ulps(interpreter_results):
    """Exponents, divisors and slopes of the kernels as PyTorch's, activated or not."""
    for activate, errors in interpreter_results['activations'].items():
        assert max(errors) < 1e-6, (activate, errors)


def test_compiled_activations_match_pytorch_on_cuda(cuda_results):
    for activate, errors in cuda_results['activations'].items():
        assert max(errors) < 1e-6, (activate, errors)


@pytest.mark.parametrize('name,shape', [('empty_batch', [0, 2, 5, 16]),
                                        ('no_queries', [2, 2, 0, 16])])
def test_kernels_take_empty_inputs(interpreter_results, name, shape):
    out_shape, *grad_sums = interpreter_results['edge_cases'][name]
    assert out_shape == shape and grad_sums == [0.] * 5


@pytest.mark.parametrize('name,shape', [('empty_batch', [0, 2, 5, 16]),
                                        ('no_queries', [2, 2, 0, 16])])
def test_compiled_kernels_take_empty_inputs_on_cuda(cuda_results, name, shape):
    out_shape, *grad_sums = cuda_results['edge_cases'][name]
    assert out_shape == shape and grad_sums == [0.] * 5


@pytest.mark.parametrize('results', ['interpreter_results', 'cuda_results'])
def test_nonfinite_incoming_gradient_is_kept(request, results):
    """A NaN and an inf in the incoming gradient leave the kernels' gradients non-finite
    where the PyTorch path's are (which match the reference's), the rest equal."""
    compared = request.getfixturevalue(results)['nonfinite_gradient']
    for name, (some_nonfinite, same_places, error) in compared.items():
        assert some_nonfinite and same_places and error < 1e-4, name


def test_kernels_refuse_second_order_gradients(interpreter_results):
    assert 'differentiate twice' in interpreter_results['edge_cases']['second_order']


def test_parameters_before_activation_need_the_scale():
    from pola_mm.ops.polarity_attention import polarity_linear_attention
    q = torch.randn(1, 1, 4, 32)
    with pytest.raises(ValueError, match='alpha.*scale is missing'):
        polarity_linear_attention(q, q, q, torch.zeros(1, 1, 1, 32), alpha=4.)


def test_triton_path_refuses_cpu_tensors_without_interpreter():
    from pola_mm.ops.pola_triton import polarity_linear_attention_triton, triton_interpreted
    if triton_interpreted():
        pytest.skip('TRITON_INTERPRET is set in this process')
    q = torch.randn(1, 1, 4, 32)
    with pytest.raises(RuntimeError, match="CUDA.*attn_impl='torch'"):
        polarity_linear_attention_triton(q, q, q, torch.ones(1, 1, 1, 32))


@pytest.mark.parametrize('dims,chunk,match', [(24, 1024, 'head dims'), (128, 1024, 'head dims'),
                                              (32, 40, 'chunk')])
def test_triton_path_refuses_unsupported_arguments(dims, chunk, match):
    from pola_mm.ops.pola_triton import polarity_linear_attention_triton
    q = torch.randn(1, 1, 4, dims)
    with pytest.raises(ValueError, match=match):
        polarity_linear_attention_triton(q, q, q, torch.ones(1, 1, 1, dims), chunk=chunk)


if __name__ == '__main__':
    print(json.dumps(compare_all()))
