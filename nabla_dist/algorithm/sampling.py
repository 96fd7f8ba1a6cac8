"""Token sampling with temperature, top-k and top-p, reproducible per request.

The filters are transformers' logits warpers, applied to a batch's rows together; each draw
takes its own `torch.Generator` so a row of a batch samples exactly what it would sample
alone.
"""

from __future__ import annotations

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from nabla_dist.algorithm.requests import SamplingParams


def _warpers(params: SamplingParams) -> LogitsProcessorList:
    warpers = LogitsProcessorList()
    if params.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(params.temperature))
    if params.top_k:  # None (unresolved) and 0 are off
        warpers.append(TopKLogitsWarper(params.top_k))
    if params.top_p < 1.0:
        warpers.append(TopPLogitsWarper(params.top_p))
    return warpers


def sample_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Draw one token from `logits` [V]; temperature 0 is argmax (no randomness used)."""
    return sample_tokens(logits[None], [params], [generator])[0]


def sample_tokens(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator]) -> list[int]:
    """One draw per row of `logits` [B, V], each with its own parameters and generator.

    Rows that share parameters are filtered together (one batched sort for top-p); each row
    still draws with its own generator, so it samples what it would sample alone.
    """
    tokens = [0] * len(params)
    groups: dict[SamplingParams, list[int]] = {}
    for b, p in enumerate(params):
        groups.setdefault(p, []).append(b)
    for p, rows in groups.items():
        block = logits[rows].float()  # [b, V]
        if p.temperature == 0:
            picks = block.argmax(-1).tolist()
        else:
            probs = torch.softmax(_warpers(p)(None, block), dim=-1).cpu()
            picks = [int(torch.multinomial(probs[i : i + 1], 1, generator=generators[b])) for i, b in enumerate(rows)]
        for b, token in zip(rows, picks):
            tokens[b] = token
    return tokens


def make_generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
