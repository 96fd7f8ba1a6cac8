"""Toy task: multi-step integer arithmetic with step-by-step reference solutions.

Small enough to train a tiny policy on CPU, long enough (about 60–250 characters, 30–100
tokens under a small BPE) that a decoding method has room to go wrong mid-solution:

    question: Compute ((17 + 25) * 3 - 48) / 6.
    solution: 17 + 25 = 42. 42 * 3 = 126. 126 - 48 = 78. 78 / 6 = 13. The answer is \\boxed{13}.

Every intermediate result is a positive integer (divisions are exact, subtractions stay
above zero). The train and test splits are disjoint by construction: an expression belongs
to the test split iff a hash of its text falls in the test buckets, whatever the seed.

The built-in problem set `nabla_dist/assets/problems/builtin.jsonl` was written by

    python -m nabla_dist.experiment.toy_task > nabla_dist/assets/problems/builtin.jsonl

(`BUILTIN_SIZE` test-split problems from `BUILTIN_SEED`, see `builtin_rows`).
"""

import ast
import hashlib
import json
import random
import re
import sys
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

SPLITS = ("train", "test")
TEST_BUCKETS = 2  # of NUM_BUCKETS: 20% of all expressions are test-only
NUM_BUCKETS = 10
BUILTIN_SEED = 0
BUILTIN_SIZE = 40

_OPS = ("+", "-", "*", "/")
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_AST_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


@dataclass(frozen=True)
class ToyProblem:
    id: str
    question: str
    solution: str  # reference solution, one "a op b = c." per step, ending in \boxed{answer}
    answer: str


def split_of(expression: str) -> str:
    """The split an expression belongs to: a pure function of its text, never of a seed."""
    bucket = int(hashlib.sha256(expression.encode()).hexdigest(), 16) % NUM_BUCKETS
    return "test" if bucket < TEST_BUCKETS else "train"


def generate(
    n: int,
    seed: int = 0,
    split: str = "train",
    *,
    min_steps: int = 3,
    max_steps: int = 6,
    operand_range: Tuple[int, int] = (2, 50),
    max_value: int = 10_000,
) -> List[ToyProblem]:
    """`n` distinct problems of `split`, the same for the same arguments.

    Each problem applies `min_steps`..`max_steps` operations to a running value, each with a
    fresh operand drawn from `operand_range` (inclusive); intermediate values stay in
    [1, `max_value`].
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not a toy split; use one of {SPLITS}")
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    if not 1 <= min_steps <= max_steps:
        raise ValueError(
            f"min_steps={min_steps}, max_steps={max_steps}: need 1 <= min_steps <= max_steps"
        )
    lo, hi = operand_range
    if not 1 <= lo <= hi:
        raise ValueError(f"operand_range={operand_range!r}: need 1 <= low <= high, e.g. (2, 50)")
    if max_value < 2 * hi:
        raise ValueError(f"max_value={max_value} must be at least 2 * operand high ({2 * hi})")

    rng = random.Random(seed)
    seen = set()
    problems: List[ToyProblem] = []
    max_attempts = 50 * n + 1000
    for _ in range(max_attempts):
        if len(problems) == n:
            break
        expression = _random_expression(rng, rng.randint(min_steps, max_steps), lo, hi, max_value)
        if expression in seen or split_of(expression) != split:
            continue
        seen.add(expression)
        question = f"Compute {expression}."
        solution, answer = _solve(expression)
        problems.append(ToyProblem(f"toy-{split}-{len(problems):05d}", question, solution, answer))
    if len(problems) < n:
        raise ValueError(
            f"found only {len(problems)} distinct {split} problems of the {n} asked for with "
            f"operand_range={operand_range!r}, steps {min_steps}..{max_steps}; "
            "widen the operand range or allow more steps"
        )
    return problems


def solution_steps(question: str) -> str:
    """The reference solution of a toy question ("Compute <expression>.") or a bare expression.

    Works for any expression of non-negative integers, + - * / and parentheses whose
    divisions are exact; raises ValueError otherwise.
    """
    return _solve(_expression_of(question))[0]


def first_error(question: str, response: str) -> Optional[int]:
    """Offset of the first character where `response` leaves the reference solution of
    `question`; None while it is the reference solution or a prefix of it.

    A response that runs on past the complete reference leaves it at `len(reference)`.
    The reference is the one correct solution the toy task writes (left operand first,
    one "a op b = c." per step): the toy policy is trained on reference solutions only,
    so a response that leaves it has written a wrong number, operator or step, and a
    response that is still on it can still be completed correctly.
    """
    reference = solution_steps(question)
    for i, (written, right) in enumerate(zip(response, reference)):
        if written != right:
            return i
    return len(reference) if len(response) > len(reference) else None


def right_continuation(question: str, response: str) -> Optional[str]:
    """The rest of the reference solution after `response`, if `response` is on it so far
    (what a correct continuation writes next); None once it has left the reference."""
    if first_error(question, response) is not None:
        return None
    return solution_steps(question)[len(response) :]


def builtin_rows() -> Iterator[dict]:
    """The rows of the built-in problem set, as written to builtin.jsonl."""
    for p in generate(BUILTIN_SIZE, BUILTIN_SEED, "test"):
        yield {"id": p.id, "question": p.question, "answer": p.answer, "solution": p.solution}


def _random_expression(rng: random.Random, steps: int, lo: int, hi: int, max_value: int) -> str:
    value = rng.randint(lo, hi)
    text, top_op = str(value), None
    for _ in range(steps):
        choices = _operand_choices(value, lo, hi, max_value)
        op = rng.choice(sorted(choices))
        operand = rng.choice(choices[op])
        # Only the running (left) side may need parentheses: operands are plain numbers.
        if top_op is not None and _PRECEDENCE[top_op] < _PRECEDENCE[op]:
            text = f"({text})"
        text, top_op = f"{text} {op} {operand}", op
        value = _apply(value, op, operand)
    return text


def _operand_choices(value: int, lo: int, hi: int, max_value: int) -> dict:
    """Operands per operation that keep the next value an integer in [1, max_value].

    Division by the value itself is left out: "41 / 41 = 1" teaches nothing.
    """
    choices = {
        "+": range(lo, min(hi, max_value - value) + 1),
        "-": range(lo, min(hi, value - 1) + 1),
        "*": range(max(lo, 2), min(hi, max_value // value) + 1),
        "/": [d for d in range(max(lo, 2), min(hi, value - 1) + 1) if value % d == 0],
    }
    return {op: list(ops) for op, ops in choices.items() if len(ops) > 0}


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0 or a % b != 0:
        raise ValueError(f"{a} / {b} is not an exact integer division; toy problems divide exactly")
    return a // b


def _expression_of(question: str) -> str:
    match = re.fullmatch(r"\s*Compute\s+(.+?)\.?\s*", question, flags=re.DOTALL)
    return match.group(1) if match else question.strip()


def _solve(expression: str, written: Optional[Dict[int, int]] = None) -> Tuple[str, str]:
    """(step-by-step solution, answer) of an expression, evaluated left operand first.

    `written`: step index -> the result written at that step instead of the right one; later
    steps compute from what was written, a division that is no longer exact giving its
    integer part (raises ValueError where a result leaves the positive integers).
    """
    try:
        tree = ast.parse(expression, mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"{expression!r} is not an arithmetic expression: {e.msg}") from None
    steps: List[str] = []

    def evaluate(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
            a, b = evaluate(node.left), evaluate(node.right)
            op = _AST_OPS[type(node.op)]
            if written is None:
                c = _apply(a, op, b)
            else:  # after a wrong result a division may not be exact: write its integer part
                c = written.get(len(steps), a // b if op == "/" and b else _apply(a, op, b))
                if c < 1:
                    raise ValueError(f"{a} {op} {b} = {c} leaves the positive integers")
            steps.append(f"{a} {op} {b} = {c}.")
            return c
        raise ValueError(
            f"{expression!r}: only non-negative integers, + - * / and parentheses are allowed"
        )

    answer = str(evaluate(tree))
    return " ".join(steps + [f"The answer is \\boxed{{{answer}}}."]), answer


def faithful_error(question: str, rng: random.Random, tries: int = 8) -> Optional[Tuple[str, Tuple[int, int]]]:
    """A solution with one wrong digit in one step's result, every later step computed
    faithfully from the wrong value (integer part where a division is no longer exact), and
    the character span of that wrong result (with its leading space); None if `tries` random
    choices all take a later subtraction below 1.

    Policy training masks the span (the policy never learns to write the error) and learns
    the rest: to continue from what is written, so that its final answers follow its steps.
    Without it the toy policy, which also tracks the true running value, writes the true
    quotient after a wrong dividend about as often as not: right answers after wrong steps.
    """
    expression = _expression_of(question)
    reference, _ = _solve(expression)
    results = [int(c) for c in re.findall(r"= (\d+)\.", reference)]
    for _ in range(tries):
        step = rng.randrange(len(results))
        digits = list(str(results[step]))
        at = rng.randrange(len(digits))
        digits[at] = rng.choice([d for d in "0123456789" if d != digits[at] and (at > 0 or d != "0")])
        try:
            text, _ = _solve(expression, {step: int("".join(digits))})
        except ValueError:
            continue
        start = [m.start() for m in re.finditer(r" \d+\.", text) if text[: m.start()].endswith("=")][step]
        return text, (start, start + 1 + len(digits))
    return None


def main() -> None:
    for row in builtin_rows():
        sys.stdout.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
