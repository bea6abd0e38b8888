"""The eager caches (bicubic resize matrices, window masks, a layer's positional
encoding in eval) keep no tensor built while tracing: a call under a tracer's
``FakeTensorMode`` caches nothing, and later eager calls get plain tensors."""
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from pola_mm.models import PolaLinearAttention, ShiftWindowAttention, window_attention
from pola_mm.ops import token_grid
from pola_mm.ops.eager import running_eagerly


def test_only_plain_eager_tensors_count_as_running_eagerly():
    assert running_eagerly()
    with FakeTensorMode():
        assert not running_eagerly()


def test_bicubic_matrices_built_under_fake_tensors_are_not_cached():
    table = torch.randn(1, 16, 8, requires_grad=True)
    token_grid.bicubic_matrix.cache_clear()
    with FakeTensorMode(allow_non_fake_inputs=True):
        traced = token_grid.resize_token_grid(table, (4, 4), (5, 7), 'bicubic')
    assert isinstance(traced, FakeTensor)
    assert token_grid.bicubic_matrix.cache_info().currsize == 0
    out = token_grid.resize_token_grid(table, (4, 4), (5, 7), 'bicubic')
    assert type(out) is torch.Tensor
    assert token_grid.bicubic_matrix.cache_info().currsize == 2  # rows and columns


def test_window_masks_built_under_fake_tensors_are_not_cached():
    layer = ShiftWindowAttention(8, 2, 3, shift=True)
    x = torch.randn(1, 6 * 5, 8)  # a 6x5 map: padded and shifted, so it needs a mask
    window_attention._cached_mask.cache_clear()
    with FakeTensorMode(allow_non_fake_inputs=True):
        layer(x, (6, 5))
    assert window_attention._cached_mask.cache_info().currsize == 0
    out = layer(x, (6, 5))
    assert type(out) is torch.Tensor
    assert window_attention._cached_mask.cache_info().currsize == 1


def test_eval_positional_encoding_built_under_fake_tensors_is_not_cached():
    layer = PolaLinearAttention(16, 2, (4, 4), attn_impl='torch').eval()
    x = torch.randn(1, 6 * 5, 16)
    with torch.no_grad():
        with FakeTensorMode(allow_non_fake_inputs=True):
            layer(x, (6, 5))
        assert layer._pos_cache is None
        out = layer(x, (6, 5))
    assert type(out) is torch.Tensor
    assert type(layer._pos_cache[2]) is torch.Tensor
