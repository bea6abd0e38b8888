"""The plain reference of PolaFormer's attention core, written literally as the authors do.

The four polarity maps are materialised, the sim/opp queries are concatenated, and each
stream does its own ``K^T V`` product and normaliser. Selected with
``attn_impl='reference'`` (slow and memory-hungry: for comparison, not training); the op
tests hold the fast paths to it and ``tools/analysis/benchmark.py`` measures them against
it.
"""
import torch
import torch.nn.functional as F
from torch import Tensor


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
