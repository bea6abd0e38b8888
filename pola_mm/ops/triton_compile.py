"""What the fused Triton kernels support, and their ahead-of-time compile check.

One place for the facts the dispatcher (:mod:`.polarity_attention`), the kernels
(:mod:`.pola_triton`), the CI compile test and ``tools/analysis/gpu_check.py`` share: the
head dims the kernels accept, their launch constants, the GPU architectures they must
compile for and the shared memory each of those offers one block.

Triton compiles ahead of time for a named target on a machine without a GPU
(``triton.compile(ASTSource(...), target=GPUTarget('cuda', capability, 32))``), with the
``ptxas`` that ships with it, so CI checks every kernel at every supported head dim and
product precision (:func:`compile_kernel`): it must compile, and its shared memory must fit
the largest block allocation of every architecture of :data:`MAX_SHARED_BYTES`. Head dim
128 does not fit (``_key_backward_kernel`` needs 311,296 bytes with TF32 products, more
than any GPU offers a block), hence :data:`SUPPORTED_HEAD_DIMS`.

Nothing here imports Triton until a kernel is compiled, so the dispatcher can read it on
any PyTorch build.
"""
import re
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

#: Head dims the kernels accept (``tl.dot`` tiles of at least 16) and the dispatcher
#: sends them; each one is compiled for every architecture in CI.
SUPPORTED_HEAD_DIMS = (16, 32, 64)
#: dtypes the kernels read q, k and v in (each its own).
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
#: ``tl.dot`` input precisions the dispatcher may choose.
PRECISIONS = ('ieee', 'tf32')
#: Tokens per block (rows of each ``tl.dot`` tile), warps per program, software pipeline
#: stages of the token loops (tiles of the next blocks loaded while this one is computed;
#: Triton's default) and the most registers a thread may use. With IEEE products ``tl.dot``
#: runs on the FMA units and each thread holds whole 64-wide rows and columns of its
#: operands: at 32-token blocks over 4 warps with no register limit ``ptxas`` gave the
#: backward kernels 32 registers and a stack (sm_90: ``_query_backward_kernel`` spilled
#: 45 KB at head dim 64, 10 KB at head dim 32). 16-token blocks over 16 warps, each thread
#: held to 128 registers (the most 512 threads may have), spill at most a few hundred bytes
#: in any build, and the largest (``_key_backward_kernel`` at head dim 64, TF32 products on
#: fp32 inputs) needs 88 KB of shared memory, within the 99 KB of sm_86/89/120.
BLOCK_TOKENS = 16
#: Tokens per program of the four token kernels (a multiple of :data:`BLOCK_TOKENS`, taken a
#: block at a time): the key and query-backward kernels sum their partial results over that
#: many tokens, and the query kernels read the mixing matrix once per that many.
CHUNK_TOKENS = 256
NUM_WARPS = 16
NUM_STAGES = 3
MAX_REGISTERS = 128
#: The launch options of every kernel, as the launches and the compile check pass them.
LAUNCH_OPTIONS = dict(num_warps=NUM_WARPS, num_stages=NUM_STAGES, maxnreg=MAX_REGISTERS)
#: The six kernels of :mod:`.pola_triton`.
KERNEL_NAMES = ('_key_state_kernel', '_mixing_kernel', '_query_output_kernel',
                '_query_backward_kernel', '_mixing_backward_kernel', '_key_backward_kernel')
#: Largest shared memory one block may allocate (dynamic, opted in), in bytes, per compute
#: capability (NVIDIA's tuning guides of each architecture): A100 163 KB; GeForce/RTX
#: Ampere, Ada and Blackwell 99 KB; H100/H200 and B200 227 KB.
MAX_SHARED_BYTES = {
    80: 163 * 1024,
    86: 99 * 1024,
    89: 99 * 1024,
    90: 227 * 1024,
    100: 227 * 1024,
    120: 99 * 1024,
}
#: Architectures Triton lowers alike (the same tensor-core generation: ``mma`` on sm_80,
#: 86, 89 and 120, ``wgmma`` on sm_90, ``tcgen05`` on sm_100), keyed by the one CI
#: compiles for them; their builds allocate the same shared memory (checked by the slow
#: compile test, which compiles every architecture).
ARCH_FAMILIES = {80: (80, 86, 89, 120), 90: (90, ), 100: (100, )}
#: Pointer arguments that point at q, k, v, the output or their gradients (the input's
#: dtype); every other pointer is a float32 workspace.
_TENSOR_POINTERS = frozenset(
    ('q_ptr', 'k_ptr', 'v_ptr', 'out_ptr', 'grad_out_ptr', 'grad_q_ptr', 'grad_k_ptr',
     'grad_v_ptr'))
_CONSTEXPRS = ('D', 'BLOCK', 'PRECISION')
_TRITON_DTYPES = {'float32': 'fp32', 'bfloat16': 'bf16', 'float16': 'fp16'}


@dataclass(frozen=True)
class KernelBuild:
    """One kernel compiled for one architecture.

    Attributes:
        kernel (str): kernel name.
        capability (int): compute capability, e.g. 90.
        head_dims (int): ``D``.
        precision (str): 'ieee' or 'tf32'.
        shared (int): dynamic shared memory a block needs, in bytes.
        registers (int, optional): registers per thread (``ptxas -v``; None unless
            assembled).
        spill_bytes (int, optional): bytes spilled (stores + loads), as above.
    """
    kernel: str
    capability: int
    head_dims: int
    precision: str
    shared: int
    registers: Optional[int] = None
    spill_bytes: Optional[int] = None

    @property
    def max_shared(self) -> int:
        return MAX_SHARED_BYTES[self.capability]

    @property
    def fits(self) -> bool:
        return self.shared <= self.max_shared

    @property
    def fits_family(self) -> bool:
        """Whether it fits every architecture of :data:`ARCH_FAMILIES` that
        ``capability`` stands for (itself alone if it stands for none)."""
        family = ARCH_FAMILIES.get(self.capability, (self.capability, ))
        return self.shared <= min(MAX_SHARED_BYTES[arch] for arch in family)


def kernel_signature(fn, dtype: str = 'float32') -> Dict[str, str]:
    """Triton signature of one of the kernels: q/k/v/output pointers of ``dtype``
    ('float32', 'bfloat16' or 'float16'), float32 workspaces, ``eps`` and ``alpha`` fp32,
    the other scalars i32 (token counts and strides below 2**31, the ``activate`` flag)."""
    signature = {}
    for name in fn.arg_names:
        if name in _CONSTEXPRS:
            signature[name] = 'constexpr'
        elif name.endswith('_ptr'):
            element = _TRITON_DTYPES[dtype] if name in _TENSOR_POINTERS else 'fp32'
            signature[name] = '*' + element
        else:
            signature[name] = 'fp32' if name in ('eps', 'alpha') else 'i32'
    return signature


def tf32_matmuls_allowed() -> bool:
    """Whether PyTorch's float32 matmul setting allows TF32 on CUDA: its
    ``torch.backends.cuda.matmul.fp32_precision`` (PyTorch 2.9 and later, set directly, by
    ``torch.backends.fp32_precision`` or by ``torch.set_float32_matmul_precision``) where it
    exists, else the legacy ``allow_tf32`` flag. Reading that flag after the new API was
    used raises in PyTorch, hence the order."""
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, 'fp32_precision', None)
    return matmul.allow_tf32 if precision is None else precision == 'tf32'


def kernel_precision(device: torch.device) -> str:
    """``tl.dot`` input precision on ``device``: 'tf32' where PyTorch's float32 matmul
    setting allows TF32 (:func:`tf32_matmuls_allowed`) and the device is an NVIDIA GPU of
    compute capability 8.0 or later; else 'ieee'."""
    if device.type != 'cuda' or torch.version.hip is not None or not tf32_matmuls_allowed():
        return 'ieee'
    return 'tf32' if torch.cuda.get_device_capability(device)[0] >= 8 else 'ieee'


class _StopCompile(Exception):
    """Raised by the stage after the last one wanted; carries that stage's input."""

    def __init__(self, module, metadata: dict):
        super().__init__()
        self.module = module
        self.metadata = metadata


def _stop_after(last_stage: str):
    """A Triton ``add_stages_inspection_hook`` that ends the pipeline after ``last_stage``
    (the stages that follow it are not run)."""

    def hook(backend=None, stages=None, options=None, language=None, capability=None):
        if backend is None:  # Triton asks for a cache key first
            return f'pola_mm_stop_after_{last_stage}', last_stage
        names = list(stages)
        following = names[names.index(last_stage) + 1:]
        for name in following:
            del stages[name]

        def stop(module, metadata):
            raise _StopCompile(module, metadata)

        stages['stop'] = stop

    return hook


def _assemble(ptx: str, capability: int) -> Tuple[int, int]:
    """Assemble PTX with Triton's bundled ``ptxas -v``; return (registers, spill bytes)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
    with tempfile.TemporaryDirectory() as folder:
        source = f'{folder}/kernel.ptx'
        with open(source, 'w') as handle:
            handle.write(ptx)
        result = subprocess.run([
            get_ptxas(capability).path, '-v', '--regAllocOptLevel=2',
            f'--gpu-name={sm_arch_from_capability(capability)}', source, '-o',
            f'{folder}/kernel.cubin'
        ], capture_output=True, text=True, check=True)
    log = result.stdout + result.stderr
    registers = re.search(r'Used (\d+) registers', log)
    spills = re.search(r'(\d+) bytes spill stores, (\d+) bytes spill loads', log)
    if registers is None or spills is None:
        raise RuntimeError(f'unexpected ptxas -v output:\n{log}')
    return int(registers.group(1)), int(spills.group(1)) + int(spills.group(2))


def compile_kernel(kernel: str, head_dims: int, precision: str, capability: int,
                   dtype: str = 'float32', assemble: bool = False) -> KernelBuild:
    """Compile one kernel ahead of time for ``sm_<capability>`` (no GPU needed).

    Args:
        kernel (str): one of :data:`KERNEL_NAMES`.
        head_dims (int): ``D``.
        precision (str): 'ieee' or 'tf32'.
        capability (int): a key of :data:`MAX_SHARED_BYTES`.
        dtype (str): dtype of q/k/v and their gradients.
        assemble (bool): also lower to PTX and assemble it with ``ptxas -v`` to read the
            registers and spills (several times slower); otherwise stop at LLVM IR, where
            the shared memory is already allocated.

    Returns:
        KernelBuild: shared memory, and registers and spills if assembled.
    """
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    from . import pola_triton
    fn = getattr(pola_triton, kernel)
    if not isinstance(fn, JITFunction):
        raise RuntimeError('the kernels compile only in a process where Triton was imported '
                           'without TRITON_INTERPRET=1')
    constexprs = dict(D=head_dims, BLOCK=BLOCK_TOKENS, PRECISION=precision)
    source = ASTSource(fn=fn, signature=kernel_signature(fn, dtype),
                       constexprs={name: constexprs[name] for name in fn.arg_names
                                   if name in constexprs})
    previous = knobs.runtime.add_stages_inspection_hook
    knobs.runtime.add_stages_inspection_hook = _stop_after('ptx' if assemble else 'llir')
    try:
        triton.compile(source, target=GPUTarget('cuda', capability, 32),
                       options=LAUNCH_OPTIONS)
    except _StopCompile as stopped:
        module, metadata = stopped.module, stopped.metadata
    else:
        raise RuntimeError('the compile check hook did not run')
    finally:
        knobs.runtime.add_stages_inspection_hook = previous
    registers = spills = None
    if assemble:
        registers, spills = _assemble(module, capability)
    return KernelBuild(kernel, capability, head_dims, precision, metadata['shared'], registers,
                       spills)
