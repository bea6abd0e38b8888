"""The polarity-aware linear attention core: the one place its math lives."""
import torch
import torch.nn.functional as F
from torch import Tensor


def polarity_linear_attention(q: Tensor, k: Tensor, v: Tensor, power: Tensor,
                              eps: float = 1e-6) -> Tensor:
    """Polarity-aware linear attention of PolaFormer for one set of queries and keys.

    With ``phi_p(x) = relu(x) ** p`` (per head and channel exponent ``p``):
    ``q+ = phi_p(q)``, ``q- = phi_p(-q)`` (likewise for ``k``), ``K = [k+, k-]``,
    ``q_sim = [q+, q-]`` (same-sign interactions) and ``q_opp = [q-, q+]``
    (opposite-sign interactions). The sim stream attends with the first half of the value
    channels, the opp stream with the second half::

        out_t[i] = sum_j (q_t[i] . K[j]) v_t[j] / (sum_j q_t[i] . K[j] + n * eps)

    computed in linear form as in the official code:
    ``(q_t @ (K^T / sqrt(n)) @ (v_t / sqrt(n))) / (q_t . mean_j K[j] + eps)``.

    The computation runs in float32 with autocast disabled (exponents up to 5 overflow
    fp16) and the result is cast back to ``q``'s dtype.

    Args:
        q (Tensor): (B, h, N, d) queries, already divided by ``softplus(scale)``.
        k (Tensor): (B, h, n, d) keys (positional encoding added, then divided by
            ``softplus(scale)``).
        v (Tensor): (B, h, n, d) values; ``d`` must be even.
        power (Tensor): (1, h, 1, d) exponents ``1 + alpha * sigmoid(param)``.
        eps (float): normaliser epsilon (official value 1e-6).

    Returns:
        Tensor: (B, h, N, d); channels ``[:d/2]`` come from the sim stream, ``[d/2:]``
        from the opp stream.
    """
    out_dtype = q.dtype
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v, power = (t.float() for t in (q, k, v, power))
        n = k.shape[-2]
        q_pos, q_neg = F.relu(q) ** power, F.relu(-q) ** power
        k_cat = torch.cat([F.relu(k) ** power, F.relu(-k) ** power], dim=-1)
        k_mean = k_cat.mean(dim=-2, keepdim=True).transpose(-2, -1)  # (B, h, 2d, 1)
        k_scaled = k_cat.transpose(-2, -1) * n**-0.5  # (B, h, 2d, n)
        outputs = []
        for q_t, v_t in ((torch.cat([q_pos, q_neg], dim=-1), v[..., :v.shape[-1] // 2]),
                         (torch.cat([q_neg, q_pos], dim=-1), v[..., v.shape[-1] // 2:])):
            z = 1 / (q_t @ k_mean + eps)
            kv = k_scaled @ (v_t * n**-0.5)
            outputs.append(q_t @ kv * z)
        return torch.cat(outputs, dim=-1).to(out_dtype)
