"""The ∇-Reasoner program on the tiny models: accounting, rejection scoring, seeds, switches."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from nabla_dist.algorithm.nabla import NablaConfig, NablaReasoner
from nabla_dist.algorithm.requests import PolicyGrad, Reward, RewardGrad, Rollout
from nabla_dist.runtime.local import LocalRuntime
from nabla_dist.runtime.options import RuntimeOptions
from tests.conftest import make_policy, make_reward

QUESTIONS = ["Compute 3 + 4.", "Compute ((17 + 25) * 3 - 48) / 6.", "What is 9 * 9 - 1?"]
# Random tiny models are confident nowhere, so every position is a candidate; the large lr
# moves the argmax so that resampling, regeneration and rejection all happen.
CONFIG = NablaConfig(max_new_tokens=12, max_rollouts=4, grad_norm_threshold=1e-4, max_iters=5, lr=0.5)


class RecordingRuntime(LocalRuntime):
    """The real local runtime, keeping every request it served (per program key)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.served, self.answered = [], []

    def serve(self, requests):
        self.served += requests
        answers = super().serve(requests)
        self.answered += list(zip(requests, answers))
        return answers


@pytest.fixture(scope="module")
def engines(tiny_paths):
    policy = make_policy(tiny_paths)
    return policy, make_reward(tiny_paths, policy.tokenizer)


def run_programs(engines, cfg=CONFIG, seeds=(0, 1, 2), head=False, max_batch_size=16, patience=16):
    policy, reward = engines
    runtime = RecordingRuntime(policy, reward, RuntimeOptions(max_batch_size=max_batch_size, batch_patience=patience))
    matrix = policy.head_matrix() if head else None
    outputs = {}
    programs = {
        i: NablaReasoner(policy.prompts.encode(q), cfg, seed, matrix).run()
        for i, (q, seed) in enumerate(zip(QUESTIONS, seeds))
    }

    def finish(key, output, error):
        assert error is None, error
        outputs[key] = output

    runtime.run(programs, finish)
    return outputs, runtime


def test_counts_equal_hand_computation_from_event_log(engines):
    outputs, runtime = run_programs(engines)
    for output in outputs.values():
        events, count = output.count.events, output.count
        kinds = [e["event"] for e in events]
        rollout_tokens = sum(e["tokens"] for e in events if e["event"] == "rollout")
        rollouts = kinds.count("rollout")
        inner, probes, reused = kinds.count("grad_inner"), kinds.count("grad_probe"), kinds.count("grad_reused")
        compares = kinds.count("compare")
        assert count.model_calls == rollout_tokens + 4 * (inner + reused) + 2 * compares
        passes = sum(2 * e["policy_passes"] + 2 * e["reward_passes"] + e["prefix_builds"]
                     for e in events if e["event"].startswith("grad_") and e["event"] != "grad_reused")
        scored = sum(e["scored"] for e in events if e["event"] == "compare")
        assert count.model_calls_honest == rollout_tokens + passes + scored
        assert count.model_calls_honest == (count.policy_forwards + count.policy_backwards + count.reward_forwards
                                            + count.reward_backwards)
        assert count.rollouts == rollouts
        assert probes > 0 and inner > 0 and compares > 0, "the run must exercise every charge"
        assert count.rejections == sum(e["rejected"] for e in events if e["event"] == "compare")
    # and the log agrees with the requests the runtime actually served
    served = runtime.served
    total = lambda key: sum(sum(e["event"] == key for e in o.count.events) for o in outputs.values())  # noqa: E731
    assert sum(isinstance(r, Rollout) and r.max_new_tokens > 0 for r in served) <= total("rollout")
    assert sum(isinstance(r, PolicyGrad) for r in served) == total("grad_inner") + total("grad_probe")
    assert sum(isinstance(r, RewardGrad) for r in served) == total("grad_inner") + total("grad_probe")
    assert sum(isinstance(r, Reward) for r in served) == sum(e["scored"] for o in outputs.values()
                                                             for e in o.count.events if e["event"] == "compare")


def test_gradients_run_on_the_argmax_sequence_not_the_sampled_one(engines):
    """Alg. 2: y_i = one-hot(argmax z_i) at every ahead position, where the rollout sampled
    another token too; what is committed is the sampled text."""
    policy, _ = engines
    _, runtime = run_programs(engines)
    prompts = [policy.prompts.encode(q).ids for q in QUESTIONS]
    first_rollouts, first_probes = {}, {}
    for request, answer in runtime.answered:
        if isinstance(request, Rollout) and request.prompt_ids in prompts:
            first_rollouts.setdefault(len(request.prompt_ids), answer)
        if isinstance(request, PolicyGrad) and request.ids[: request.ahead_start] in prompts:
            first_probes.setdefault(request.ahead_start, request)
    differing = 0
    for length, rollout in first_rollouts.items():
        probe = first_probes[length]  # committed is empty: the probe's ahead is the whole rollout
        assert probe.ids[length:] == rollout.argmax
        differing += rollout.argmax != rollout.tokens
    assert differing, "some rollout must sample a token other than the argmax for this test to bite"


def test_rejection_scores_both_responses_in_the_same_template(engines):
    policy, reward = engines
    _, runtime = run_programs(engines, cfg=dataclasses.replace(CONFIG, reuse_rewards=False))  # both scored each time
    scores = [r for r in runtime.served if isinstance(r, Reward)]
    prompts = {tuple(policy.prompts.encode(q).ids): q for q in QUESTIONS}
    assert scores
    for request in scores:
        assert request.prompt_text in QUESTIONS
        # regression: the reference scored the current response with the prompt left inside it
        for prompt_ids in prompts:
            assert tuple(request.response_ids[: len(prompt_ids)]) != prompt_ids
    # a current/proposed pair shares the committed prefix and the question
    pairs = list(zip(scores[0::2], scores[1::2]))
    assert all(a.prompt_text == b.prompt_text for a, b in pairs)


def test_same_seed_same_result_other_seed_other_rollouts(engines):
    first, _ = run_programs(engines, seeds=(0, 1, 2))
    again, _ = run_programs(engines, seeds=(0, 1, 2))
    other, _ = run_programs(engines, seeds=(10, 11, 12))
    for key in first:
        assert first[key].response_ids == again[key].response_ids
        assert first[key].count.decisions() == again[key].count.decisions()
    assert any(first[k].response_ids != other[k].response_ids for k in first)


def test_batching_does_not_change_results(engines):
    batched, runtime_batched = run_programs(engines)
    single, runtime_single = run_programs(engines, max_batch_size=1)
    for key in batched:
        assert batched[key].response_ids == single[key].response_ids
        assert batched[key].count.decisions() == single[key].count.decisions()
    assert sum(runtime_batched.engine_calls.values()) < sum(runtime_single.engine_calls.values())


def test_serving_the_largest_request_group_first_changes_batches_not_results(engines):
    largest_first, runtime_largest = run_programs(engines)
    every_type, runtime_every = run_programs(engines, patience=None)
    for key in largest_first:
        assert largest_first[key].response_ids == every_type[key].response_ids
        assert largest_first[key].count.decisions() == every_type[key].count.decisions()
    served = lambda runtime: Counter(type(r).__name__ for r in runtime.served)  # noqa: E731
    assert served(runtime_largest) == served(runtime_every)
    assert runtime_largest.engine_calls["Rollout"] < runtime_every.engine_calls["Rollout"]


@pytest.mark.parametrize("switch", ["grad_caching", "reuse_selector_grad"])
def test_exact_accelerations_leave_outputs_unchanged(engines, switch):
    on, _ = run_programs(engines)
    off_cfg = dataclasses.replace(CONFIG, **{switch: False})
    off, _ = run_programs(engines, cfg=off_cfg)
    for key in on:
        assert on[key].response_ids == off[key].response_ids
    evaluations = lambda outs: sum(o.count.grad_evaluations for o in outs.values())  # noqa: E731
    assert evaluations(on) < evaluations(off)


def test_latents_parametrization_runs_and_is_reproducible(engines):
    cfg = dataclasses.replace(CONFIG, parametrization="latents")
    first, _ = run_programs(engines, cfg=cfg, head=True)
    again, _ = run_programs(engines, cfg=cfg, head=True)
    for key in first:
        assert first[key].response_ids == again[key].response_ids
        assert first[key].count.positions_optimized > 0


def test_rollout_budget_of_one_is_plain_sampling(engines):
    cfg = dataclasses.replace(CONFIG, max_rollouts=1)
    outputs, runtime = run_programs(engines, cfg=cfg)
    assert all(isinstance(r, Rollout) for r in runtime.served)
    for output in outputs.values():
        assert output.count.rollouts == 1 and output.count.model_calls == len(output.response_ids)


def test_latents_without_head_is_refused(engines):
    policy, _ = engines
    with pytest.raises(ValueError, match="LM head"):
        NablaReasoner(policy.prompts.encode("x"), dataclasses.replace(CONFIG, parametrization="latents"), 0)


@pytest.mark.parametrize("parametrization", ["logits", "latents"])
def test_prefix_kv_leaves_outputs_unchanged(tiny_paths, parametrization):
    cfg = dataclasses.replace(CONFIG, parametrization=parametrization)
    results = {}
    for size in (0, 64):
        policy = make_policy(tiny_paths, prefix_cache=size)
        engines = (policy, make_reward(tiny_paths, policy.tokenizer, prefix_cache=size))
        results[size], _ = run_programs(engines, cfg=cfg, head=parametrization == "latents")
        if size:
            assert policy.prefix_cache.hits > 0 and engines[1].prefix_cache.hits > 0
    for key in results[0]:
        assert results[0][key].response_ids == results[64][key].response_ids


def test_gradient_memory_changes_passes_run_not_responses_decisions_or_paper_counts(tiny_paths):
    # without the selector's reuse, each inner loop's first gradient is the probe's sequence again
    cfg = dataclasses.replace(CONFIG, reuse_selector_grad=False)
    outputs = {}
    for memory in (64, 0):
        policy = make_policy(tiny_paths, grad_memory=memory)
        outputs[memory], _ = run_programs((policy, make_reward(tiny_paths, policy.tokenizer, grad_memory=memory)),
                                          cfg=cfg)
    on, off = outputs[64], outputs[0]
    for key in on:
        assert on[key].response_ids == off[key].response_ids
        assert on[key].count.decisions() == off[key].count.decisions()
        assert off[key].count.grads_from_memory == 0
    honest = lambda outs: sum(o.count.model_calls_honest for o in outs.values())  # noqa: E731
    assert sum(o.count.grads_from_memory for o in on.values()) > 0
    assert honest(on) < honest(off)


def test_reusing_rewards_scores_each_response_once_and_changes_no_decision(engines):
    on, runtime_on = run_programs(engines)
    off, runtime_off = run_programs(engines, cfg=dataclasses.replace(CONFIG, reuse_rewards=False))
    for key in on:
        assert on[key].response_ids == off[key].response_ids
        assert on[key].count.decisions() == off[key].count.decisions()
    scored = lambda runtime: [tuple(r.response_ids) for r in runtime.served if isinstance(r, Reward)]  # noqa: E731
    assert len(scored(runtime_on)) < len(scored(runtime_off)) == 2 * sum(o.count.comparisons for o in off.values())
    assert len(set(scored(runtime_on))) == len(scored(runtime_on))  # every response scored once
