"""Per-problem and dataset-level accuracy metrics over k sampled responses per problem.

- avg@k: mean correctness of the k responses (the expected accuracy of one sample).
- pass@k: probability that at least one of k responses is correct, estimated without
  bias from n >= k samples of which c are correct (Chen et al., 2021).
- maj@k: whether the most common answer among the k responses is correct.

Dataset-level numbers are means over problems with 95% percentile-bootstrap confidence
intervals (problems resampled with replacement, fixed seed), so the same inputs always
give the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from nabla_dist.experiment.grading import is_equivalent

# Resamples are drawn in blocks so memory stays bounded on benchmarks with many problems.
_BOOTSTRAP_BLOCK = 500


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k).

    Computed as a running product so large n does not overflow. Requires 0 <= c <= n and
    1 <= k <= n.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n for pass@k, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n for pass@k, got n={n}, k={k}; sample more or lower k")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def avg_at_k(correct: Sequence[bool]) -> float:
    """Mean correctness over the k responses to one problem."""
    if len(correct) == 0:
        raise ValueError("avg@k of no responses is undefined; pass at least one verdict")
    return float(np.mean(np.asarray(correct, dtype=float)))


def majority_vote(
    answers: Sequence[str | None],
    equivalent: Callable[[str, str], bool] = is_equivalent,
) -> str | None:
    """The most common answer, counting equivalent answers as one; None if all are None.

    Answers are grouped greedily in order: each joins the first earlier group whose first
    member it is `equivalent(answer, first_member)` to, else starts a new group. The
    winner is the largest group, ties going to the group that appeared first; the
    returned string is that group's first member as written. None answers (nothing
    extracted) are never counted.
    """
    representatives: list[str] = []
    counts: list[int] = []
    for answer in answers:
        if answer is None:
            continue
        for group, representative in enumerate(representatives):
            if equivalent(answer, representative):
                counts[group] += 1
                break
        else:
            representatives.append(answer)
            counts.append(1)
    if not representatives:
        return None
    # list.index returns the first maximum, which is the earliest-appearing group.
    return representatives[counts.index(max(counts))]


def maj_at_k(
    answers: Sequence[str | None],
    gold: str,
    equivalent: Callable[[str, str], bool] = is_equivalent,
) -> bool:
    """Whether the majority answer (see `majority_vote`) is equivalent to `gold`."""
    winner = majority_vote(answers, equivalent)
    return winner is not None and bool(equivalent(winner, gold))


def summarize(
    correct: Mapping[str, Sequence[bool]],
    majority_correct: Mapping[str, bool] | None = None,
    pass_ks: Sequence[int] | None = None,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Dataset-level avg@k, pass@k and maj@k with bootstrap confidence intervals.

    `correct` maps problem id to the verdicts of its k responses; every problem must have
    the same k. `majority_correct` maps the same ids to their maj@k verdicts (omit it to
    skip maj@k). `pass_ks` lists the k's for pass@k (default: k itself).

    Returns a JSON-serialisable dict: "n_problems", "k", then for each metric named like
    "avg@8", "pass@1", "maj@8" its mean over problems and "<name>_ci_low"/"<name>_ci_high",
    the percentile-bootstrap interval at `confidence` from `n_resamples` resamples of the
    problems drawn with `seed`. All metrics share the same resamples. The interval is
    ordered (low <= high) but not necessarily symmetric about the mean.
    """
    if not correct:
        raise ValueError("summarize needs at least one problem's verdicts")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    problem_ids = list(correct)
    k = len(correct[problem_ids[0]])
    for problem_id in problem_ids:
        if len(correct[problem_id]) != k:
            raise ValueError(
                f"problem {problem_id!r} has {len(correct[problem_id])} verdicts, others have {k}; "
                "every problem needs the same number of samples"
            )
    pass_ks = [k] if pass_ks is None else list(pass_ks)

    scores: dict[str, np.ndarray] = {}  # metric name -> [n_problems]
    scores[f"avg@{k}"] = np.array([avg_at_k(correct[p]) for p in problem_ids])
    for pass_k in pass_ks:
        scores[f"pass@{pass_k}"] = np.array(
            [pass_at_k(k, int(sum(correct[p])), pass_k) for p in problem_ids]
        )
    if majority_correct is not None:
        missing = [p for p in problem_ids if p not in majority_correct]
        if missing:
            raise ValueError(f"majority_correct lacks problems {missing[:5]} (of {len(missing)})")
        scores[f"maj@{k}"] = np.array([float(majority_correct[p]) for p in problem_ids])

    names = list(scores)
    table = np.stack([scores[name] for name in names])  # [n_metrics, n_problems]
    resampled_means = _bootstrap_means(table, n_resamples, seed)  # [n_metrics, n_resamples]
    tail = (1 - confidence) / 2
    lows = np.quantile(resampled_means, tail, axis=1)
    highs = np.quantile(resampled_means, 1 - tail, axis=1)

    summary: dict[str, float] = {"n_problems": len(problem_ids), "k": k}
    for name, values, low, high in zip(names, table, lows, highs):
        summary[name] = float(values.mean())
        summary[f"{name}_ci_low"] = float(low)
        summary[f"{name}_ci_high"] = float(high)
    return summary


def paired_difference(
    a: Mapping[str, float], b: Mapping[str, float], confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of a − b over the problems both score, with a paired percentile-bootstrap
    interval (the same problems resampled for both): (difference, low, high)."""
    shared = [p for p in a if p in b]
    if not shared:
        raise ValueError("paired_difference needs problems scored by both methods")
    diff = np.array([[float(a[p]) - float(b[p]) for p in shared]])  # [1, n_problems]
    means = _bootstrap_means(diff, n_resamples, seed)[0]
    tail = (1 - confidence) / 2
    return float(diff.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def _bootstrap_means(table: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Means of each row of `table` over `n_resamples` resamples of its columns."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    n_problems = table.shape[1]
    rng = np.random.default_rng(seed)
    blocks = []
    for start in range(0, n_resamples, _BOOTSTRAP_BLOCK):
        size = min(_BOOTSTRAP_BLOCK, n_resamples - start)
        picks = rng.integers(0, n_problems, size=(size, n_problems))  # [size, n_problems]
        blocks.append(table[:, picks].mean(axis=2))  # [n_metrics, size]
    return np.concatenate(blocks, axis=1)
