"""The fused Triton kernels against the plain reference, forward and gradients.

There is no GPU in CI, so the kernels run in Triton's CPU interpreter. ``TRITON_INTERPRET``
must be set before Triton is imported and must not leak into the other tests, so the
comparisons run once in a child process (this file run as a script) and the tests check
the errors it reports.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# (batch, heads, queries N, keys n, head dims d, chunk): odd token counts, n != N,
# several chunks per reduction (chunk 32 with 97 tokens), d 32 (Swin) and 64 (PVT)
CASES = [(2, 3, 33, 33, 32, 1024), (1, 2, 1, 7, 32, 32), (1, 1, 97, 70, 64, 32),
         (2, 2, 7, 33, 64, 32), (1, 4, 40, 3, 32, 1024)]
DTYPES = ('float32', 'bfloat16', 'float16')
TOLERANCE = {'float32': 1e-4, 'bfloat16': 2e-2, 'float16': 2e-2}


def compare_all():
    """Child process: max relative errors {case: {dtype: {out, q, k, v, power}}}."""
    from pola_mm.ops.pola_triton import polarity_linear_attention_triton, triton_interpreted
    from reference_pola import plain_polarity_attention
    from test_ops_pola_torch import forward_backward, make_inputs, rel_err
    assert triton_interpreted()
    results = {}
    for case in CASES:
        *shape, chunk = case
        for dtype in DTYPES:
            inputs, grad = make_inputs(*shape, getattr(torch, dtype), seed=sum(shape))
            out, grads = forward_backward(
                lambda *t: polarity_linear_attention_triton(*t, chunk=chunk), inputs, grad)
            # fp32: float64 ground truth; half: the reference with the same half inputs
            ref_inputs = [t.double() for t in inputs] if dtype == 'float32' else inputs
            ref, ref_grads = forward_backward(plain_polarity_attention, ref_inputs, grad)
            errors = {'out': rel_err(out, ref), 'dtype_kept': out.dtype == inputs[0].dtype}
            for name, ours, theirs in zip('qkvp', grads, ref_grads):
                errors[name] = rel_err(ours, theirs)
            results[str(case) + dtype] = errors
    return results


@pytest.fixture(scope='module')
def interpreter_results():
    tests_dir = Path(__file__).parent
    env = dict(os.environ, TRITON_INTERPRET='1', OMP_NUM_THREADS='1',
               PYTHONPATH=os.pathsep.join([str(tests_dir), str(tests_dir.parent)]))
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('case', CASES)
def test_kernels_match_reference(interpreter_results, case, dtype):
    errors = interpreter_results[str(case) + dtype]
    assert errors.pop('dtype_kept')
    for name, error in errors.items():
        assert error < TOLERANCE[dtype], (name, error)


def test_triton_path_refuses_cpu_tensors_without_interpreter():
    from pola_mm.ops.pola_triton import polarity_linear_attention_triton, triton_interpreted
    if triton_interpreted():
        pytest.skip('TRITON_INTERPRET is set in this process')
    q = torch.randn(1, 1, 4, 32)
    with pytest.raises(RuntimeError, match='CUDA'):
        polarity_linear_attention_triton(q, q, q, torch.ones(1, 1, 1, 32))


@pytest.mark.parametrize('dims,chunk,match', [(24, 1024, 'head dims'), (32, 48, 'chunk')])
def test_triton_path_refuses_unsupported_arguments(dims, chunk, match):
    from pola_mm.ops.pola_triton import polarity_linear_attention_triton
    q = torch.randn(1, 1, 4, dims)
    with pytest.raises(ValueError, match=match):
        polarity_linear_attention_triton(q, q, q, torch.ones(1, 1, 1, dims), chunk=chunk)


if __name__ == '__main__':
    print(json.dumps(compare_all()))
