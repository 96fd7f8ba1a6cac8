"""Token sampling with temperature, top-k and top-p, reproducible per request.

The distribution is transformers' logits warpers' (temperature, then top-k keeping ties at
the k-th value, then top-p keeping at least one token): `kept_distribution` says which
tokens keep which probability. It is formed on the kept tokens only: with top-k set, a
draw touches k of the vocabulary's entries after one top-k pass, where the warpers sort
and normalize the whole vocabulary at every generated token (at a 49k vocabulary that was
most of a small model's rollout time). Each draw takes its own `torch.Generator`, so a row
of a batch samples exactly what it would sample alone.
"""

from __future__ import annotations

import torch

from nabla_dist.algorithm.requests import SamplingParams


def kept_distribution(logits: torch.Tensor, params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids in increasing order [n], their probabilities [n]) of one row's sampler.

    logits: [V]; params.temperature > 0.
    """
    scaled = logits.float() / params.temperature  # [V]
    if params.top_k and params.top_k < scaled.shape[0]:
        kth = scaled.topk(params.top_k).values[-1]
        ids = (scaled >= kth).nonzero().flatten()  # ties at the k-th value are kept
    else:
        ids = torch.arange(scaled.shape[0], device=scaled.device)
    values = scaled[ids]
    if params.top_p < 1.0:
        ascending, order = values.sort()
        cumulative = ascending.softmax(-1).cumsum(-1)
        drop = cumulative <= 1 - params.top_p
        drop[-1] = False  # at least one token
        ids = ids[order[~drop]].sort().values
        values = scaled[ids]
    return ids, values.softmax(-1)


def sample_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Draw one token from `logits` [V]; temperature 0 is argmax (no randomness used)."""
    return sample_tokens(logits[None], [params], [generator])[0]


def sample_tokens(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator]) -> list[int]:
    """One draw per row of `logits` [B, V], each with its own parameters and generator."""
    tokens = []
    for row, p, generator in zip(logits, params, generators):
        if p.temperature == 0:
            tokens.append(int(row.argmax()))
            continue
        ids, probs = kept_distribution(row, p)
        tokens.append(int(ids.cpu()[torch.multinomial(probs.cpu(), 1, generator=generator)]))
    return tokens


def make_generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
