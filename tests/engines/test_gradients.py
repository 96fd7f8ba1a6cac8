"""Engines' vocabulary-space gradients against a straightforward autograd computation.

The reference builds the whole input from soft one-hots (y @ embedding matrix), runs the
models once and differentiates L = −(λ_nll Σ_i ⟨log π(·|…, y_<i), y_i⟩ + λ_R R) with
respect to the ahead one-hots, as ALGORITHM.md defines it.
"""

from __future__ import annotations

import pytest
import torch

from nabla_dist.algorithm.requests import PolicyGrad, Reward, RewardGrad
from nabla_dist.engines.reward import PLACEHOLDER
from tests.conftest import make_policy, make_reward

QUESTION = "Compute (12 + 7) * 3."


def aligned_reference(policy_tok, reward_tok, reward_embeddings):
    """Row v: the reward embedding of policy token v's string (pad where it is missing)."""
    strings = policy_tok.convert_ids_to_tokens(list(range(len(policy_tok))))
    reward_vocab = reward_tok.get_vocab()
    index = [reward_vocab.get(s, reward_tok.pad_token_id) for s in strings]
    return reward_embeddings[torch.tensor(index)]


def reference_grad(policy, reward, ids, ahead_start, response_start, lambda_nll, lambda_reward):
    """∂L/∂y for the ahead one-hots by autograd through soft one-hots: [m, V]."""
    vocab = policy.embeddings.shape[0]
    onehots = torch.nn.functional.one_hot(torch.tensor(ids), vocab).double()
    y = onehots[ahead_start:].clone().requires_grad_(True)
    full = torch.cat([onehots[:ahead_start], y])  # [T, V]
    model = policy.model.double()
    logits = model(inputs_embeds=(full @ policy.embeddings.double())[None]).logits[0]  # [T, V]
    log_probs = torch.log_softmax(logits, dim=-1)
    nll_term = (log_probs[ahead_start - 1 : -1] * y).sum()
    loss = -lambda_nll * nll_term
    if reward is not None:
        rmodel = reward.model.double()
        text = reward.tokenizer.apply_chat_template(
            [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": PLACEHOLDER}], tokenize=False
        )
        prefix, postfix = (reward.tokenizer(s, add_special_tokens=False)["input_ids"] for s in text.split(PLACEHOLDER))
        table = rmodel.get_input_embeddings().weight
        aligned = aligned_reference(policy.tokenizer, reward.tokenizer, table)
        response = full[response_start:] @ aligned  # policy one-hots through the aligned matrix
        inputs = torch.cat([table[torch.tensor(prefix)], response, table[torch.tensor(postfix)]])
        score = rmodel(inputs_embeds=inputs[None]).logits[0, 0]
        loss = loss - lambda_reward * score
    (grad,) = torch.autograd.grad(loss, y)
    policy.model.float()
    if reward is not None:
        reward.model.float()
    return grad.float()


def engine_grad(policy, reward, ids, ahead_start, response_start, lambda_nll, lambda_reward, want_norms=False):
    m = len(ids) - ahead_start
    reward_grad = None
    if reward is not None:
        (reward_grad,) = reward.grad([RewardGrad(QUESTION, ids[response_start:], ahead_start - response_start)])
        policy.set_reward_embeddings(reward.aligned)
    request = PolicyGrad(
        ids=ids,
        ahead_start=ahead_start,
        positions=list(range(m)),
        lambda_nll=lambda_nll,
        lambda_reward=lambda_reward,
        reward_embedding_grad=None if reward_grad is None else reward_grad.embedding_grad,
        want_norms=want_norms,
    )
    return policy.grad([request])[0]


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def sequence(tiny_paths):
    policy = make_policy(tiny_paths)
    prompt = policy.prompts.encode(QUESTION).ids
    torch.manual_seed(0)
    response = torch.randint(3, policy.embeddings.shape[0], (14,)).tolist()
    return prompt, response


CASES = [(None, (1.0, 0.0))] + [
    (reward, lambdas) for reward in ("reward", "reward_other") for lambdas in ((1.0, 0.0), (0.0, 1.0), (1e-3, 1.0))
]


@pytest.mark.parametrize("prefix_cache", [0, 8], ids=["full", "prefix_kv"])
@pytest.mark.parametrize("policy_name", ["policy", "policy_tied"])
@pytest.mark.parametrize("reward_name,lambdas", CASES, ids=lambda v: str(v))
def test_vocab_gradient_matches_autograd_through_soft_onehots(
    tiny_paths, sequence, policy_name, reward_name, lambdas, prefix_cache
):
    lambda_nll, lambda_reward = lambdas
    policy = make_policy(tiny_paths, policy_name, prefix_cache=prefix_cache)
    reward = make_reward(tiny_paths, policy.tokenizer, reward_name, prefix_cache=prefix_cache) if reward_name else None
    prompt, response = sequence
    ids = prompt + response
    ahead_start = len(prompt) + 5  # 5 committed tokens, 9 ahead
    expected = reference_grad(policy, reward, ids, ahead_start, len(prompt), lambda_nll, lambda_reward)
    for _ in range(2):  # the second pass is served from the prefix cache when it is on
        result = engine_grad(policy, reward, ids, ahead_start, len(prompt), lambda_nll, lambda_reward, want_norms=True)
        assert result.grads.shape == expected.shape
        assert relative_error(result.grads, expected) <= 1e-5
    assert torch.allclose(result.norms, expected.norm(dim=-1), rtol=1e-5)


def test_reward_of_other_tokenizer_is_aligned_by_string_with_a_warning(tiny_paths, caplog):
    policy = make_policy(tiny_paths)
    with caplog.at_level("WARNING"):
        reward = make_reward(tiny_paths, policy.tokenizer, "reward_other")
    assert "aligned" in caplog.text
    strings = policy.tokenizer.convert_ids_to_tokens(list(range(len(policy.tokenizer))))
    vocab = reward.tokenizer.get_vocab()
    moved = [i for i, s in enumerate(strings) if s in vocab and vocab[s] != i]
    assert moved, "the fixture must exercise re-indexing, not only identity"
    for v in moved[:20]:
        assert torch.equal(reward.aligned[v], reward.embeddings[vocab[strings[v]]])
    missing = [i for i, s in enumerate(strings) if s not in vocab]
    assert missing and torch.equal(reward.aligned[missing[0]], reward.embeddings[reward.tokenizer.pad_token_id])


@pytest.mark.parametrize("norm_chunk,lazy", [(1, True), (3, True), (64, True), (3, False)])
def test_norm_threshold_returns_first_candidate_reaching_it(tiny_paths, sequence, norm_chunk, lazy):
    policy = make_policy(tiny_paths, norm_chunk=norm_chunk, lazy_probe=lazy)
    prompt, response = sequence
    ids, start = prompt + response, len(prompt)
    full = engine_grad(policy, None, ids, start, start, 1.0, 0.0, want_norms=True)
    # candidates in rising norm, threshold between the last two: only the last reaches
    # it, so the search goes through several windows (of at most norm_chunk)
    candidates = sorted([1, 3, 5, 7], key=lambda p: float(full.norms[p]))
    threshold = float(full.norms[candidates[-2:]].mean())
    request = PolicyGrad(ids, start, candidates, 1.0, 0.0, norm_threshold=threshold)
    (picked,) = policy.grad([request])
    first = next(p for p in candidates if full.norms[p] >= threshold)
    assert picked.positions == [first]
    assert torch.allclose(picked.grads[0], full.grads[first], rtol=1e-5, atol=1e-7)
    (none,) = policy.grad([PolicyGrad(ids, start, candidates, 1.0, 0.0, norm_threshold=1e9)])
    assert none.positions == [] and none.grads.shape[0] == 0


def test_bf16_autocast_gradient_stays_close_to_fp32(tiny_paths, sequence):
    prompt, response = sequence
    ids, start = prompt + response, len(prompt)
    fp32 = engine_grad(make_policy(tiny_paths), None, ids, start, start, 1.0, 0.0)
    bf16 = engine_grad(make_policy(tiny_paths, autocast_bf16=True), None, ids, start, start, 1.0, 0.0)
    cosine = torch.nn.functional.cosine_similarity(fp32.grads.flatten(), bf16.grads.flatten(), dim=0)
    assert cosine > 0.99


@pytest.mark.parametrize("prefix_cache", [0, 8], ids=["full", "prefix_kv"])
def test_generative_verifier_gradient_matches_autograd(tiny_paths, sequence, prefix_cache):
    from transformers import AutoModelForCausalLM

    from nabla_dist.engines.spec import RewardSpec
    from nabla_dist.engines.verifier import GenerativeVerifierEngine

    policy = make_policy(tiny_paths, prefix_cache=prefix_cache)
    judge = AutoModelForCausalLM.from_pretrained(tiny_paths["policy_tied"])
    spec = RewardSpec(path=str(tiny_paths["policy_tied"]), kind="verifier", verdict="The", prefix_cache=prefix_cache)
    verifier = GenerativeVerifierEngine(judge, policy.tokenizer, policy.tokenizer, spec)
    prompt, response = sequence
    ids, start = prompt + response, len(prompt) + 5
    result = engine_grad(policy, verifier, ids, start, len(prompt), 0.0, 1.0)

    y_all = torch.nn.functional.one_hot(torch.tensor(response), policy.embeddings.shape[0]).double()
    y = y_all[5:].clone().requires_grad_(True)
    prefix, postfix = (
        verifier.tokenizer(s, add_special_tokens=False)["input_ids"]
        for s in verifier.conversation(QUESTION).split(PLACEHOLDER)
    )
    model = judge.double()
    table = model.get_input_embeddings().weight
    inputs = torch.cat([table[torch.tensor(prefix)], torch.cat([y_all[:5], y]) @ table, table[torch.tensor(postfix)]])
    logits = model(inputs_embeds=inputs[None]).logits[0, -1]
    reward = torch.log_softmax(logits, -1)[verifier.verdict_id]
    (expected,) = torch.autograd.grad(-reward, y)
    judge.float()
    assert relative_error(result.grads, expected.float()) <= 1e-5
    (score,) = verifier.score([Reward(QUESTION, response)])
    assert abs(score.reward - float(reward)) < 1e-4
