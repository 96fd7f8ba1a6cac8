"""summary.json: per method, accuracy with intervals, compute, and acceleration statistics.

Per method (all keys always present; a rate is null where it does not apply):
- accuracy: avg@k, pass@1 and pass@k, maj@k (majority over the k repeats' answers), each
  with a 95% bootstrap interval (metrics.summarize); a failed result counts as wrong.
- model calls, paper count and honest count (accounting.py): mean per result and total.
- tokens: forward and backward tokens through the models, response tokens.
- wall time: per result (mean, total) and of the run (`run_wall_s`: each session from
  its start to its last result, summed over the sessions of a resumed run), throughput.
- ∇-Reasoner's statistics: rejection rate (proposals rejected / compared), cache skip rate
  (inner steps served by the gradient cache / inner steps), selection skip rate (response
  tokens committed without optimization / response tokens).
"""

from __future__ import annotations

from collections import defaultdict

from nabla_dist.experiment import metrics
from nabla_dist.experiment.grading import equivalence

WALL_TIME_KEYS = ("wall_s_mean", "wall_s_total", "run_wall_s", "problems_per_s", "response_tokens_per_s")


def _rate(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def summarize_results(records: list[dict], repeats: int | None = None) -> dict:
    """{method: summary}. `repeats`: k (default: the fewest results any problem has)."""
    by_method: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_method[record["method"]].append(record)
    return {method: _summarize_method(method, rows, repeats) for method, rows in sorted(by_method.items())}


def accuracy(rows: list[dict], repeats: int | None = None) -> dict | None:
    """avg@k, pass@1, pass@k and maj@k over the problems with a gold answer (None: none has)."""
    verdicts: dict[str, list[bool]] = defaultdict(list)
    answers: dict[str, list] = defaultdict(list)
    gold: dict[str, str] = {}
    kind: dict[str, str] = {}  # how the problem's answers are compared (records of earlier versions: math)
    for r in sorted(rows, key=lambda r: (str(r["problem_id"]), r["repeat"])):
        if r["gold"] is None:
            continue
        pid = str(r["problem_id"])
        verdicts[pid].append(bool(r["correct"]))  # an error has correct=None: wrong
        answers[pid].append(r["pred"])
        gold[pid] = r["gold"]
        kind[pid] = r.get("grade", "math")
    if not verdicts:
        return None
    k = repeats or min(len(v) for v in verdicts.values())
    complete = [p for p in verdicts if len(verdicts[p]) >= k]  # a partial run: finished problems only
    if not complete:
        return None
    return metrics.summarize(
        {p: verdicts[p][:k] for p in complete},
        majority_correct={p: metrics.maj_at_k(answers[p][:k], gold[p], equivalence(kind[p])) for p in complete},
        pass_ks=sorted({1, k}),
    )


def _run_wall_s(rows: list[dict]) -> float | None:
    last: dict[float, float] = {}
    for r in rows:
        if "session" in r and "finished_at" in r:
            last[r["session"]] = max(last.get(r["session"], r["finished_at"]), r["finished_at"])
    return sum(end - start for start, end in last.items()) if last else None


def _summarize_method(method: str, rows: list[dict], repeats: int | None) -> dict:
    ok = [r for r in rows if not r.get("error")]
    counts = [r["counts"] for r in ok]
    total = lambda key: sum(c.get(key, 0) for c in counts)  # noqa: E731
    n = max(len(ok), 1)
    response_tokens = sum(r["response_tokens"] for r in ok)
    run_wall_s = _run_wall_s(rows)
    return {
        "results": len(rows),
        "errors": len(rows) - len(ok),
        "problems": len({str(r["problem_id"]) for r in rows}),
        "accuracy": accuracy(rows, repeats),
        "model_calls_mean": total("model_calls") / n,
        "model_calls_honest_mean": total("model_calls_honest") / n,
        "model_calls_total": total("model_calls"),
        "model_calls_honest_total": total("model_calls_honest"),
        "rollouts_mean": total("rollouts") / n,
        "forward_tokens_mean": total("forward_tokens") / n,
        "backward_tokens_mean": total("backward_tokens") / n,
        "forward_tokens_total": total("forward_tokens"),
        "backward_tokens_total": total("backward_tokens"),
        **{f"{model}_{what}_{agg}": total(f"{model}_{what}") / (n if agg == "mean" else 1)
           for model in ("policy", "reward") for what in ("forwards", "backwards", "forward_tokens", "backward_tokens")
           for agg in ("mean", "total")},
        "grads_from_memory_mean": total("grads_from_memory") / n,
        "response_tokens_mean": response_tokens / n,
        "response_tokens_total": response_tokens,
        "wall_s_mean": sum(r["wall_s"] for r in ok) / n,
        "wall_s_total": sum(r["wall_s"] for r in ok),
        "run_wall_s": run_wall_s,
        "problems_per_s": _rate(len(rows), run_wall_s),
        "response_tokens_per_s": _rate(response_tokens, run_wall_s),
        "rejection_rate": _rate(total("rejections"), total("comparisons")),
        "cache_skip_rate": _rate(total("grad_cache_hits"), total("inner_steps")),
        "selection_skip_rate": (
            1 - _rate(total("positions_optimized"), response_tokens) if method == "nabla" and response_tokens else None
        ),
    }
