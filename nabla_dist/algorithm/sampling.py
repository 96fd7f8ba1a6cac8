"""Token sampling with temperature, top-k and top-p, reproducible per request.

The filters are transformers' logits warpers; each draw takes its own `torch.Generator`
so a row of a batch samples exactly what it would sample alone.
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
    if params.top_k > 0:
        warpers.append(TopKLogitsWarper(params.top_k))
    if params.top_p < 1.0:
        warpers.append(TopPLogitsWarper(params.top_p))
    return warpers


def sample_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Draw one token from `logits` [V]; temperature 0 is argmax (no randomness used)."""
    if params.temperature == 0:
        return int(logits.argmax())
    scores = _warpers(params)(None, logits.float().unsqueeze(0))  # [1, V]
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def make_generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
