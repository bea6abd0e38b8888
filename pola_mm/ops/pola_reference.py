"""The plain references of the PolaFormer and PolaFormer++ linear-attention cores,
written literally as the authors compute them.

The polarity maps are materialised, the sim/opp queries are concatenated, and each stream
does its own ``K^T V`` product and normaliser. Selected with ``attn_impl='reference'``
(slow and memory-hungry: for comparison, not training); the op tests hold the fast paths
to them and ``tools/analysis/benchmark.py`` measures them against them.
"""
import torch
import torch.nn.functional as F
from torch import Tensor

from .rope import apply_rope


def plain_polarity_attention(q: Tensor, k: Tensor, v: Tensor, power: Tensor,
                             eps: float = 1e-6) -> Tensor:
    """Plain polarity-aware linear attention.

    Args:
        q (Tensor): (B, h, N, d) queries (already divided by the scale).
        k (Tensor): (B, h, n, d) keys (positional encoding added, divided by the scale).
        v (Tensor): (B, h, n, d) values, ``d`` even.
        power (Tensor): (1, h, 1, d) per-channel exponents.
        eps (float): normaliser epsilon.

    Returns:
        Tensor: (B, h, N, d) in ``q``'s dtype; sim stream in ``[:d/2]``, opp in ``[d/2:]``.
    """
    dtype = q.dtype
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v, power = q.float(), k.float(), v.float(), power.float()
        n = k.shape[-2]
        q_pos = F.relu(q) ** power
        q_neg = F.relu(-q) ** power
        k_pos = F.relu(k) ** power
        k_neg = F.relu(-k) ** power
        q_sim = torch.cat([q_pos, q_neg], dim=-1)
        q_opp = torch.cat([q_neg, q_pos], dim=-1)
        keys = torch.cat([k_pos, k_neg], dim=-1)
        v1, v2 = torch.chunk(v, 2, dim=-1)

        z = 1 / (q_sim @ keys.mean(dim=-2, keepdim=True).transpose(-2, -1) + eps)
        kv = (keys.transpose(-2, -1) * (n**-0.5)) @ (v1 * (n**-0.5))
        x_sim = q_sim @ kv * z
        z = 1 / (q_opp @ keys.mean(dim=-2, keepdim=True).transpose(-2, -1) + eps)
        kv = (keys.transpose(-2, -1) * (n**-0.5)) @ (v2 * (n**-0.5))
        x_opp = q_opp @ kv * z
        return torch.cat([x_sim, x_opp], dim=-1).to(dtype)


def plain_polapp_linear_attention(q: Tensor, k: Tensor, v: Tensor, s1: Tensor, s2: Tensor,
                                  cos: Tensor, sin: Tensor, eps: float = 1e-6) -> Tensor:
    """Plain PolaFormer++ linear attention (see :mod:`pola_mm.ops.polapp_linear`).

    Args:
        q, k, v (Tensor): (B, h, N, d) float32.
        s1, s2 (Tensor): (1, h, 1, 2d) stream temperatures (after the sigmoid).
        cos, sin (Tensor): (N, 2d) rotary tables.
        eps (float): normaliser epsilon.

    Returns:
        Tensor: (B, h, N, d); sim stream in ``[:d/2]``, opp in ``[d/2:]``.
    """
    n = k.shape[-2]
    q_pos, q_neg = F.relu(q), F.relu(-q)
    q_sim = torch.exp(torch.cat([q_pos, q_neg], dim=-1) * s1) - 1
    q_opp = torch.exp(torch.cat([q_neg, q_pos], dim=-1) * s2) - 1
    keys = torch.exp(torch.cat([F.relu(k), F.relu(-k)], dim=-1)) - 1
    rotated_keys = apply_rope(keys, cos, sin)
    outs = []
    for feats, values in zip((q_sim, q_opp), torch.chunk(v, 2, dim=-1)):
        z = feats @ keys.mean(dim=-2, keepdim=True).transpose(-2, -1)
        # the authors scale both factors by n ** -0.5; one division by n is the same
        # product, and keeps n a traced size in exported graphs
        kv = rotated_keys.transpose(-2, -1) @ values / n
        outs.append(apply_rope(feats, cos, sin) @ kv * (1 / (z + eps)))
    return torch.cat(outs, dim=-1)
