"""The fused Triton kernels against the plain reference, forward and gradients.

There is no GPU in CI, so the kernels run in Triton's CPU interpreter. ``TRITON_INTERPRET``
must be set before Triton is imported and must not leak into the other tests, so the
comparisons run once in a child process (this file run as a script) and the tests check
the errors it reports.
"""
import json

import pytest
import torch

from triton_interpreter import run_under_interpreter

# (batch, heads, queries N, keys n, head dims d, chunk, layout): odd token counts, n != N,
# several chunks per reduction (chunk 32 with 97 tokens), every supported head dim (16,
# 32 as Swin, 64 as PVT), and inputs that are views of (B, L, h*d) maps ('interleaved'),
# as the layers pass them
CASES = [(2, 3, 33, 33, 32, 1024, 'interleaved'), (1, 2, 1, 7, 32, 32, 'contiguous'),
         (1, 1, 97, 70, 64, 32, 'contiguous'), (2, 2, 7, 33, 64, 32, 'interleaved'),
         (1, 4, 40, 3, 32, 1024, 'contiguous'), (1, 2, 19, 45, 16, 32, 'interleaved')]
# 'float32+bfloat16': q, k in fp32 and v in bf16, as bf16 autocast hands them to the core
DTYPES = ('float32', 'bfloat16', 'float16', 'float32+bfloat16')
TOLERANCE = {'float32': 1e-4, 'bfloat16': 2e-2, 'float16': 2e-2, 'float32+bfloat16': 2e-2}


def kernel_inputs(shape, dtype, seed):
    """make_inputs for a DTYPES entry 'qk[+v]'."""
    from test_ops_pola_torch import make_inputs
    qk_dtype, _, v_dtype = dtype.partition('+')
    inputs, grad = make_inputs(*shape, getattr(torch, qk_dtype), seed=seed)
    inputs[2] = inputs[2].to(getattr(torch, v_dtype or qk_dtype))
    return inputs, grad


def compare_all(device='cpu'):
    """Relative errors {case + dtype: {out, q, k, v, p}} of the kernels against the
    reference; on 'cpu' (the child process) through the interpreter."""
    from pola_mm.ops.pola_reference import plain_polarity_attention
    from pola_mm.ops.pola_triton import polarity_linear_attention_triton, triton_interpreted
    from test_ops_pola_torch import forward_backward, rel_err
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
            out, grads = forward_backward(
                lambda *t: polarity_linear_attention_triton(*t, chunk=chunk), inputs, grad)
            # fp32: float64 ground truth; half: the reference with the same half inputs
            ref_inputs = [t.double() for t in inputs] if dtype == 'float32' else inputs
            ref, ref_grads = forward_backward(plain_polarity_attention, ref_inputs, grad)
            errors = {'out': rel_err(out, ref), 'dtype_kept': out.dtype == inputs[0].dtype}
            for name, ours, theirs in zip('qkvp', grads, ref_grads):
                errors[name] = rel_err(ours, theirs)
            results[str(case) + dtype] = errors
    results['scale'] = compare_scaled_dispatch(device)
    results['half_output'] = compare_half_output(device)
    return results


def compare_scaled_dispatch(device):
    """Errors of ``polarity_linear_attention(..., impl='triton', scale=s)`` (which divides q
    and k before the kernels) against the reference of q / s and k / s, in float64."""
    from pola_mm.ops.pola_reference import plain_polarity_attention
    from pola_mm.ops.polarity_attention import polarity_linear_attention
    from test_ops_pola_torch import forward_backward, rel_err
    shape = CASES[0][:5]
    inputs, grad = kernel_inputs(shape, 'float32', seed=1)
    scale = 0.5 + torch.rand(1, shape[1], 1, shape[4], generator=torch.Generator().manual_seed(2))
    inputs, grad = [t.to(device) for t in inputs + [scale]], grad.to(device)
    out, grads = forward_backward(
        lambda q, k, v, p, s: polarity_linear_attention(q, k, v, p, impl='triton', scale=s),
        inputs, grad)
    ref, ref_grads = forward_backward(
        lambda q, k, v, p, s: plain_polarity_attention(q / s, k / s, v, p),
        [t.double() for t in inputs], grad.double())
    errors = {'out': rel_err(out, ref), 'dtype_kept': out.dtype == inputs[0].dtype}
    for name, ours, theirs in zip(('q', 'k', 'v', 'p', 'scale'), grads, ref_grads):
        errors[name] = rel_err(ours, theirs)
    return errors


def compare_half_output(device):
    """Under autocast the layer hands the core bf16 q, k, v and an fp32 scale, so q / scale
    is fp32: the result must still be bf16, as the PyTorch path's, and match it."""
    from pola_mm.ops.polarity_attention import polarity_linear_attention
    from test_ops_pola_torch import forward_backward, rel_err
    shape = CASES[0][:5]
    inputs, grad = kernel_inputs(shape, 'bfloat16', seed=3)
    scale = 0.5 + torch.rand(1, shape[1], 1, shape[4], generator=torch.Generator().manual_seed(4))
    inputs, grad = [t.to(device) for t in inputs + [scale]], grad.to(device)
    results = {}
    for impl in ('triton', 'torch'):
        results[impl] = forward_backward(
            lambda q, k, v, p, s: polarity_linear_attention(q, k, v, p, impl=impl, scale=s),
            inputs, grad)
    (out, grads), (ref, ref_grads) = results['triton'], results['torch']
    errors = {'out': rel_err(out, ref), 'dtype_kept': out.dtype == torch.bfloat16}
    for name, ours, theirs in zip(('q', 'k', 'v', 'p', 'scale'), grads, ref_grads):
        errors[name] = rel_err(ours, theirs)
    return errors


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


def test_dispatch_divides_by_scale_before_kernels(interpreter_results):
    check_errors(interpreter_results['scale'], 'float32')


def test_compiled_dispatch_divides_by_scale_on_cuda(cuda_results):
    check_errors(cuda_results['scale'], 'float32')


def test_output_keeps_the_input_dtype_under_autocast(interpreter_results):
    check_errors(interpreter_results['half_output'], 'bfloat16')


def test_compiled_output_keeps_the_input_dtype_on_cuda(cuda_results):
    check_errors(cuda_results['half_output'], 'bfloat16')


def test_triton_path_refuses_cpu_tensors_without_interpreter():
    from pola_mm.ops.pola_triton import polarity_linear_attention_triton, triton_interpreted
    if triton_interpreted():
        pytest.skip('TRITON_INTERPRET is set in this process')
    q = torch.randn(1, 1, 4, 32)
    with pytest.raises(RuntimeError, match="CUDA.*attn_impl='torch'"):
        polarity_linear_attention_triton(q, q, q, torch.ones(1, 1, 1, 32))


@pytest.mark.parametrize('dims,chunk,match', [(24, 1024, 'head dims'), (128, 1024, 'head dims'),
                                              (32, 48, 'chunk')])
def test_triton_path_refuses_unsupported_arguments(dims, chunk, match):
    from pola_mm.ops.pola_triton import polarity_linear_attention_triton
    q = torch.randn(1, 1, 4, dims)
    with pytest.raises(ValueError, match=match):
        polarity_linear_attention_triton(q, q, q, torch.ones(1, 1, 1, dims), chunk=chunk)


if __name__ == '__main__':
    print(json.dumps(compare_all()))
