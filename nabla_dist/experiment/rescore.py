"""Self-consistency and Best-of-N decided from their candidates, at N or at any smaller n.

Sample j of a problem is seeded by seed + 1000·j whatever N is, so the first n candidates
of an N-run are the candidates an n-run would draw. A record therefore keeps every
candidate with what it cost, and `decide` turns a list of candidates into the record's
answer and counts; the run uses it at N, `rescore_records` at every smaller n, so a budget
curve needs no new generation:

- SC@n: majority vote over the first n candidates' answers (metrics.majority_vote); the
  response shown is the first candidate giving the winning answer.
- BoN@n: the first candidate of highest reward among the first n.
- Counts at n are replayed through the same `Accounting` the programs use: each candidate's
  rollout (its tokens and forward tokens), and for BoN its reward score.

`nabla-dist rescore <output_dir> [--n 1 2 4]` writes <output_dir>/rescore.json: the
summary of every n, keyed "<method>@<n>".
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from nabla_dist.algorithm.accounting import Accounting
from nabla_dist.algorithm.requests import RolloutResult
from nabla_dist.experiment.grading import is_correct
from nabla_dist.experiment.metrics import majority_vote
from nabla_dist.experiment.results import ResultsFile, write_json_atomic
from nabla_dist.experiment.summary import summarize_results

RESCORABLE = ("self_consistency", "best_of_n")


def decide(method: str, candidates: list[dict], gold: str | None, grade: str = "math") -> dict:
    """The record fields a `method` run with exactly these candidates would write (`grade`:
    how the chosen answer is judged, grading.py).

    A candidate: {"response", "answer", "tokens", "forward_tokens", "stopped"}, plus
    {"reward", "reward_tokens"} for best_of_n.
    """
    if method not in RESCORABLE:
        raise ValueError(f"method {method!r} has no candidates to decide from; use one of {RESCORABLE}")
    if not candidates:
        raise ValueError(f"{method}: no candidates to decide from")
    count = Accounting()
    for c in candidates:
        # a stand-in rollout of the same size: Accounting reads only its length and forward tokens
        count.rollout(RolloutResult([0] * c["tokens"], c["stopped"], torch.empty(0), torch.empty(0),
                                    forward_tokens=c["forward_tokens"]))
    if method == "best_of_n":
        for c in candidates:
            count.reward_score(c["reward_tokens"])
        rewards = [c["reward"] for c in candidates]
        chosen = max(range(len(candidates)), key=rewards.__getitem__)  # first of equal maxima
        pred = candidates[chosen]["answer"]
    else:
        answers = [c["answer"] for c in candidates]
        pred = majority_vote(answers)
        chosen = answers.index(pred) if pred is not None else 0
    best = candidates[chosen]
    return {
        "response": best["response"],
        "pred": pred,
        "correct": None if gold is None else is_correct(pred, gold, grade),
        "model_calls": count.model_calls,
        "model_calls_honest": count.model_calls_honest,
        "response_tokens": best["tokens"],
        "stopped": best["stopped"],
        "counts": count.totals(),
        "chosen": chosen,
    }


def rescore_record(record: dict, n: int) -> dict:
    """The record an n-run would have written (its timing fields are the N-run's)."""
    candidates = record["candidates"]
    if not 1 <= n <= len(candidates):
        raise ValueError(f"n={n} is out of range: the record of {record['problem_id']} has {len(candidates)} candidates")
    decided = decide(record["method"], candidates[:n], record["gold"], record.get("grade", "math"))
    return {**record, **decided, "candidates": candidates[:n]}


def rescore_records(records: list[dict], n: int) -> list[dict]:
    """Every successful record re-decided at n; failed records are kept as they are."""
    return [r if r.get("error") else rescore_record(r, n) for r in records]


def default_ns(big_n: int) -> list[int]:
    """1, 2, 4, … below N, and N."""
    ns, n = [], 1
    while n < big_n:
        ns.append(n)
        n *= 2
    return ns + [big_n]


def rescore_run(output_dir: str | Path, ns: list[int] | None = None) -> dict:
    """Summaries of an SC / BoN run at every n in `ns` (default: `default_ns(N)`), written to rescore.json."""
    out = Path(output_dir)
    if not (out / "config.yaml").exists():
        raise FileNotFoundError(f"{out} holds no config.yaml — pass the output_dir of a self_consistency or "
                                "best_of_n run")
    cfg = OmegaConf.load(out / "config.yaml")
    method, big_n = cfg.method.name, int(cfg.method.n)
    if method not in RESCORABLE:
        raise ValueError(f"{out} is a {method} run — only {' and '.join(RESCORABLE)} runs can be re-scored at "
                         "smaller N")
    ns = default_ns(big_n) if not ns else sorted(set(ns))
    bad = [n for n in ns if not 1 <= n <= big_n]
    if bad:
        raise ValueError(f"--n {' '.join(map(str, bad))} is out of range — the run drew N={big_n} candidates per "
                         f"problem: use n from 1 to {big_n}")
    records = [r for r in ResultsFile(out / "results.jsonl").read() if r["method"] == method]
    if not records:
        raise ValueError(f"{out}/results.jsonl holds no {method} results yet — rescore it once its run has results")
    table = {}
    for n in ns:
        table[f"{method}@{n}"] = summarize_results(rescore_records(records, n), int(cfg.data.repeats))[method]
    write_json_atomic(out / "rescore.json", table)
    return table


def format_table(table: dict) -> str:
    lines = [f"{'method@n':<24} {'accuracy':>9} {'calls/problem':>14} {'honest':>10}"]
    for name, s in table.items():
        accuracy = s.get("accuracy", {})
        avg = next((v for k, v in accuracy.items() if k.startswith("avg@") and "_ci_" not in k), None)
        lines.append(f"{name:<24} {'-' if avg is None else f'{avg:.3f}':>9} "
                     f"{s['model_calls_mean']:>14.1f} {s['model_calls_honest_mean']:>10.1f}")
    return "\n".join(lines)
