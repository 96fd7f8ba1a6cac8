"""A padded batch of requests of different lengths answers what each request answers alone."""

from __future__ import annotations

import pytest
import torch

from nabla_dist.algorithm.requests import PolicyGrad, Reward, RewardGrad, Rollout, SamplingParams
from tests.conftest import make_policy, make_reward

QUESTIONS = ["Compute 3 + 4.", "Compute ((17 + 25) * 3 - 48) / 6.", "What is 9 * 9 - 1 step by step?"]


@pytest.fixture(scope="module", params=[0, 8], ids=["full", "prefix_kv"])
def engines(tiny_paths, request):
    policy = make_policy(tiny_paths, prefix_cache=request.param)
    reward = make_reward(tiny_paths, policy.tokenizer, prefix_cache=request.param)
    policy.set_reward_embeddings(reward.aligned)
    return policy, reward


def _responses(n, lengths, vocab):
    generator = torch.Generator().manual_seed(n)
    return [torch.randint(3, vocab, (k,), generator=generator).tolist() for k in lengths]


def test_rollout_batch_equals_single(engines):
    policy, _ = engines
    requests = [
        Rollout(policy.prompts.encode(q).ids, 12 + 4 * i, SamplingParams(0.8, 0.95, 20), seed=i, latents="logits")
        for i, q in enumerate(QUESTIONS)
    ]
    batched = policy.rollout(requests)
    for request, together in zip(requests, batched):
        (alone,) = policy.rollout([request])
        assert together.tokens == alone.tokens
        assert together.latent_positions == alone.latent_positions
        assert torch.allclose(together.latents, alone.latents, atol=1e-5)
        assert torch.allclose(together.confidence, alone.confidence, atol=1e-6)
        assert together.forward_tokens == alone.forward_tokens
    assert len({len(r.tokens) for r in batched}) > 1, "rows must differ in length to exercise padding"


def test_rollout_on_a_cached_prefix_equals_a_full_prefill(tiny_paths):
    """∇'s regeneration P ‖ C ‖ t runs only t on the KV its gradient passes cached for P ‖ C;
    batched with a row that has no cached prefix, both rows match an engine without a cache."""
    cached, plain = make_policy(tiny_paths, prefix_cache=8), make_policy(tiny_paths, prefix_cache=0)
    prompts = [cached.prompts.encode(q).ids for q in QUESTIONS[:2]]
    committed = _responses(1, [5], cached.embeddings.shape[0])[0]
    ahead = [7, 8, 9]
    cached.grad([PolicyGrad(prompts[0] + committed + ahead, len(prompts[0]) + len(committed), [0], 1.0, 0.0)])
    hits = cached.prefix_cache.hits
    requests = [
        Rollout(prompts[0] + committed + [11], 10, SamplingParams(0.8, 0.95), seed=3, latents="logits"),
        Rollout(prompts[1], 14, SamplingParams(0.8, 0.95), seed=4, latents="logits"),
    ]
    fast, slow = cached.rollout(requests), plain.rollout(requests)
    assert cached.prefix_cache.hits == hits + 1, "the regeneration must run on the cached prefix"
    for a, b in zip(fast, slow):
        assert a.tokens == b.tokens and a.latent_positions == b.latent_positions
        assert torch.allclose(a.latents, b.latents, atol=1e-5)
        assert a.forward_tokens == b.forward_tokens


def test_rollout_keeps_hidden_latents_only_at_uncertain_positions(engines):
    policy, _ = engines
    prompt = policy.prompts.encode(QUESTIONS[0]).ids
    (result,) = policy.rollout([Rollout(prompt, 16, SamplingParams(1.0), 0, "hidden", latents_max_confidence=0.2)])
    expected = [i for i, c in enumerate(result.confidence.tolist()) if c <= 0.2]
    assert result.latent_positions == expected
    assert result.latents.shape == (len(expected), policy.model.config.hidden_size)
    # the hidden state reproduces the step's logits through the head
    logits = result.latents @ policy.head_matrix().T
    probs = torch.softmax(logits, -1).max(-1).values
    assert torch.allclose(probs, result.confidence[expected], atol=1e-5)


def test_policy_and_reward_gradient_batches_equal_single(engines):
    policy, reward = engines
    prompts = [policy.prompts.encode(q).ids for q in QUESTIONS]
    responses = _responses(0, [6, 15, 10], policy.embeddings.shape[0])
    reward_requests = [RewardGrad(q, r, 2) for q, r in zip(QUESTIONS, responses)]
    reward_batch = reward.grad(reward_requests)
    policy_requests = [
        PolicyGrad(p + r, len(p) + 2, [0, 1], 1e-3, 1.0, rg.embedding_grad, want_norms=True)
        for p, r, rg in zip(prompts, responses, reward_batch)
    ]
    policy_batch = policy.grad(policy_requests)
    for rq, rb, pq, pb in zip(reward_requests, reward_batch, policy_requests, policy_batch):
        (ra,) = reward.grad([rq])
        (pa,) = policy.grad([pq])
        assert abs(ra.reward - rb.reward) < 1e-5
        assert torch.allclose(ra.embedding_grad, rb.embedding_grad, rtol=1e-4, atol=1e-7)
        assert torch.allclose(pa.grads, pb.grads, rtol=1e-4, atol=1e-7)
        assert torch.allclose(pa.norms, pb.norms, rtol=1e-4)
        assert abs(pa.logprob - pb.logprob) < 1e-4


def test_norm_probes_batched_pick_what_each_picks_alone(engines):
    """Probes go through the embedding products in step; each must stop where it would alone,
    also when another request in the batch asks for fixed positions or finds none."""
    policy, reward = engines
    prompts = [policy.prompts.encode(q).ids for q in QUESTIONS]
    responses = _responses(2, [9, 14, 12], policy.embeddings.shape[0])
    grads = reward.grad([RewardGrad(q, r, 1) for q, r in zip(QUESTIONS, responses)])
    norms = [
        policy.grad([PolicyGrad(p + r, len(p) + 1, [], 1e-3, 1.0, g.embedding_grad, want_norms=True)])[0].norms
        for p, r, g in zip(prompts, responses, grads)
    ]
    # row 0: candidates in rising norm, the 5th the first to reach (inside the third window
    # of sizes 1, 2, 4); row 1: none reaches; row 2: fixed positions
    candidates = sorted(range(1, 8), key=lambda p: float(norms[0][p]))
    threshold = float(norms[0][candidates[3:5]].mean())
    expected = candidates[4]
    requests = [
        PolicyGrad(prompts[0] + responses[0], len(prompts[0]) + 1, candidates, 1e-3, 1.0, grads[0].embedding_grad,
                   norm_threshold=threshold),
        PolicyGrad(prompts[1] + responses[1], len(prompts[1]) + 1, candidates, 1e-3, 1.0, grads[1].embedding_grad,
                   norm_threshold=float(norms[1].max()) * 2),
        PolicyGrad(prompts[2] + responses[2], len(prompts[2]) + 1, [0, 4], 1e-3, 1.0, grads[2].embedding_grad),
    ]
    batch = policy.grad(requests)
    assert batch[0].positions == [expected]
    assert batch[1].positions == [] and batch[1].grads.shape[0] == 0
    assert batch[2].positions == [0, 4]
    for request, together in zip(requests, batch):
        (alone,) = policy.grad([request])
        assert together.positions == alone.positions
        assert torch.allclose(together.grads, alone.grads, rtol=1e-4, atol=1e-7)


def test_reward_score_batch_equals_single_and_matches_grad_pass(engines):
    _, reward = engines
    responses = _responses(1, [3, 20, 9], len(reward.aligned))
    requests = [Reward(q, r) for q, r in zip(QUESTIONS, responses)]
    batch = reward.score(requests)
    for request, together in zip(requests, batch):
        (alone,) = reward.score([request])
        (with_grad,) = reward.grad([RewardGrad(request.prompt_text, request.response_ids, 0)])
        assert abs(alone.reward - together.reward) < 1e-5
        assert abs(alone.reward - with_grad.reward) < 1e-5
