"""The gradient memory serves a later ahead on an unchanged sequence exactly as a pass would."""

from __future__ import annotations

import pytest

from nabla_dist.algorithm.requests import PolicyGrad, RewardGrad
from tests.conftest import make_policy, make_reward
from tests.engines.test_gradients import QUESTION, relative_error


@pytest.fixture(scope="module")
def sequence(tiny_paths):
    import torch

    policy = make_policy(tiny_paths)
    prompt = policy.prompts.encode(QUESTION).ids
    torch.manual_seed(1)
    return prompt, torch.randint(3, policy.embeddings.shape[0], (16,)).tolist()


def engines(tiny_paths, **options):
    policy = make_policy(tiny_paths, **options)
    return policy, make_reward(tiny_paths, policy.tokenizer, **options)


def gradients(policy, reward, ids, ahead_start, response_start):
    (reward_result,) = reward.grad([RewardGrad(QUESTION, ids[response_start:], ahead_start - response_start)])
    policy.set_reward_embeddings(reward.aligned)
    m = len(ids) - ahead_start
    (policy_result,) = policy.grad([PolicyGrad(ids, ahead_start, list(range(m)), 1e-3, 1.0,
                                               reward_result.embedding_grad, want_norms=True)])
    return policy_result, reward_result


@pytest.mark.parametrize("prefix_cache", [0, 8], ids=["full", "prefix_kv"])
def test_a_later_ahead_on_the_same_sequence_is_served_without_a_pass_and_equals_one(tiny_paths, sequence,
                                                                                     prefix_cache):
    prompt, response = sequence
    ids, start = prompt + response, len(prompt)
    remembering = engines(tiny_paths, prefix_cache=prefix_cache, grad_memory=4)
    fresh = engines(tiny_paths, prefix_cache=prefix_cache, grad_memory=0)
    first, _ = gradients(*remembering, ids, start + 2, start)  # the probe: fills the memory
    assert first.passes == 1
    served, served_reward = gradients(*remembering, ids, start + 7, start)  # after committing 5 tokens
    computed, computed_reward = gradients(*fresh, ids, start + 7, start)
    assert (served.passes, served_reward.passes, served.forward_tokens) == (0, 0, 0)
    assert (computed.passes, computed_reward.passes) == (1, 1)
    assert served_reward.reward == pytest.approx(computed_reward.reward, abs=1e-6)
    assert relative_error(served_reward.embedding_grad, computed_reward.embedding_grad) < 1e-5
    assert relative_error(served.grads, computed.grads) < 1e-5
    assert relative_error(served.norms, computed.norms) < 1e-5
    assert served.logprob == pytest.approx(computed.logprob, abs=1e-4)
    changed = ids[:-1] + [ids[-1] + 1]  # one token differs: nothing can be served
    again, again_reward = gradients(*remembering, changed, start + 7, start)
    assert (again.passes, again_reward.passes) == (1, 1)


def test_an_earlier_ahead_than_remembered_runs_a_pass(tiny_paths, sequence):
    prompt, response = sequence
    ids, start = prompt + response, len(prompt)
    pair = engines(tiny_paths, grad_memory=4)
    gradients(*pair, ids, start + 7, start)
    earlier, earlier_reward = gradients(*pair, ids, start + 2, start)  # rows before 7 were never computed
    assert (earlier.passes, earlier_reward.passes) == (1, 1)
