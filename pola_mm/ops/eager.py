"""Whether a call runs eagerly on real tensors: only then may it cache tensors for later
calls or read tensor values on the host."""
import torch


def running_eagerly() -> bool:
    """Whether a tensor built now is a plain eager tensor, which later calls may reuse and
    whose values may be read.

    False while tracing: exporting to ONNX, under ``torch.jit.trace``, ``torch.compile`` or
    ``torch.export``,
    and under any mode that makes new tensors fake or functional (e.g. a
    ``FakeTensorMode`` of a tracer), where a cached tensor would outlive its trace and be
    handed to later eager calls.
    """
    if (torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or
            torch.compiler.is_compiling() or torch.compiler.is_exporting()):
        return False
    return type(torch.empty(0)) is torch.Tensor
