import json

import pytest
import torch

from nabla_dist.algorithm.baselines import greedy
from nabla_dist.engines.loading import (
    TOY_DIR,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    resolve_path,
    toy_model_path,
)
from nabla_dist.engines.policy import PolicyEngine
from nabla_dist.engines.reward import RewardEngine
from nabla_dist.algorithm.requests import Reward
from nabla_dist.experiment.grading import grade
from nabla_dist.experiment.toy_task import generate
from nabla_dist.experiment.train_toy import (
    ToyTrainConfig,
    auc,
    build_tokenizer,
    reward_input_ids,
    train_toy,
    within_problem_auc,
)
from nabla_dist.runtime.local import LocalRuntime

TINY = ToyTrainConfig(
    threads=1, vocab_size=300, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
    sft_problems=64, sft_steps=4, sft_batch_size=8, warmup_steps=2,
    reward_problems=6, samples_per_temperature=1, temperatures=[0.8, 1.0], max_new_tokens=24,
    reward_layers=3, reward_synthetic_problems=8, reward_steps=3, reward_batch_size=4, eval_problems=4,
    eval_samples=2,
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    return out, train_toy(TINY, out)


def test_recipe_end_to_end_writes_models_the_engines_load(tiny_run):
    out, report = tiny_run
    tokenizer = load_tokenizer(str(out / "policy"))
    policy = PolicyEngine(load_causal_lm(str(out / "policy")), tokenizer)
    reward = RewardEngine(load_reward_model(str(out / "reward")), load_tokenizer(str(out / "reward")), tokenizer)
    prompt = policy.prompts.encode("Compute 3 + 4 * 5.")
    score = reward.score([Reward(prompt.text, tokenizer("3 + 4 = 7.")["input_ids"])])[0]
    assert torch.isfinite(torch.tensor(score.reward))
    saved = json.loads((out / "reward" / "train_report.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["config"]["seed"] == 0 and saved["eval_problems"] == 4
    assert {"greedy_accuracy", "sample_accuracy", "reward_auc", "reward_auc_within_problem", "wall_s"} <= saved.keys()


def test_reward_sees_the_conversation_as_the_reward_engine_builds_it(tiny_run):
    out, _ = tiny_run
    tokenizer = load_tokenizer(str(out / "policy"))
    engine = RewardEngine(load_reward_model(str(out / "reward")), tokenizer, tokenizer)
    response = tokenizer("7 + 1 = 8.")["input_ids"] + [tokenizer.eos_token_id]
    prefix, postfix = engine._split("Compute 7 + 1.")
    assert reward_input_ids(tokenizer, "Compute 7 + 1.", response) == prefix + response + postfix


def test_auc_counts_right_over_wrong_pairs_and_ties_half():
    assert auc([3, 2, 1], [True, True, False]) == 1.0
    assert auc([1, 2], [True, False]) == 0.0
    assert auc([1, 1], [True, False]) == 0.5
    assert auc([1, 2], [True, True]) is None


def test_within_problem_auc_ignores_ranking_across_problems():
    # Problem a's samples all outscore problem b's: over all samples that ranks right above
    # wrong (b is mostly wrong), but inside each problem the wrong sample is on top.
    scores = [9, 8, 7, 3, 2, 1]
    labels = [False, True, True, True, False, False]
    groups = ["a", "a", "a", "b", "b", "b"]
    assert auc(scores, labels) > 0.5
    value, mixed = within_problem_auc(scores, labels, groups)
    assert mixed == 2
    assert value == (0.0 + 1.0) / 2  # a: wrong above both right; b: right above both wrong
    assert within_problem_auc([1, 2], [True, True], ["a", "a"]) == (None, 0)


def test_unknown_toy_model_names_the_choices():
    with pytest.raises(ValueError, match="toy:policy"):
        toy_model_path("critic")


def test_toy_paths_name_the_shipped_directories():
    assert resolve_path("toy:policy") == str(TOY_DIR / "policy")
    assert resolve_path("toy:reward") == str(TOY_DIR / "reward")


def test_the_recipe_rebuilds_the_shipped_tokenizer_exactly():
    cfg = ToyTrainConfig()
    rebuilt = build_tokenizer(generate(5000, seed=cfg.seed, split="train"), cfg.vocab_size)  # as train_toy does
    shipped = load_tokenizer("toy:policy")
    assert rebuilt.get_vocab() == shipped.get_vocab()
    text = generate(1, seed=3, split="test")[0].solution
    assert rebuilt(text)["input_ids"] == shipped(text)["input_ids"]
    assert all(len(shipped.decode([i]).strip()) == 1 for i in shipped(" 1840")["input_ids"])  # one token per digit


def test_shipped_policy_is_right_on_about_half_of_held_out_problems():
    report = json.loads((TOY_DIR / "policy" / "train_report.json").read_text())
    assert 0.3 <= report["greedy_accuracy"] <= 0.7
    assert report["reward_auc"] > 0.7

    path = str(toy_model_path("policy"))
    engine = PolicyEngine(load_causal_lm(path), load_tokenizer(path))
    runtime = LocalRuntime(engine, None)
    problems = generate(20, seed=0, split="test")  # the first of the report's held-out problems
    prompts = {p.id: engine.prompts.encode(p.question) for p in problems}
    programs = {p.id: greedy(prompts[p.id], 128, 0) for p in problems}
    correct = {}

    def on_finish(key, output, error):
        assert error is None, error
        text = engine.tokenizer.decode(output.response_ids, skip_special_tokens=True)
        correct[key] = grade(text, next(p.answer for p in problems if p.id == key)).correct

    runtime.run(programs, on_finish)
    accuracy = sum(correct.values()) / len(problems)
    assert abs(accuracy - report["greedy_accuracy"]) <= 0.25, (accuracy, report["greedy_accuracy"])
