"""When tensors built during a call may be cached for later calls."""
import torch


def tensor_caching_allowed() -> bool:
    """Whether a tensor built now is a plain eager tensor that later calls may reuse.

    False while tracing: exporting to ONNX, under ``torch.compile`` or ``torch.export``,
    and under any mode that makes new tensors fake or functional (e.g. a
    ``FakeTensorMode`` of a tracer), where a cached tensor would outlive its trace and be
    handed to later eager calls.
    """
    if (torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling() or
            torch.compiler.is_exporting()):
        return False
    return type(torch.empty(0)) is torch.Tensor
