"""summary.json: per method, accuracy with intervals, compute, and acceleration statistics."""

from __future__ import annotations

from collections import defaultdict

from nabla_dist.experiment import metrics


def _rate(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def summarize_results(records: list[dict]) -> dict:
    by_method: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        by_method[record["method"]].append(record)
    return {method: _summarize_method(rows) for method, rows in sorted(by_method.items())}


def _summarize_method(rows: list[dict]) -> dict:
    ok = [r for r in rows if not r.get("error")]
    out: dict = {"results": len(rows), "errors": len(rows) - len(ok)}
    graded = [r for r in ok if r.get("correct") is not None]
    if graded:
        correct: dict[str, list[bool]] = defaultdict(list)
        for r in graded:
            correct[str(r["problem_id"])].append(bool(r["correct"]))
        k = min(len(v) for v in correct.values())
        correct = {p: v[:k] for p, v in correct.items()}  # equal k for every problem
        out["accuracy"] = metrics.summarize(correct)
    counts = [r["counts"] for r in ok]
    total = lambda key: sum(c.get(key, 0) for c in counts)  # noqa: E731
    n = max(len(ok), 1)
    out.update(
        model_calls_mean=total("model_calls") / n,
        model_calls_honest_mean=total("model_calls_honest") / n,
        model_calls_total=total("model_calls"),
        model_calls_honest_total=total("model_calls_honest"),
        forward_tokens_total=total("forward_tokens"),
        backward_tokens_total=total("backward_tokens"),
        response_tokens_mean=sum(r["response_tokens"] for r in ok) / n,
        wall_s_mean=sum(r["wall_s"] for r in ok) / n,
        rejection_rate=_rate(total("rejections"), total("comparisons")),
        cache_skip_rate=_rate(
            total("inner_steps") - total("grad_evaluations") - total("grad_reused"), total("inner_steps")
        ),
        selection_skip_rate=(
            1 - _rate(total("positions_optimized"), sum(r["response_tokens"] for r in ok))
            if total("positions_optimized") else None
        ),
    )
    return out
