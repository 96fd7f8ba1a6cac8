"""The toy reward model's data and loss (`nabla-dist train-toy`, step 4).

The engines read one score per sequence, at its last position, so ∇-Reasoner sees an outcome
reward as in the paper. Training gives that score dense supervision the toy task can build,
in the way process-reward data is built:

- **Labels.** At the end of every step ("a op b = c.") the score is trained on the *process*
  label (1 while every step so far is on the reference solution, `toy_task.first_error`);
  at the last position on the *outcome* (the graded final answer).
- **Data.** Reference solutions of train problems, the same solutions with one near-miss
  digit in one result (`near_miss`: three quarters of the first toy policy's first errors
  were a wrong digit of a product's result, never its last digit, the length right), and
  the policy's own graded samples.
- **Auxiliary targets (training only).** Such a digit is found only by checking the step,
  and a small model learns the check within the CPU budget only when it is taught the
  pieces: casting out nines. Linear heads on the hidden states of the three layers below the
  last predict, in turn, every number's residue mod 9 (at its last digit), the residue
  the result of "a op b" must have (at "="), and whether the step checks mod 9 (at the
  result's last digit). The last layer is left to gather the checks into the score. The
  heads are dropped when the model is saved: the reward is a plain sequence classifier.

Nothing here reads a test problem: the problems are train-split ones.
"""

from __future__ import annotations

import random
import re
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nabla_dist.engines.batch import pad_rows, positions_from_mask
from nabla_dist.engines.reward import classifier_conversation, split_template
from nabla_dist.experiment.toy_task import ToyProblem, _expression_of, _solve, first_error

STEP = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)\.")
IGNORE = -100


def near_miss(problem: ToyProblem, rng: random.Random, faithful: float = 0.7) -> str | None:
    """The reference solution with one result's digit moved by 1–3, as the toy policy errs: a
    product's result more often than others, not its last digit. With probability `faithful`
    later steps compute from the written value; otherwise only that result is wrong (the
    policy also writes such). None when no try gives a valid solution."""
    expression = _expression_of(problem.question)
    steps = STEP.findall(problem.solution)
    weights = [4 if op == "*" else 1 for _, op, _, _ in steps]
    for _ in range(8):
        k = rng.choices(range(len(steps)), weights)[0]
        result = steps[k][3]
        at = rng.randrange(len(result) - 1) if len(result) > 1 else 0
        digit = int(result[at]) + rng.choice((-3, -2, -1, 1, 1, 2, 3))
        if not 0 <= digit <= 9 or (at == 0 and digit == 0):
            continue
        written = int(result[:at] + str(digit) + result[at + 1 :])
        if rng.random() < faithful:
            try:
                return _solve(expression, {k: written})[0]
            except ValueError:
                continue
        needle = f"= {result}."
        if problem.solution.count(needle) == 1:
            return problem.solution.replace(needle, f"= {written}.")
    return None


_PIECES: "weakref.WeakKeyDictionary[object, list[str]]" = weakref.WeakKeyDictionary()


def _pieces(tokenizer) -> list[str]:
    """Each token's text (special tokens: ""), decoded once per tokenizer: examples are built
    by the ten thousand. Toy texts are ASCII, so a response is its tokens' texts joined."""
    if tokenizer not in _PIECES:
        _PIECES[tokenizer] = [tokenizer.decode([t], skip_special_tokens=True) for t in range(len(tokenizer))]
    return _PIECES[tokenizer]


def _checks(a: int, op: str, b: int, c: int) -> bool:
    """Does "a op b = c" hold mod 9 (casting out nines)?"""
    if op == "/":
        return (b * c - a) % 9 == 0
    return (c - (a + b if op == "+" else a - b if op == "-" else a * b)) % 9 == 0


@dataclass
class RewardExample:
    """One response in the reward model's view with its targets, per position."""

    ids: list[int]  # prefix(question) ‖ response ‖ postfix
    score: list[float]  # process label at step ends, outcome at the last position, else -1
    residue: list[int]  # a number's residue mod 9 at its last digit, else IGNORE
    expected: list[int]  # residue "a op b" must have, at "=" (not for /), else IGNORE
    check: list[float]  # does the step check mod 9, at the result's last digit, else -1


def reward_example(tokenizer, problem: ToyProblem, tokens: list[int], correct: bool) -> RewardExample:
    """Targets of `tokens` (a response, EOS included if it stopped) to `problem`."""
    prefix, postfix = split_template(tokenizer, classifier_conversation(tokenizer, problem.question))
    ids = prefix + list(tokens) + postfix
    n = len(ids)
    score, check = [-1.0] * n, [-1.0] * n
    residue, expected = [IGNORE] * n, [IGNORE] * n
    table = _pieces(tokenizer)
    pieces = [table[t] for t in ids]
    i = 0
    while i < n:  # numbers: a digit token, then digit tokens without a leading space
        if pieces[i].strip().isdigit() and len(pieces[i].strip()) == 1:
            j = i
            while j + 1 < n and len(pieces[j + 1]) == 1 and pieces[j + 1].isdigit():
                j += 1
            residue[j] = int("".join(p.strip() for p in pieces[i : j + 1])) % 9
            i = j + 1
        else:
            i += 1
    # character end of each response token, to find a step's tokens
    text, ends = "", []
    for piece in pieces[len(prefix) : len(prefix) + len(tokens)]:
        text += piece
        ends.append(len(text))
    error = first_error(problem.question, text)

    def token_at(char: int) -> int:  # the response token holding character `char`
        return len(prefix) + next(k for k, end in enumerate(ends) if end > char)

    for m in STEP.finditer(text):
        a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        if op != "/":
            expected[token_at(m.start(4) - 2)] = (a + b if op == "+" else a - b if op == "-" else a * b) % 9
        check[token_at(m.end(4) - 1)] = float(_checks(a, op, b, c))
        score[token_at(m.end() - 1)] = float(error is None or error >= m.end())
    score[-1] = float(correct)
    return RewardExample(ids, score, residue, expected, check)


class AuxiliaryHeads(torch.nn.Module):
    """Training-only linear heads on the hidden states of the three layers below the last."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.residue = torch.nn.Linear(hidden_size, 9)
        self.expected = torch.nn.Linear(hidden_size, 9)
        self.check = torch.nn.Linear(hidden_size, 1)


def reward_loss(model, heads: AuxiliaryHeads, examples: list[RewardExample], pad_id: int,
                aux_weight: float) -> torch.Tensor:
    """Score BCE at every labelled position + aux_weight · (the three auxiliary losses)."""
    device = model.device
    ids, mask = pad_rows([e.ids for e in examples], pad_id, left=True, device=device)  # [B, T]

    def targets(name: str, fill, dtype) -> torch.Tensor:
        rows = [getattr(e, name) for e in examples]
        out = torch.full(ids.shape, fill, dtype=dtype)
        for b, row in enumerate(rows):
            out[b, ids.shape[1] - len(row) :] = torch.tensor(row, dtype=dtype)
        return out.to(device)

    out = model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask),
                           output_hidden_states=True)
    layers = len(out.hidden_states) - 1  # hidden_states[k]: after layer k (0: embeddings)
    score = model.score(out.last_hidden_state)[..., 0].float()
    label = targets("score", -1.0, torch.float)
    loss = F.binary_cross_entropy_with_logits(score[label >= 0], label[label >= 0])
    if aux_weight:
        h_residue, h_expected, h_check = (out.hidden_states[layers - k] for k in (3, 2, 1))
        residue, expected = targets("residue", IGNORE, torch.long), targets("expected", IGNORE, torch.long)
        check = targets("check", -1.0, torch.float)
        aux = F.cross_entropy(heads.residue(h_residue).flatten(0, 1), residue.flatten(), ignore_index=IGNORE)
        aux = aux + F.cross_entropy(heads.expected(h_expected).flatten(0, 1), expected.flatten(),
                                    ignore_index=IGNORE)
        aux = aux + F.binary_cross_entropy_with_logits(heads.check(h_check)[..., 0][check >= 0], check[check >= 0])
        loss = loss + aux_weight * aux
    return loss
