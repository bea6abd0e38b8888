"""The fused Triton kernels compile ahead of time for every checked GPU architecture, at
every head dim the dispatcher accepts and each product precision it can choose, and fit
the shared memory those GPUs offer one block.

No GPU needed: Triton compiles for a named target (``GPUTarget('cuda', capability, 32)``)
on CPU. The default run compiles once per family of architectures Triton lowers alike
and stops at LLVM IR, where the shared memory is allocated; the slow run compiles every
architecture, assembles the PTX with Triton's bundled ``ptxas -v`` (registers, spills)
and shows why head dim 128 is not supported.
"""
import pytest

from pola_mm.ops import pola_triton, polarity_attention
from pola_mm.ops.triton_compile import (ARCH_FAMILIES, KERNEL_NAMES, MAX_REGISTERS,
                                        MAX_SHARED_BYTES, PRECISIONS, SUPPORTED_HEAD_DIMS,
                                        compile_kernel)

pytestmark = pytest.mark.skipif(pola_triton.triton_interpreted(),
                                reason='TRITON_INTERPRET is set: nothing compiles')


# the kernels whose products (``tl.dot``) stage operands in shared memory; the two mixing
# kernels only re-arrange small matrices and may need none
PRODUCT_KERNELS = ('_key_state_kernel', '_query_output_kernel', '_query_backward_kernel',
                   '_key_backward_kernel')
# Bytes a build may spill (stores + loads, ``ptxas -v``). The launch options keep every
# build to a few hundred; a kernel that outgrows its registers badly makes ptxas fall back
# to 32 registers and a stack of tens of KB (as 32-token blocks over 4 warps did with IEEE
# products), which this catches.
MAX_SPILL_BYTES = 1024
# head dims of the released models the kernels run (Pola-Swin: 32, Pola-PVT: 64;
# PolaFormer++ has a core of its own), whose builds the default run assembles for H100/H200
RELEASED_HEAD_DIMS = (32, 64)


def kernel_dtype(precision):
    """The inputs the slow run pairs with each precision for its table of registers and
    spills: fp32 for IEEE, bf16 for TF32 (AMP)."""
    return 'float32' if precision == 'ieee' else 'bfloat16'


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('precision', PRECISIONS)
@pytest.mark.parametrize('capability', sorted(ARCH_FAMILIES))
def test_kernels_compile_within_shared_memory(capability, precision, dtype):
    """One build per family of architectures Triton lowers alike, held to the smallest
    block allocation in the family (sm_80's builds to the 99 KB of sm_86/89/120), for
    fp32 inputs and half ones (fp16 builds allocate what bf16 builds do) with either
    precision: the dispatcher takes every pairing (half inputs with IEEE products under
    autocast at PyTorch's default precision, fp32 inputs with TF32 products where TF32 is
    allowed without autocast)."""
    too_large = []
    for dims in SUPPORTED_HEAD_DIMS:
        for kernel in KERNEL_NAMES:
            build = compile_kernel(kernel, dims, precision, capability, dtype=dtype)
            assert build.shared > 0 or kernel not in PRODUCT_KERNELS
            if not build.fits_family:
                too_large.append((kernel, dims, build.shared))
    assert not too_large, f'sm_{capability}, {precision}, {dtype}: shared memory over the limit'


def test_every_architecture_is_checked():
    assert sorted(arch for family in ARCH_FAMILIES.values() for arch in family) == \
        sorted(MAX_SHARED_BYTES)
    assert {80, 86, 89, 90} <= set(MAX_SHARED_BYTES)


def test_dispatcher_accepts_exactly_the_checked_head_dims(monkeypatch):
    import torch
    monkeypatch.setattr(polarity_attention, '_on_checked_gpu', lambda t: True)
    accepted = [dims for dims in range(2, 257, 2)
                if polarity_attention._kernels_apply(*(torch.zeros(1, 1, 1, dims), ) * 3)]
    assert tuple(accepted) == SUPPORTED_HEAD_DIMS
    assert pola_triton.SUPPORTED_HEAD_DIMS is SUPPORTED_HEAD_DIMS


def test_every_supported_head_dim_is_tested_against_the_reference():
    from test_ops_pola_triton import CASES
    assert {case[4] for case in CASES} == set(SUPPORTED_HEAD_DIMS)


@pytest.mark.parametrize('precision,dtype', [('ieee', 'float32'), ('ieee', 'bfloat16'),
                                             ('tf32', 'bfloat16')])
def test_released_head_dims_assemble_without_falling_back_to_the_stack(precision, dtype):
    """The token kernels at the released head dims, assembled for sm_90 as Triton does
    at run time: within the register limit of the launch options, spilling at most
    :data:`MAX_SPILL_BYTES` (fp32 inputs with IEEE products: PyTorch's default precision;
    bf16 inputs: autocast, with IEEE or TF32 products)."""
    spilled = {}
    for dims in RELEASED_HEAD_DIMS:
        for kernel in PRODUCT_KERNELS:
            build = compile_kernel(kernel, dims, precision, 90, dtype=dtype, assemble=True)
            assert 0 < build.registers <= MAX_REGISTERS, (kernel, dims, build.registers)
            spilled[kernel, dims] = build.spill_bytes
    assert max(spilled.values()) <= MAX_SPILL_BYTES, spilled


@pytest.mark.slow
@pytest.mark.parametrize('capability', sorted(MAX_SHARED_BYTES))
def test_kernels_assemble_with_registers_reported(capability, capsys):
    """Every architecture on its own, through ``ptxas -v``: every build assembles, fits
    the architecture's shared memory with the same allocation as the build CI checks for
    its family, keeps to the registers of the launch options and spills at most
    :data:`MAX_SPILL_BYTES`."""
    family = next(key for key, members in ARCH_FAMILIES.items() if capability in members)
    lines = []
    for precision in PRECISIONS:
        for dims in SUPPORTED_HEAD_DIMS:
            for kernel in KERNEL_NAMES:
                build = compile_kernel(kernel, dims, precision, capability,
                                       dtype=kernel_dtype(precision), assemble=True)
                assert build.fits and 0 < build.registers <= MAX_REGISTERS
                assert build.spill_bytes <= MAX_SPILL_BYTES, (kernel, dims, precision)
                if family != capability:
                    assert build.shared == compile_kernel(
                        kernel, dims, precision, family, dtype=kernel_dtype(precision)).shared
                lines.append(f'sm_{capability} {precision} d{dims} {kernel}: shared '
                             f'{build.shared} B, {build.registers} registers, '
                             f'{build.spill_bytes} B spilled')
    with capsys.disabled():
        print('\n' + '\n'.join(lines))


@pytest.mark.slow
def test_head_dim_128_outgrows_every_gpu():
    """With TF32 products the backward kernels need more than any GPU gives a block
    (IEEE builds would fit only sm_90/100)."""
    for kernel, dtype in (('_key_backward_kernel', 'float32'),
                          ('_query_backward_kernel', 'bfloat16')):
        build = compile_kernel(kernel, 128, 'tf32', 90, dtype=dtype)
        assert build.shared > max(MAX_SHARED_BYTES.values()), (kernel, build.shared)
