"""The toy reward's data: near misses look like the policy's mistakes, and every target sits
on the token the module docstring says, with the value computed by hand."""

import random
import re

import torch
from transformers import AutoModelForSequenceClassification

from nabla_dist.engines.loading import load_tokenizer
from nabla_dist.experiment.grading import grade
from nabla_dist.experiment.toy_reward import IGNORE, STEP, AuxiliaryHeads, near_miss, reward_example, reward_loss
from nabla_dist.experiment.toy_task import ToyProblem, first_error, generate
from nabla_dist.experiment.train_toy import ToyTrainConfig, model_config

TOKENIZER = load_tokenizer("toy:policy")


def _problem(question: str, solution: str, answer: str) -> ToyProblem:
    return ToyProblem("p", question, solution, answer)


def test_near_miss_changes_one_result_digit_that_is_not_its_last():
    rng = random.Random(0)
    for problem in generate(60, seed=3, split="train"):
        text = near_miss(problem, rng)
        assert text is not None
        error = first_error(problem.question, text)
        assert error is not None
        right = STEP.findall(problem.solution)
        written = STEP.findall(text)
        k = next(i for i, (r, w) in enumerate(zip(right, written)) if r != w)
        assert right[k][:3] == written[k][:3]  # the operands were right: the result is wrong
        r, w = right[k][3], written[k][3]
        assert len(r) == len(w) and sum(a != b for a, b in zip(r, w)) == 1
        if len(r) > 1:
            assert r[-1] == w[-1]


def test_faithful_near_miss_computes_later_steps_from_the_written_value():
    rng = random.Random(1)
    for problem in generate(40, seed=4, split="train"):
        text = near_miss(problem, rng, faithful=1.0)
        steps = STEP.findall(text)
        for (_, _, _, c), (a, _, _, _) in zip(steps, steps[1:]):
            assert a == c  # the next step starts from what was written
        value = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__, "/": int.__floordiv__}
        wrong = [s for s in steps if value[s[1]](int(s[0]), int(s[2])) != int(s[3])]
        assert len(wrong) == 1  # only the corrupted step (a later division gives its integer part)


def test_targets_sit_on_their_tokens_with_hand_computed_values():
    reference = "17 + 25 = 42. 42 * 3 = 126. The answer is \\boxed{126}."
    question = "Compute (17 + 25) * 3."
    problem = _problem(question, reference, "126")
    wrong = "17 + 25 = 42. 42 * 3 = 136. The answer is \\boxed{136}."
    tokens = TOKENIZER(wrong, add_special_tokens=False)["input_ids"] + [TOKENIZER.eos_token_id]
    example = reward_example(TOKENIZER, problem, tokens, correct=False)
    pieces = [TOKENIZER.decode([t]) for t in example.ids]
    start = next(i for i in range(len(example.ids)) if example.ids[i : i + len(tokens)] == tokens)
    at = dict(enumerate(pieces))

    residues = [r for i, r in enumerate(example.residue) if r != IGNORE and i >= start]
    # at the last digits of 17, 25, 42, 42, 3, 136 and 136 (in the box)
    assert residues == [17 % 9, 25 % 9, 42 % 9, 42 % 9, 3 % 9, 136 % 9, 136 % 9]
    # the question's numbers carry residues too
    assert sum(r != IGNORE for r in example.residue[:start]) == 3
    expected = [(at[i], e) for i, e in enumerate(example.expected) if e != IGNORE]
    assert expected == [(" =", (17 + 25) % 9), (" =", (42 * 3) % 9)]
    checks = [(at[i], c) for i, c in enumerate(example.check) if c >= 0]
    assert checks == [("2", 1.0), ("6", 0.0)]  # 42 checks; 136 ≠ 126 mod 9 (1 ≠ 0)
    scores = [(at[i], s) for i, s in enumerate(example.score) if s >= 0]
    assert scores[:2] == [(".", 1.0), (".", 0.0)]  # process: step 1 on the reference, step 2 off it
    assert example.score[-1] == 0.0 and scores[-1][1] == 0.0  # outcome at the last position


def test_loss_trains_score_and_heads_and_the_heads_stay_out_of_the_model():
    torch.manual_seed(0)
    cfg = ToyTrainConfig(hidden_size=32, num_heads=2, intermediate_size=64, reward_layers=3)
    model = AutoModelForSequenceClassification.from_config(
        model_config(TOKENIZER, ToyTrainConfig(hidden_size=32, num_heads=2, intermediate_size=64, num_layers=3),
                     num_labels=1)
    )
    heads = AuxiliaryHeads(cfg.hidden_size)
    rng = random.Random(0)
    examples = []
    for problem in generate(4, seed=5, split="train"):
        ids = TOKENIZER(problem.solution, add_special_tokens=False)["input_ids"] + [TOKENIZER.eos_token_id]
        examples.append(reward_example(TOKENIZER, problem, ids, True))
        text = near_miss(problem, rng)
        ids = TOKENIZER(text, add_special_tokens=False)["input_ids"] + [TOKENIZER.eos_token_id]
        examples.append(reward_example(TOKENIZER, problem, ids, grade(text, problem.answer).correct))
    params = list(model.parameters()) + list(heads.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    first = None
    for _ in range(60):
        loss = reward_loss(model, heads, examples, TOKENIZER.pad_token_id, aux_weight=1.0)
        first = first if first is not None else loss.item()
        loss.backward()
        assert all(p.grad is not None for p in heads.parameters())
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 0.5 * first  # it fits a fixed batch
    assert not any(k.startswith(("residue", "expected", "check")) for k in model.state_dict())
    # without the auxiliary terms the heads take no part
    heads.zero_grad(set_to_none=True)
    reward_loss(model, heads, examples, TOKENIZER.pad_token_id, aux_weight=0.0).backward()
    assert all(p.grad is None for p in heads.parameters())
