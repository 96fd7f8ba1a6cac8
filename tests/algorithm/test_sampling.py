"""The sampler keeps the distribution of transformers' warpers, formed on the kept tokens only."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from nabla_dist.algorithm.requests import SamplingParams
from nabla_dist.algorithm.sampling import kept_distribution, make_generator, sample_token, sample_tokens


def warped(logits: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    warpers = LogitsProcessorList([TemperatureLogitsWarper(p.temperature)])
    if p.top_k:
        warpers.append(TopKLogitsWarper(p.top_k))
    if p.top_p < 1:
        warpers.append(TopPLogitsWarper(p.top_p))
    return torch.softmax(warpers(None, logits[None]), -1)[0]


@pytest.mark.parametrize("params", [SamplingParams(0.6, 0.95, 20), SamplingParams(0.5, 0.95, 0),
                                    SamplingParams(1.0, 1.0, 5), SamplingParams(1.3, 0.5, 50)])
def test_kept_distribution_is_the_warpers_distribution(params):
    generator = torch.Generator().manual_seed(0)
    for scale in (0.5, 3.0, 12.0):  # flat to peaked
        logits = torch.randn(5000, generator=generator) * scale
        logits[7] = logits[8]  # a tie
        ids, probs = kept_distribution(logits, params)
        reference = warped(logits, params)
        assert torch.equal(ids, reference.nonzero().flatten())
        assert torch.allclose(probs, reference[ids], atol=1e-6, rtol=1e-5)


def test_top_k_keeps_ties_at_the_kth_value_like_the_warper():
    logits = torch.tensor([5.0, 4.0, 4.0, 4.0, 1.0])
    ids, probs = kept_distribution(logits, SamplingParams(1.0, 1.0, 2))
    assert ids.tolist() == [0, 1, 2, 3] and torch.allclose(probs, warped(logits, SamplingParams(1.0, 1.0, 2))[:4])


def test_a_row_samples_in_a_batch_what_it_samples_alone_and_draws_follow_the_probabilities():
    logits = torch.randn(3, 300, generator=torch.Generator().manual_seed(1)) * 2
    params = [SamplingParams(0.6, 0.95, 20), SamplingParams(1.0, 0.9, 0), SamplingParams(0.0)]
    batch = sample_tokens(logits, params, [make_generator(s) for s in (1, 2, 3)])
    alone = [sample_token(row, p, make_generator(s)) for row, p, s in zip(logits, params, (1, 2, 3))]
    assert batch == alone and batch[2] == int(logits[2].argmax())
    ids, probs = kept_distribution(logits[0], params[0])
    draws = torch.tensor([sample_token(logits[0], params[0], make_generator(s)) for s in range(4000)])
    frequency = torch.stack([(draws == i).float().mean() for i in ids])
    assert torch.allclose(frequency, probs, atol=0.03)
