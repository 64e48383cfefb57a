"""SGLang's sampling rule written out plainly, as the reference for lossless tests."""

from __future__ import annotations

import torch

NO_TOP_K = 1 << 30


def reference_probs(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int = NO_TOP_K, top_p: float = 1.0,
    min_p: float = 0.0,
) -> torch.Tensor:
    """softmax(logits / T); keep rank < top_k, mass-before <= top_p, p >= min_p * max; renormalize."""
    p = torch.softmax(logits.double() / temperature, -1)
    order = p.argsort(descending=True)
    keep = torch.zeros_like(p, dtype=torch.bool)
    mass = 0.0
    for rank, tok in enumerate(order.tolist()):
        if rank < top_k and mass <= top_p and p[tok] >= p[order[0]] * min_p:
            keep[tok] = True
        mass += float(p[tok])
    q = torch.where(keep, p, 0.0)
    return q / q.sum()


def grouped_counts(samples: list[int], probs: torch.Tensor, min_expected: float = 5.0):
    """Observed and expected counts over tokens with enough expected mass, the rest pooled."""
    n = len(samples)
    counts = torch.bincount(torch.tensor(samples, dtype=torch.long), minlength=probs.numel()).double()
    big = probs * n >= min_expected
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([probs[big] * n, (probs[~big].sum() * n)[None]])
    if exp[-1] < min_expected:  # pool too small to test on its own: fold into the smallest cell
        obs, exp = obs[:-1].clone(), exp[:-1].clone()
        obs[obs.argmin()] += counts[~big].sum()
        exp[exp.argmin()] += probs[~big].sum() * n
    return obs, exp, counts[probs == 0].sum()
