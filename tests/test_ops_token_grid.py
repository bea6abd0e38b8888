"""Resizing of positional tables: the training path (two matrix products) against
``F.interpolate`` in float64, values and gradients."""
import pytest
import torch
import torch.nn.functional as F

from pola_mm.ops.token_grid import bicubic_matrix, resize_token_grid


def interpolate_reference(tokens, src_shape, hw_shape, mode):
    grid = tokens.double().reshape(1, *src_shape, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=hw_shape, mode=mode, align_corners=False)
    return grid.flatten(2).transpose(1, 2)


def rel_err(ours, ref):
    return ((ours.double() - ref).norm() / ref.norm()).item()


# up, down, mixed and to a single token; (56, 56) -> (200, 336) is Swin-T stage 1 at 1344x800
@pytest.mark.parametrize('src_shape,hw_shape', [((56, 56), (200, 336)), ((7, 7), (3, 5)),
                                                ((14, 14), (14, 9)), ((8, 8), (1, 1))])
def test_trainable_bicubic_resize_equals_interpolate(src_shape, hw_shape):
    gen = torch.Generator().manual_seed(hw_shape[0])
    table = torch.randn(1, src_shape[0] * src_shape[1], 6, generator=gen, dtype=torch.float64)
    leaf = table.float().requires_grad_()
    resized = resize_token_grid(leaf, src_shape, hw_shape, 'bicubic')
    assert resized.shape == (1, hw_shape[0] * hw_shape[1], 6)
    reference = table.clone().requires_grad_()
    expected = interpolate_reference(reference, src_shape, hw_shape, 'bicubic')
    assert rel_err(resized, expected) < 1e-6
    grad = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
    resized.backward(grad.float())
    expected.backward(grad)
    assert rel_err(leaf.grad, reference.grad) < 1e-6
    # without a gradient the table goes through F.interpolate: the same values
    with torch.no_grad():
        assert rel_err(resize_token_grid(leaf, src_shape, hw_shape, 'bicubic'), expected) < 1e-5


def test_bicubic_matrix_rows_sum_to_one_and_are_cached():
    matrix = bicubic_matrix(56, 200, torch.device('cpu'))
    assert matrix.shape == (200, 56)
    torch.testing.assert_close(matrix.sum(1), torch.ones(200))
    assert bicubic_matrix(56, 200, torch.device('cpu')) is matrix


def test_same_grid_is_returned_unchanged():
    table = torch.randn(1, 49, 4, requires_grad=True)
    assert resize_token_grid(table, (7, 7), (7, 7), 'bicubic') is table


def test_trainable_resize_stays_float32_under_autocast():
    table = torch.randn(1, 49, 4, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        resized = resize_token_grid(table, (7, 7), (9, 11), 'bicubic')
    assert resized.dtype == torch.float32
    expected = interpolate_reference(table.detach(), (7, 7), (9, 11), 'bicubic')
    assert rel_err(resized, expected) < 1e-6
