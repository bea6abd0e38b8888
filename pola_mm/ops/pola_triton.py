"""Fused Triton kernels for the polarity-aware linear attention core.

The algebra of :mod:`pola_mm.ops.pola_torch` in its (2d)-wide form: with
``Q = [q+, q-]`` and ``W = [[P1, M2, m+, m-], [M1, P2, m-, m+]]`` (2d, d + 2) built from
``P = k+^T v / n``, ``M = k-^T v / n`` and the key means ``m±``, the output is ``Q @ W``
normalised by its last two columns. Six kernels, with fp32 accumulation; the four over the
tokens run per (batch x head) and chunk of tokens and compute the polarity features on
chip (never written to global memory):

* ``_key_state_kernel``: per-chunk partial sums of ``[k+, k-]^T [v, 1]`` (2d, d + 1);
* ``_mixing_kernel``: the key state (their sum) -> ``W``, the lean path's
  :class:`~pola_mm.ops.pola_torch.MixingMatrix` with its row weight ``scale^-2p / n``
  (:func:`~pola_mm.ops.pola_torch.scale_row_weight` over the key count) computed in place;
* ``_query_output_kernel``: the output and the reciprocal normalisers (N, 2);
* ``_query_backward_kernel``: ``dq``, partial ``dW`` and partial ``d power``;
* ``_mixing_backward_kernel``: ``dW`` (summed) -> the key state's gradient, and the row
  weight's share of ``d power`` and ``d scale``;
* ``_key_backward_kernel``: ``dk``, ``dv`` and partial ``d power``.

Partial sums over chunks are added in PyTorch (deterministic, no atomics). The per-channel
``scale`` that divides q and k thus enters only the small ``W``: the kernels read q and k
as the projections left them, and no divided copy of either is made or kept for backward;
the row weight and its gradient are computed inside the two mixing kernels. Given
``alpha``, the power and scale tables are the layers' parameters before their
activations, and every kernel applies ``1 + alpha * sigmoid`` and ``softplus`` (and the
backward kernels their derivatives) to the few values it reads; the partial gradients of
both tables lie in one buffer, added up by one reduction.
q, k and v may be strided views (heads split off a (B, L, h*d) projection, no copy); the
output is laid out as (B, N, h, d) in memory, so merging its heads costs no copy either.
Each of q, k and v may be fp32, bf16 or fp16 (under autocast q and v arrive in half and
k in fp32, after the addition of the fp32 positional encoding); the output has the dtype
asked for (the PyTorch path's: the input's). The products run in TF32 where PyTorch's own
float32 matmul setting allows it (``torch.backends.cuda.matmul.fp32_precision``) on an NVIDIA
GPU of compute capability 8.0 or later, else in IEEE fp32
(:func:`~pola_mm.ops.triton_compile.kernel_precision`).
Head dims must be one of :data:`~pola_mm.ops.triton_compile.SUPPORTED_HEAD_DIMS` (those
that compile within every checked GPU's shared memory); any token count is masked. Each
program of the token kernels handles one chunk of tokens of one (batch x head), a block at
a time (the query kernels read ``W`` once per chunk), each program of the mixing kernels
one (batch x head), all on grid axis 0 (up to 2**31 - 1 programs: no limit on batch x
heads short of the tensors' sizes), with 64-bit offsets where a workspace may pass 2**31
elements. Launches are made on the inputs' device.
"""
from contextlib import nullcontext
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable
from triton.runtime.interpreter import InterpretedFunction

from .pola_torch import activate_parameters, check_polarity_inputs, polarity_linear_attention_torch
from .triton_compile import (BLOCK_TOKENS, CHUNK_TOKENS, KERNEL_DTYPES, LAUNCH_OPTIONS,
                             SUPPORTED_HEAD_DIMS, kernel_precision)


@triton.jit
def _polarity_features(x, power):
    """x (T, d) fp32, power (d,) -> |x|^p (T, d), 0 where x == 0."""
    magnitude = tl.abs(x)
    nonzero = magnitude > 0
    return tl.where(nonzero, tl.exp2(power[None, :] * tl.log2(tl.where(nonzero, magnitude, 1.))),
                    0.)


@triton.jit
def _features_backward(x, magnitude, grad_pos, grad_neg, power):
    """Gradient of ``[relu(x)^p, relu(-x)^p]`` for x and (summed over rows) for p."""
    grad_mag = tl.where(x > 0, grad_pos, grad_neg)
    nonzero = x != 0
    safe_x = tl.where(nonzero, x, 1.0)
    grad_x = tl.where(nonzero, grad_mag * power[None, :] * magnitude / safe_x, 0.0)
    grad_power = tl.where(nonzero, grad_mag * magnitude * tl.log(tl.abs(safe_x)), 0.0)
    return grad_x, tl.sum(grad_power, axis=0)


@triton.jit
def _exponents(power_ptr, head, alpha, activate, D: tl.constexpr):
    """The exponents p (d,) of ``head`` and dp / d(table) (d,): the table itself, or
    where ``activate`` the layers' ``1 + alpha * sigmoid(table)``."""
    raw = tl.load(power_ptr + head * D + tl.arange(0, D))
    gate = tl.sigmoid(raw)
    power = tl.where(activate != 0, 1. + alpha * gate, raw)
    return power, tl.where(activate != 0, alpha * gate * (1. - gate), 1.)


@triton.jit
def _divisors(scale_ptr, head, activate, D: tl.constexpr):
    """The divisors (d,) of ``head`` and their derivative by the table (d,): the table
    itself, or where ``activate`` ``softplus(table)`` (PyTorch's, threshold 20; its log1p
    in Goldberg's accurate form ``log(u) * e / (u - 1)``, ``u = 1 + e``)."""
    raw = tl.load(scale_ptr + head * D + tl.arange(0, D))
    e = tl.exp(tl.minimum(raw, 20.))
    u = 1. + e
    log1p = tl.where(u == 1., e, tl.log(u) * (e / tl.where(u == 1., 1., u - 1.)))
    softplus = tl.where(raw > 20., raw, log1p)
    return (tl.where(activate != 0, softplus, raw),
            tl.where(activate != 0, tl.sigmoid(raw), 1.))


@triton.jit
def _tile(ptr, bh, num_heads, stride_b, stride_h, stride_n, rows, cols):
    """Pointers to the (rows, cols) tile of head ``bh`` of a (B, h, L, d) tensor whose
    last dim is contiguous (any other strides: e.g. heads split off a (B, L, h*d) map)."""
    batch = (bh // num_heads).to(tl.int64)
    return (ptr + batch * stride_b + (bh % num_heads) * stride_h + rows[:, None] * stride_n +
            cols[None, :])


@triton.jit
def _token_program(num_tokens, span):
    """This program's place in a token kernel's grid: one axis of (batch x head) x parts
    of ``span`` tokens, parts fastest. Returns (program index, batch x head, part), the
    first two as int64 (for offsets past 2**31 elements)."""
    index = tl.program_id(0)
    parts = tl.cdiv(num_tokens, span)
    return index.to(tl.int64), (index // parts).to(tl.int64), index % parts


@triton.jit(do_not_specialize=['activate'])
def _key_state_kernel(k_ptr, v_ptr, power_ptr, state_ptr, num_keys, num_heads, chunk,
                      alpha, activate, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh,
                      stride_vn, D: tl.constexpr, BLOCK: tl.constexpr, PRECISION: tl.constexpr):
    """state[bh, c] = sum over the chunk's keys of [k+, k-]^T [v, 1]: (2d, d + 1)."""
    index, bh, part = _token_program(num_keys, chunk)
    cols = tl.arange(0, D)
    power, _ = _exponents(power_ptr, bh % num_heads, alpha, activate, D)
    acc_pos = tl.zeros((D, D), dtype=tl.float32)
    acc_neg = tl.zeros((D, D), dtype=tl.float32)
    sum_pos = tl.zeros((D, ), dtype=tl.float32)
    sum_neg = tl.zeros((D, ), dtype=tl.float32)
    for start in range(part * chunk, tl.minimum(part * chunk + chunk, num_keys), BLOCK):
        rows = start + tl.arange(0, BLOCK)
        mask = (rows < num_keys)[:, None]
        k = tl.load(_tile(k_ptr, bh, num_heads, stride_kb, stride_kh, stride_kn, rows, cols),
                    mask=mask, other=0.).to(tl.float32)
        v = tl.load(_tile(v_ptr, bh, num_heads, stride_vb, stride_vh, stride_vn, rows, cols),
                    mask=mask, other=0.).to(tl.float32)
        magnitude = _polarity_features(k, power)
        k_pos = tl.where(k > 0, magnitude, 0.)
        k_neg = tl.where(k < 0, magnitude, 0.)
        acc_pos += tl.dot(tl.trans(k_pos), v, input_precision=PRECISION)
        acc_neg += tl.dot(tl.trans(k_neg), v, input_precision=PRECISION)
        sum_pos += tl.sum(k_pos, axis=0)
        sum_neg += tl.sum(k_neg, axis=0)
    out = state_ptr + index * (2 * D * (D + 1))
    matrix = cols[:, None] * (D + 1) + cols[None, :]
    tl.store(out + matrix, acc_pos)
    tl.store(out + D * (D + 1) + matrix, acc_neg)
    tl.store(out + cols * (D + 1) + D, sum_pos)
    tl.store(out + D * (D + 1) + cols * (D + 1) + D, sum_neg)


@triton.jit
def _row_weight(power_ptr, scale_ptr, head, num_keys, alpha, activate, D: tl.constexpr):
    """Of ``head``: power (d,), scale (d,), the row weight ``scale^-2p / n`` (d,), and the
    derivatives of power and scale by their tables (d,) (:func:`_exponents`,
    :func:`_divisors`)."""
    power, power_slope = _exponents(power_ptr, head, alpha, activate, D)
    scale, scale_slope = _divisors(scale_ptr, head, activate, D)
    return (power, scale, tl.exp2(-2. * power * tl.log2(scale)) / num_keys, power_slope,
            scale_slope)


@triton.jit
def _block(ptr, row, col, width, D: tl.constexpr):
    """Pointers to the (d, d/2) block at (row, col) of a matrix of row length ``width``."""
    return ptr + (row + tl.arange(0, D))[:, None] * width + (col + tl.arange(0, D // 2))[None, :]


@triton.jit
def _mix_block(state, mixing, w_row, s_row, col, weight, D: tl.constexpr):
    """W's (d, d/2) block at (``w_row``, ``col``) = the key state's at (``s_row``, ``col``)
    times the row weight."""
    block = tl.load(_block(state, s_row, col, D + 1, D))
    tl.store(_block(mixing, w_row, col, D + 2, D), block * weight[:, None])


@triton.jit(do_not_specialize=['activate'])
def _mixing_kernel(state_ptr, power_ptr, scale_ptr, mixing_ptr, num_keys, num_heads, alpha,
                   activate, D: tl.constexpr):
    """W (2d, d + 2) from the key state S = [[P, m+], [M, m-]] (2d, d + 1)::

        W = [[P[:, :d/2], M[:, d/2:], m+, m-],
             [M[:, :d/2], P[:, d/2:], m-, m+]]

    with row i of both halves times ``scale_i^-2p_i / n``: a (d, d/2) block at a time."""
    bh = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, D)
    _, _, weight, _, _ = _row_weight(power_ptr, scale_ptr, bh % num_heads, num_keys, alpha,
                                     activate, D)
    state = state_ptr + bh * (2 * D * (D + 1))
    mixing = mixing_ptr + bh * (2 * D * (D + 2))
    _mix_block(state, mixing, 0, 0, 0, weight, D)  # P left, M right, M left, P right
    _mix_block(state, mixing, 0, D, D // 2, weight, D)
    _mix_block(state, mixing, D, D, 0, weight, D)
    _mix_block(state, mixing, D, 0, D // 2, weight, D)
    mean_pos = tl.load(state + rows * (D + 1) + D) * weight
    mean_neg = tl.load(state + (D + rows) * (D + 1) + D) * weight
    tl.store(mixing + rows * (D + 2) + D, mean_pos)
    tl.store(mixing + rows * (D + 2) + D + 1, mean_neg)
    tl.store(mixing + (D + rows) * (D + 2) + D, mean_neg)
    tl.store(mixing + (D + rows) * (D + 2) + D + 1, mean_pos)


@triton.jit
def _load_mixing(mixing_ptr, bh, D: tl.constexpr):
    """The four blocks of W (2d, d + 2): numerator (d, d) x 2, normaliser columns (d,) x 4."""
    cols = tl.arange(0, D)
    base = mixing_ptr + bh * (2 * D * (D + 2))
    matrix = cols[:, None] * (D + 2) + cols[None, :]
    top = tl.load(base + matrix)
    bottom = tl.load(base + D * (D + 2) + matrix)
    top_sim = tl.load(base + cols * (D + 2) + D)
    top_opp = tl.load(base + cols * (D + 2) + D + 1)
    bottom_sim = tl.load(base + D * (D + 2) + cols * (D + 2) + D)
    bottom_opp = tl.load(base + D * (D + 2) + cols * (D + 2) + D + 1)
    return top, bottom, top_sim, top_opp, bottom_sim, bottom_opp


@triton.jit(do_not_specialize=['activate'])
def _query_output_kernel(q_ptr, power_ptr, mixing_ptr, out_ptr, inv_norm_ptr, num_queries,
                         num_heads, chunk, eps, alpha, activate, stride_qb, stride_qh,
                         stride_qn, stride_ob, stride_oh, stride_on, D: tl.constexpr,
                         BLOCK: tl.constexpr, PRECISION: tl.constexpr):
    """out = (Q @ W)[:, :d] / normalisers over the chunk's queries, a block at a time (W
    is read once per chunk); also stores the reciprocal normalisers."""
    _, bh, part = _token_program(num_queries, chunk)
    cols = tl.arange(0, D)
    power, _ = _exponents(power_ptr, bh % num_heads, alpha, activate, D)
    top, bottom, top_sim, top_opp, bottom_sim, bottom_opp = _load_mixing(mixing_ptr, bh, D)
    for start in range(part * chunk, tl.minimum(part * chunk + chunk, num_queries), BLOCK):
        rows = start + tl.arange(0, BLOCK)
        row_mask = rows < num_queries
        q = tl.load(_tile(q_ptr, bh, num_heads, stride_qb, stride_qh, stride_qn, rows, cols),
                    mask=row_mask[:, None], other=0.).to(tl.float32)
        magnitude = _polarity_features(q, power)
        q_pos = tl.where(q > 0, magnitude, 0.)
        q_neg = tl.where(q < 0, magnitude, 0.)
        numerator = tl.dot(q_pos, top, input_precision=PRECISION)
        numerator = tl.dot(q_neg, bottom, numerator, input_precision=PRECISION)
        inv_sim = 1. / (tl.sum(q_pos * top_sim[None, :] + q_neg * bottom_sim[None, :], 1) + eps)
        inv_opp = 1. / (tl.sum(q_pos * top_opp[None, :] + q_neg * bottom_opp[None, :], 1) + eps)
        out = numerator * tl.where(cols[None, :] < D // 2, inv_sim[:, None], inv_opp[:, None])
        tl.store(_tile(out_ptr, bh, num_heads, stride_ob, stride_oh, stride_on, rows, cols),
                 out.to(out_ptr.dtype.element_ty), mask=row_mask[:, None])
        norm_offsets = (bh * num_queries + rows) * 2
        tl.store(inv_norm_ptr + norm_offsets, inv_sim, mask=row_mask)
        tl.store(inv_norm_ptr + norm_offsets + 1, inv_opp, mask=row_mask)


@triton.jit(do_not_specialize=['activate'])
def _query_backward_kernel(q_ptr, out_ptr, grad_out_ptr, inv_norm_ptr, power_ptr, mixing_ptr,
                           grad_q_ptr, grad_mixing_ptr, grad_power_ptr, grad_scale_ptr,
                           num_queries, num_heads, chunk, alpha, activate, stride_pb,
                           stride_qb, stride_qh, stride_qn, stride_ob, stride_oh, stride_on,
                           stride_gb, stride_gh, stride_gn, stride_dqb, stride_dqh, stride_dqn,
                           D: tl.constexpr, BLOCK: tl.constexpr, PRECISION: tl.constexpr):
    """dq, and per-chunk partial dW (2d, d + 2) and d power (by its table) (d,); stores
    zeros in its row of the d scale partials (only the mixing backward adds to d scale).

    The normalisers' gradients need the output in fp32: read where it was stored so,
    recomputed (``Q @ W`` over the normalisers, as forward) where it was stored in half."""
    index, bh, part = _token_program(num_queries, chunk)
    cols = tl.arange(0, D)
    first_half = cols[None, :] < D // 2
    power, power_slope = _exponents(power_ptr, bh % num_heads, alpha, activate, D)
    top, bottom, top_sim, top_opp, bottom_sim, bottom_opp = _load_mixing(mixing_ptr, bh, D)
    grad_top = tl.zeros((D, D), dtype=tl.float32)
    grad_bottom = tl.zeros((D, D), dtype=tl.float32)
    grad_top_sim = tl.zeros((D, ), dtype=tl.float32)
    grad_top_opp = tl.zeros((D, ), dtype=tl.float32)
    grad_bottom_sim = tl.zeros((D, ), dtype=tl.float32)
    grad_bottom_opp = tl.zeros((D, ), dtype=tl.float32)
    grad_power = tl.zeros((D, ), dtype=tl.float32)
    for start in range(part * chunk, tl.minimum(part * chunk + chunk, num_queries), BLOCK):
        rows = start + tl.arange(0, BLOCK)
        row_mask = rows < num_queries
        mask = row_mask[:, None]
        q = tl.load(_tile(q_ptr, bh, num_heads, stride_qb, stride_qh, stride_qn, rows, cols),
                    mask=mask, other=0.).to(tl.float32)
        grad_out = tl.load(_tile(grad_out_ptr, bh, num_heads, stride_gb, stride_gh, stride_gn,
                                 rows, cols), mask=mask, other=0.).to(tl.float32)
        norm_offsets = (bh * num_queries + rows) * 2
        inv_sim = tl.load(inv_norm_ptr + norm_offsets, mask=row_mask, other=0.)
        inv_opp = tl.load(inv_norm_ptr + norm_offsets + 1, mask=row_mask, other=0.)
        magnitude = _polarity_features(q, power)
        q_pos = tl.where(q > 0, magnitude, 0.)
        q_neg = tl.where(q < 0, magnitude, 0.)
        if out_ptr.dtype.element_ty == tl.float32:
            out = tl.load(_tile(out_ptr, bh, num_heads, stride_ob, stride_oh, stride_on, rows,
                                cols), mask=mask, other=0.)
        else:  # the stored half output would cost the normalisers' gradients precision
            out = tl.dot(q_pos, top, input_precision=PRECISION)
            out = tl.dot(q_neg, bottom, out, input_precision=PRECISION)
            out *= tl.where(first_half, inv_sim[:, None], inv_opp[:, None])

        grad_numerator = grad_out * tl.where(first_half, inv_sim[:, None], inv_opp[:, None])
        grad_out_dot_out = grad_out * out
        grad_sim = -inv_sim * tl.sum(tl.where(first_half, grad_out_dot_out, 0.), 1)
        grad_opp = -inv_opp * tl.sum(tl.where(first_half, 0., grad_out_dot_out), 1)

        grad_top = tl.dot(tl.trans(q_pos), grad_numerator, grad_top, input_precision=PRECISION)
        grad_bottom = tl.dot(tl.trans(q_neg), grad_numerator, grad_bottom,
                             input_precision=PRECISION)
        grad_top_sim += tl.sum(q_pos * grad_sim[:, None], 0)
        grad_top_opp += tl.sum(q_pos * grad_opp[:, None], 0)
        grad_bottom_sim += tl.sum(q_neg * grad_sim[:, None], 0)
        grad_bottom_opp += tl.sum(q_neg * grad_opp[:, None], 0)

        grad_pos = tl.dot(grad_numerator, tl.trans(top), input_precision=PRECISION)
        grad_pos += grad_sim[:, None] * top_sim[None, :] + grad_opp[:, None] * top_opp[None, :]
        grad_neg = tl.dot(grad_numerator, tl.trans(bottom), input_precision=PRECISION)
        grad_neg += (grad_sim[:, None] * bottom_sim[None, :] +
                     grad_opp[:, None] * bottom_opp[None, :])
        grad_q, grad_power_rows = _features_backward(q, magnitude, grad_pos, grad_neg, power)
        grad_power += grad_power_rows
        tl.store(_tile(grad_q_ptr, bh, num_heads, stride_dqb, stride_dqh, stride_dqn, rows,
                       cols), grad_q.to(grad_q_ptr.dtype.element_ty), mask=mask)

    out = grad_mixing_ptr + index * (2 * D * (D + 2))
    matrix = cols[:, None] * (D + 2) + cols[None, :]
    tl.store(out + matrix, grad_top)
    tl.store(out + D * (D + 2) + matrix, grad_bottom)
    tl.store(out + cols * (D + 2) + D, grad_top_sim)
    tl.store(out + cols * (D + 2) + D + 1, grad_top_opp)
    tl.store(out + D * (D + 2) + cols * (D + 2) + D, grad_bottom_sim)
    tl.store(out + D * (D + 2) + cols * (D + 2) + D + 1, grad_bottom_opp)
    tl.store(grad_power_ptr + bh * stride_pb + part * D + cols, grad_power * power_slope)
    tl.store(grad_scale_ptr + bh * stride_pb + part * D + cols, tl.zeros((D, ), tl.float32))


@triton.jit
def _unmix_block(grad_mixing, state, grad_state, w_row, s_row, col, weight, D: tl.constexpr):
    """The backward of one block of :func:`_mix_block` (rows ``w_row`` of W, ``s_row`` of
    the key state, columns from ``col``): stores the key state's gradient there and
    returns the block's share of the row weight's gradient (dW times the unweighted W,
    summed over each row)."""
    grad_block = tl.load(_block(grad_mixing, w_row, col, D + 2, D))
    tl.store(_block(grad_state, s_row, col, D + 1, D), grad_block * weight[:, None])
    return tl.sum(grad_block * tl.load(_block(state, s_row, col, D + 1, D)), 1)


@triton.jit(do_not_specialize=['activate'])
def _mixing_backward_kernel(grad_mixing_ptr, state_ptr, power_ptr, scale_ptr, grad_state_ptr,
                            grad_power_ptr, grad_scale_ptr, num_keys, num_heads, alpha,
                            activate, stride_pb, D: tl.constexpr):
    """The backward of ``_mixing_kernel``: from dW (2d, d + 2) the key state's gradient
    (2d, d + 1) and, through the row weight ``w = scale^-2p / n``, this (batch x head)'s
    share of d power (``dw * w * -2 log scale``) and d scale (``dw * w * -2p / scale``),
    each by its table."""
    bh = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, D)
    power, scale, weight, power_slope, scale_slope = _row_weight(
        power_ptr, scale_ptr, bh % num_heads, num_keys, alpha, activate, D)
    grad_mixing = grad_mixing_ptr + bh * (2 * D * (D + 2))
    state = state_ptr + bh * (2 * D * (D + 1))
    grad_state = grad_state_ptr + bh * (2 * D * (D + 1))
    grad_weight = _unmix_block(grad_mixing, state, grad_state, 0, 0, 0, weight, D)
    grad_weight += _unmix_block(grad_mixing, state, grad_state, 0, D, D // 2, weight, D)
    grad_weight += _unmix_block(grad_mixing, state, grad_state, D, D, 0, weight, D)
    grad_weight += _unmix_block(grad_mixing, state, grad_state, D, 0, D // 2, weight, D)
    # m+ is in columns d (top) and d + 1 (bottom) of W, m- in d + 1 (top) and d (bottom)
    grad_mean_pos = (tl.load(grad_mixing + rows * (D + 2) + D) +
                     tl.load(grad_mixing + (D + rows) * (D + 2) + D + 1))
    grad_mean_neg = (tl.load(grad_mixing + rows * (D + 2) + D + 1) +
                     tl.load(grad_mixing + (D + rows) * (D + 2) + D))
    grad_weight += (grad_mean_pos * tl.load(state + rows * (D + 1) + D) +
                    grad_mean_neg * tl.load(state + (D + rows) * (D + 1) + D))
    tl.store(grad_state + rows * (D + 1) + D, grad_mean_pos * weight)
    tl.store(grad_state + (D + rows) * (D + 1) + D, grad_mean_neg * weight)
    grad_weight *= weight
    tl.store(grad_power_ptr + bh * stride_pb + rows,
             -2. * grad_weight * tl.log(scale) * power_slope)
    tl.store(grad_scale_ptr + bh * stride_pb + rows,
             -2. * grad_weight * power / scale * scale_slope)


@triton.jit(do_not_specialize=['activate'])
def _key_backward_kernel(k_ptr, v_ptr, power_ptr, grad_state_ptr, grad_k_ptr, grad_v_ptr,
                         grad_power_ptr, grad_scale_ptr, num_keys, num_heads, chunk, alpha,
                         activate, stride_pb, stride_kb,
                         stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_dkb,
                         stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
                         D: tl.constexpr,
                         BLOCK: tl.constexpr, PRECISION: tl.constexpr):
    """dk, dv and per-chunk partial d power (by its table) from d state (2d, d + 1),
    already over n; zeros in its row of the d scale partials."""
    _, bh, part = _token_program(num_keys, chunk)
    cols = tl.arange(0, D)
    power, power_slope = _exponents(power_ptr, bh % num_heads, alpha, activate, D)
    base = grad_state_ptr + bh * (2 * D * (D + 1))
    matrix = cols[:, None] * (D + 1) + cols[None, :]
    grad_kv_pos = tl.load(base + matrix)
    grad_kv_neg = tl.load(base + D * (D + 1) + matrix)
    grad_sum_pos = tl.load(base + cols * (D + 1) + D)
    grad_sum_neg = tl.load(base + D * (D + 1) + cols * (D + 1) + D)
    grad_power = tl.zeros((D, ), dtype=tl.float32)
    for start in range(part * chunk, tl.minimum(part * chunk + chunk, num_keys), BLOCK):
        rows = start + tl.arange(0, BLOCK)
        mask = (rows < num_keys)[:, None]
        k = tl.load(_tile(k_ptr, bh, num_heads, stride_kb, stride_kh, stride_kn, rows, cols),
                    mask=mask, other=0.).to(tl.float32)
        v = tl.load(_tile(v_ptr, bh, num_heads, stride_vb, stride_vh, stride_vn, rows, cols),
                    mask=mask, other=0.).to(tl.float32)
        magnitude = _polarity_features(k, power)
        k_pos = tl.where(k > 0, magnitude, 0.)
        k_neg = tl.where(k < 0, magnitude, 0.)
        grad_v = tl.dot(k_pos, grad_kv_pos, input_precision=PRECISION)
        grad_v = tl.dot(k_neg, grad_kv_neg, grad_v, input_precision=PRECISION)
        tl.store(_tile(grad_v_ptr, bh, num_heads, stride_dvb, stride_dvh, stride_dvn, rows,
                       cols), grad_v.to(grad_v_ptr.dtype.element_ty), mask=mask)
        grad_pos = tl.dot(v, tl.trans(grad_kv_pos), input_precision=PRECISION)
        grad_pos += grad_sum_pos[None, :]
        grad_neg = tl.dot(v, tl.trans(grad_kv_neg), input_precision=PRECISION)
        grad_neg += grad_sum_neg[None, :]
        grad_k, grad_power_rows = _features_backward(k, magnitude, grad_pos, grad_neg, power)
        grad_power += grad_power_rows
        tl.store(_tile(grad_k_ptr, bh, num_heads, stride_dkb, stride_dkh, stride_dkn, rows,
                       cols), grad_k.to(grad_k_ptr.dtype.element_ty), mask=mask)
    tl.store(grad_power_ptr + bh * stride_pb + part * D + cols, grad_power * power_slope)
    tl.store(grad_scale_ptr + bh * stride_pb + part * D + cols, tl.zeros((D, ), tl.float32))


def _on_device(t: Tensor):
    """Context in which launches go to ``t``'s GPU (nothing to do in the interpreter)."""
    return torch.cuda.device(t.device) if t.is_cuda else nullcontext()


def _num_chunks(num_tokens: int, chunk: int) -> int:
    return triton.cdiv(num_tokens, chunk)


def _strides(t: Tensor):
    """Batch, head and token strides of a (B, h, L, d) tensor with a contiguous last dim."""
    return t.stride()[:3]


def _activation_args(alpha: Optional[float]):
    """The kernels' ``alpha, activate`` arguments: apply the activations (``alpha`` given,
    as a float: one compiled signature) or read the tables as they are."""
    return (0., 0) if alpha is None else (float(alpha), 1)


def _dense_last_dim(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _forward_kernels(q: Tensor, k: Tensor, v: Tensor, power32: Tensor, scale32: Tensor,
                     eps: float, alpha: Optional[float], chunk: int, out_dtype: torch.dtype,
                     precision: str):
    """Launch the key-state, mixing and output kernels (``alpha``: see
    :func:`polarity_linear_attention_triton`); return (out, key_state, mixing, inv_norm)."""
    activation = _activation_args(alpha)
    batch, heads, num_queries, dims = q.shape
    num_keys = k.shape[2]
    key_chunks = _num_chunks(num_keys, chunk)
    state = q.new_empty(batch * heads, key_chunks, 2 * dims, dims + 1, dtype=torch.float32)
    _key_state_kernel[(batch * heads * key_chunks, )](
        k, v, power32, state, num_keys, heads, chunk, *activation, *_strides(k), *_strides(v),
        D=dims,
        BLOCK=BLOCK_TOKENS, PRECISION=precision, **LAUNCH_OPTIONS)
    key_state = state.sum(1)  # (B * h, 2d, d + 1)
    mixing = q.new_empty(batch * heads, 2 * dims, dims + 2, dtype=torch.float32)
    _mixing_kernel[(batch * heads, )](key_state, power32, scale32, mixing, num_keys, heads,
                                      *activation, D=dims, **LAUNCH_OPTIONS)

    # (B, N, h, d) memory: merging the heads back into (B, N, C) costs no copy
    out = q.new_empty(batch, num_queries, heads, dims, dtype=out_dtype).transpose(1, 2)
    inv_norm = q.new_empty(batch * heads, num_queries, 2, dtype=torch.float32)
    _query_output_kernel[(batch * heads * _num_chunks(num_queries, chunk), )](
        q, power32, mixing, out, inv_norm, num_queries, heads, chunk, eps, *activation,
        *_strides(q), *_strides(out), D=dims, BLOCK=BLOCK_TOKENS, PRECISION=precision,
        **LAUNCH_OPTIONS)
    return out, key_state, mixing, inv_norm


def _backward_kernels(q: Tensor, k: Tensor, v: Tensor, power32: Tensor, scale32: Tensor,
                      alpha: Optional[float], key_state: Tensor, mixing: Tensor, out: Tensor,
                      inv_norm: Tensor, grad_out: Tensor, chunk: int, precision: str):
    """Launch the three backward kernels; return the gradients of q, k, v, and of the
    power and scale tables as (h, d) tables."""
    batch, heads, num_queries, dims = q.shape
    num_keys = k.shape[2]
    query_chunks = _num_chunks(num_queries, chunk)
    key_chunks = _num_chunks(num_keys, chunk)
    activation = _activation_args(alpha)
    # partial sums of d power (plane 0) and d scale (plane 1), one row each from the query
    # chunks, the row weight and the key chunks: one reduction adds up both
    grad_tables = q.new_empty(2, batch * heads, query_chunks + 1 + key_chunks, dims,
                              dtype=torch.float32)
    grad_power, grad_scale = grad_tables
    grad_q = torch.empty_like(q)
    grad_mixing = q.new_empty(batch * heads, query_chunks, 2 * dims, dims + 2,
                              dtype=torch.float32)
    _query_backward_kernel[(batch * heads * query_chunks, )](
        q, out, grad_out, inv_norm, power32, mixing, grad_q, grad_mixing, grad_power,
        grad_scale, num_queries, heads, chunk, *activation, grad_power.stride(0),
        *_strides(q), *_strides(out),
        *_strides(grad_out), *_strides(grad_q), D=dims, BLOCK=BLOCK_TOKENS,
        PRECISION=precision, **LAUNCH_OPTIONS)

    grad_state = torch.empty_like(key_state)
    _mixing_backward_kernel[(batch * heads, )](
        grad_mixing.sum(1), key_state, power32, scale32, grad_state,
        grad_power[:, query_chunks], grad_scale[:, query_chunks], num_keys, heads,
        *activation, grad_power.stride(0), D=dims, **LAUNCH_OPTIONS)

    grad_k = torch.empty_like(k)
    grad_v = torch.empty_like(v)
    _key_backward_kernel[(batch * heads * key_chunks, )](
        k, v, power32, grad_state, grad_k, grad_v, grad_power[:, query_chunks + 1:],
        grad_scale[:, query_chunks + 1:], num_keys, heads, chunk, *activation,
        grad_power.stride(0), *_strides(k), *_strides(v), *_strides(grad_k),
        *_strides(grad_v), D=dims, BLOCK=BLOCK_TOKENS, PRECISION=precision,
        **LAUNCH_OPTIONS)
    grad_power, grad_scale = grad_tables.view(2, batch, heads, grad_tables.shape[2],
                                              dims).sum((1, 3))
    return grad_q, grad_k, grad_v, grad_power, grad_scale


def _head_table(param: Tensor, heads: int, dims: int) -> Tensor:
    """A (1, h | 1, 1, d | 1) parameter as a contiguous float32 (h, d) table."""
    return param.float().expand(1, heads, 1, dims).reshape(heads, dims).contiguous()


def _table_grad(grad: Tensor, param: Tensor) -> Tensor:
    """The (h, d) gradient of :func:`_head_table`'s table -> that of ``param``."""
    return grad.view(1, grad.shape[0], 1, grad.shape[1]).sum_to_size(
        param.shape).to(param.dtype)


def _torch_gradients(q: Tensor, k: Tensor, v: Tensor, power: Tensor, scale: Optional[Tensor],
                     eps: float, alpha: Optional[float], out_dtype: torch.dtype,
                     grad_out: Tensor):
    """The same gradients through the lean PyTorch path (after a kernel failure)."""
    with torch.enable_grad():
        inputs = [t.detach().requires_grad_() for t in (q, k, v, power, scale)
                  if t is not None]
        exponents, divisors = activate_parameters(*inputs[3:], alpha)
        out = polarity_linear_attention_torch(*inputs[:3], exponents, eps,
                                              divisors).to(out_dtype)
        grads = torch.autograd.grad(out, inputs, grad_out)
    return grads if scale is not None else (*grads, None)


class TritonPolarityAttentionFunction(torch.autograd.Function):
    """Autograd Function over the six kernels; see :func:`polarity_linear_attention_triton`."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, power: Tensor, scale: Optional[Tensor],
                eps: float, alpha: Optional[float], chunk: int, out_dtype: torch.dtype,
                guard) -> Tensor:
        heads, dims = q.shape[1], q.shape[3]
        q, k, v = (_dense_last_dim(t) for t in (q, k, v))  # heads may stay interleaved
        power32 = _head_table(power, heads, dims)
        scale32 = (q.new_ones(heads, dims, dtype=torch.float32) if scale is None else
                   _head_table(scale, heads, dims))
        precision = kernel_precision(q.device)
        with _on_device(q):
            out, key_state, mixing, inv_norm = _forward_kernels(
                q, k, v, power32, scale32, eps, alpha, chunk, out_dtype, precision)
        ctx.save_for_backward(q, k, v, power, scale, power32, scale32, key_state, mixing, out,
                              inv_norm)
        ctx.config = (eps, alpha, chunk, out_dtype, precision, guard)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        q, k, v, power, scale, power32, scale32, key_state, mixing, out, inv_norm = \
            ctx.saved_tensors
        eps, alpha, chunk, out_dtype, precision, guard = ctx.config
        grad_out = _dense_last_dim(grad_out)
        try:
            with _on_device(q):
                *grads, grad_power, grad_scale = _backward_kernels(
                    q, k, v, power32, scale32, alpha, key_state, mixing, out, inv_norm,
                    grad_out, chunk, precision)
            grads += [_table_grad(grad_power, power),
                      None if scale is None else _table_grad(grad_scale, scale)]
        except Exception as error:
            if guard is None:
                raise
            guard.failed(error, 'backward')  # raises unless the PyTorch path may take over
            grads = _torch_gradients(q, k, v, power, scale, eps, alpha, out_dtype, grad_out)
        else:
            if guard is not None:
                guard.passed('backward')
        return (*grads, None, None, None, None, None)


def triton_interpreted() -> bool:
    """True when Triton runs its CPU interpreter (``TRITON_INTERPRET=1`` at import)."""
    return isinstance(_key_state_kernel, InterpretedFunction)


def polarity_linear_attention_triton(q: Tensor, k: Tensor, v: Tensor, power: Tensor,
                                     eps: float = 1e-6, chunk: int = CHUNK_TOKENS,
                                     out_dtype: Optional[torch.dtype] = None,
                                     guard=None, scale: Optional[Tensor] = None,
                                     alpha: Optional[float] = None) -> Tensor:
    """Fused-kernel polarity-aware linear attention; same contract as
    :func:`pola_mm.ops.polarity_attention.polarity_linear_attention`.

    Args:
        q (Tensor): (B, h, N, d) queries; d in
            :data:`~pola_mm.ops.triton_compile.SUPPORTED_HEAD_DIMS`.
        k (Tensor): (B, h, n, d) keys.
        v (Tensor): (B, h, n, d) values.
        power (Tensor): (1, h, 1, d) exponents (>= 1).
        eps (float): normaliser epsilon.
        chunk (int): tokens handled by one program of each token kernel (a multiple of
            :data:`~pola_mm.ops.triton_compile.BLOCK_TOKENS`; default
            :data:`~pola_mm.ops.triton_compile.CHUNK_TOKENS`); smaller gives more
            parallelism over tokens, larger fewer partial sums and fewer reads of the
            mixing matrices.
        out_dtype (torch.dtype, optional): dtype of the result (default q's).
        guard (optional): told of the backward kernels' outcome, as
            ``guard.passed('backward')`` or ``guard.failed(error, 'backward')``; the latter
            raises, or returns to have the gradients computed by the PyTorch path. None:
            errors propagate.
        scale (Tensor, optional): (1, h, 1, d) positive divisor of q and k, folded into
            the small mixing matrices (q and k are not divided).
        alpha (float, optional): if given, ``power`` and ``scale`` (then required) are the
            layers' parameters before their activations, exponents
            ``1 + alpha * sigmoid(power)`` and divisor ``softplus(scale)``, which the
            kernels compute themselves (and their derivatives), saving the launches of
            the activations and of their backward.

    Returns:
        Tensor: (B, h, N, d) of ``out_dtype``, laid out as (B, N, h, d) in memory.
    """
    check_polarity_inputs(q, k, v, power, scale, alpha)
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f'the Triton kernels need head dims in {SUPPORTED_HEAD_DIMS}, '
                         f"got {q.shape[-1]}; attn_impl='torch' runs any even head dims")
    if any(t.dtype not in KERNEL_DTYPES for t in (q, k, v)):
        raise ValueError(f'q, k, v must each be one of {KERNEL_DTYPES}; got '
                         f'{q.dtype}, {k.dtype}, {v.dtype}')
    if chunk <= 0 or chunk % BLOCK_TOKENS:
        raise ValueError(f'chunk must be a positive multiple of {BLOCK_TOKENS}, got {chunk}')
    if not (q.is_cuda or triton_interpreted()):
        raise RuntimeError('the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1); '
                           "attn_impl='torch' runs on any device")
    with torch.autocast(device_type=q.device.type, enabled=False):
        return TritonPolarityAttentionFunction.apply(q, k, v, power, scale, eps, alpha, chunk,
                                                     out_dtype or q.dtype, guard)
