"""Report rows from run and sweep directories: what each run measured, and per problem.

A DIR is a run directory (config.yaml + summary.json) or a sweep directory (sweep.json: its
points' run directories; points without a summary are listed as not run). Each run gives one
row per method, its numbers copied from summary.json, plus what is derived here: FLOPs, wall
time per result, rollouts saved by reuse (below), and each problem's accuracy (mean
correctness over its repeats; a failed result counts as wrong) for the bootstrap over problems.

FLOPs per problem ≈ Σ over models 2·P·(forward tokens + backward tokens): a forward pass
costs 2·P per token, and the backward passes of ∇-Reasoner go to the input embeddings with
frozen weights, so they compute activation gradients only (≈ 2·P, not the 4·P of training).
P is a model's parameter count less its input embedding table (a lookup; a tied table is
kept, it is the LM head), from its config (or `--params` for the policy). Tokens are the
ones actually run through each model, prefix-KV builds included, gradient memory hits
excluded (accounting.py). Attention-score FLOPs are left out. Runs recorded before tokens
were split by model charge every token at the policy's P.

Curves: one per method (and per swept value of any key that is not a budget key, e.g.
`policy.path`). A self-consistency / Best-of-N run also gives its points at n = 1, 2, 4, … < N,
re-scored from its candidates (rescore.py), unless a run at that n is in the report; they
are marked "rescored from N" and have no wall time of their own. Rollouts saved by reuse
(∇-Reasoner): optimized positions whose resampled token equals the rollout's, so the rollout
is kept instead of regenerated — positions optimized − (rollouts − 1), per problem. The
tokens such a regeneration would have cost are not recorded.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from omegaconf import OmegaConf

from nabla_dist.engines.loading import parameter_count
from nabla_dist.experiment.grading import is_equivalent
from nabla_dist.experiment.rescore import RESCORABLE, default_ns, rescore_records
from nabla_dist.experiment.results import ResultsFile
from nabla_dist.experiment.summary import summarize_results


LABELS = {"nabla": "∇-Reasoner", "greedy": "greedy", "self_consistency": "SC", "best_of_n": "BoN"}
BUDGET_KEYS = {"method.name", "method.n", "method.max_rollouts", "method.max_iters", "method.max_new_tokens",
               "method.confidence_threshold", "method.grad_norm_threshold", "method.entropy_threshold"}
COPIED = ("model_calls_mean", "model_calls_honest_mean", "model_calls_total", "model_calls_honest_total",
          "forward_tokens_mean", "backward_tokens_mean", "forward_tokens_total", "backward_tokens_total",
          "response_tokens_mean", "run_wall_s", "wall_s_mean", "rejection_rate", "cache_skip_rate",
          "selection_skip_rate")
# measure -> (column, axis label, file stem)
MEASURES = {
    "model calls": ("model_calls_mean", "model calls per problem (paper count)", "accuracy_vs_model_calls"),
    "model calls (honest)": ("model_calls_honest_mean", "model calls per problem (honest count)",
                             "accuracy_vs_model_calls_honest"),
    "FLOPs": ("flops_mean", "estimated FLOPs per problem, 2·P·(forward + backward tokens)", "accuracy_vs_flops"),
    "wall time": ("wall_s_per_result", "wall time per problem (s): run wall time / results",
                  "accuracy_vs_wall_time"),
}


# -- reading runs --------------------------------------------------------------------------------
def run_dirs(path: Path) -> list[tuple[Path, dict, str | None]]:
    """(run dir, swept values, status) of a run directory or of each point of a sweep directory."""
    if (path / "sweep.json").exists():
        index = json.loads((path / "sweep.json").read_text())
        return [(path / p["dir"], p["values"], p["status"]) for p in index["points"]]
    if (path / "config.yaml").exists():
        return [(path, {}, None)]
    raise FileNotFoundError(f"{path} is neither a run directory (config.yaml) nor a sweep directory (sweep.json)")


def count_params(path: str, reward: bool = False) -> int:
    """Parameters doing matmuls per token (engines/loading.parameter_count, no weights read)."""
    return parameter_count(path, reward, matmul_only=True)


def _params(path: str | None, reward: bool, notes: list[str], known: dict) -> int | None:
    """count_params once per model; None (and a note) where its config cannot be read."""
    if path and (path, reward) not in known:
        try:
            known[path, reward] = count_params(path, reward)
        except Exception as error:  # an unreachable hub id: FLOPs left blank, said in the report
            known[path, reward] = None
            notes.append(f"no parameter count for {path!r} ({type(error).__name__}: {error}); pass --params")
    return known.get((path, reward))


def _row(run: str, run_dir: Path, method: str, s: dict, cfg: dict, values: dict,
         params: tuple[int | None, int | None], source: str = "run") -> dict:
    """`params`: (policy, reward) parameter counts for FLOPs."""
    accuracy = s.get("accuracy") or {}
    k = accuracy.get("k")
    row = {"run": run, "method": method, "source": source, "dir": str(run_dir),
           "budget": _budget(method, values, cfg), **values,
           "problems": s["problems"], "results": s["results"], "errors": s["errors"], "k": k}
    names = {"avg@k": f"avg@{k}", "pass@1": "pass@1", "pass@k": f"pass@{k}", "maj@k": f"maj@{k}"}
    for metric, key in names.items():
        for suffix in ("", "_ci_low", "_ci_high"):
            row[metric + suffix] = accuracy.get(key + suffix)
    row.update({key: s.get(key) for key in COPIED})
    if source != "run":  # re-scored: the N-run's timings are not this n's
        row.update(run_wall_s=None, wall_s_mean=None)
    row["wall_s_per_result"] = row["run_wall_s"] / s["results"] if row["run_wall_s"] and s["results"] else None
    policy_params, reward_params = params
    row["params"] = policy_params
    row["flops_mean"], row["flops_total"] = (flops(s, policy_params, reward_params, which)
                                             for which in ("mean", "total"))
    return row


def flops(s: dict, policy_params: int | None, reward_params: int | None, which: str) -> float | None:
    """2·P·tokens per model from a summary's token counts (`which`: "mean" or "total")."""
    tokens = lambda model: (s.get(f"{model}_forward_tokens_{which}") or 0) + (s.get(f"{model}_backward_tokens_{which}")  # noqa: E731
                                                                               or 0)
    if not policy_params:
        return None
    if s.get(f"policy_forward_tokens_{which}") is None:  # an older run: tokens not split by model
        return 2 * policy_params * ((s.get(f"forward_tokens_{which}") or 0) + (s.get(f"backward_tokens_{which}") or 0))
    if tokens("reward") and not reward_params:
        return None
    return 2 * policy_params * tokens("policy") + 2 * (reward_params or 0) * tokens("reward")


def _budget(method: str, values: dict, cfg: dict):
    """N for SC / BoN, max_rollouts for ∇-Reasoner, 1 for greedy."""
    if method in RESCORABLE:
        return values.get("method.n", cfg["method"]["n"])
    if method == "nabla":
        return values.get("method.max_rollouts", cfg["method"]["max_rollouts"])
    return 1


def _reuse_saved(records: list[dict]) -> float | None:
    ok = [r["counts"] for r in records if not r.get("error")]
    if not ok:
        return None
    return sum(c.get("positions_optimized", 0) - (c.get("rollouts", 1) - 1) for c in ok) / len(ok)


def collect(dirs: list[Path], params_override: int | None = None) -> tuple[list[dict], list[str], dict]:
    """(rows, notes, what was run) over every run of `dirs`."""
    rows, notes, known = [], [], {}
    runs = {"data": set(), "size": set(), "policy": set(), "reward": set(), "wandb": None, "swept": {},
            "params": {"policy": {}, "reward": {}},  # role -> {path: P}
            "verdicts": {},  # (run, method) -> {problem id: accuracy}
            "candidates": {}}  # (run, method) -> records of an SC / BoN run with candidates
    for path in dirs:
        for run_dir, values, status in run_dirs(Path(path)):
            runs["swept"].update(dict.fromkeys(values))
            name = run_dir.name if len(dirs) == 1 or run_dir == Path(path) else f"{Path(path).name}/{run_dir.name}"
            if not (run_dir / "summary.json").exists():
                notes.append(f"{name}: no summary.json (status {status or 'unknown'}), not in the report")
                continue
            cfg = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"))
            summary = json.loads((run_dir / "summary.json").read_text())
            records = ResultsFile(run_dir / "results.jsonl").read()
            params = params_override or _params(cfg["policy"]["path"], False, notes, known)
            runs["params"]["policy"][cfg["policy"]["path"] if not params_override else "--params"] = params
            reward_params = None
            if cfg.get("reward"):
                classifier = cfg["reward"].get("kind", "classifier") == "classifier"  # else a causal LM
                reward_params = _params(cfg["reward"]["path"], classifier, notes, known)
            data = cfg["data"]
            runs["data"].add(f"{data['name']}{':' + Path(data['path']).name if data.get('path') else ''}")
            runs["size"].update(f"{s['problems']} problems × {data['repeats']}" for s in summary.values())
            runs["policy"].add(cfg["policy"]["path"])
            runs["wandb"] = runs["wandb"] or cfg.get("wandb")
            for method, s in summary.items():
                row = _row(name, run_dir, method, s, cfg, values, (params, reward_params))
                mine = [r for r in records if r["method"] == method]
                row["rollouts_saved_by_reuse_mean"] = _reuse_saved(mine) if method == "nabla" else None
                rows.append(row)
                runs["verdicts"][name, method] = problem_accuracy(mine)
                if method in ("nabla", "best_of_n") and cfg.get("reward"):
                    runs["reward"].add(cfg["reward"]["path"])
                    if not params_override:  # shown beside the policy's P
                        runs["params"]["reward"][cfg["reward"]["path"]] = reward_params
                if method in RESCORABLE:
                    rescored = _rescored(row, mine, cfg, values, (params, reward_params), s, notes)
                    rows += [r for r, _ in rescored]
                    runs["verdicts"].update({(r["run"], method): v for r, v in rescored})
                    if mine and all("candidates" in r for r in mine if not r.get("error")):
                        runs["candidates"][name, method] = mine  # graded only if it becomes the bins' base
    swept = runs["swept"] = list(runs["swept"])
    for r in rows:
        r["curve"] = _curve(r, swept)
    real = {(r["curve"], r["budget"]) for r in rows if r["source"] == "run"}
    rows = [r for r in rows if r["source"] == "run" or (r["curve"], r["budget"]) not in real]
    first = ["run", "method", "curve", "source", "dir", "budget", *swept]  # the same columns in every row
    rows = [{**{k: r.get(k) for k in first}, **{k: v for k, v in r.items() if k not in first}} for r in rows]
    return rows, notes, runs


def _rescored(row: dict, records: list[dict], cfg: dict, values: dict, params, s: dict,
              notes: list[str]) -> list[tuple[dict, dict]]:
    """(row, per-problem accuracy) at each n = 1, 2, 4, … < N."""
    method, big_n = row["method"], int(cfg["method"]["n"])
    if big_n == 1 or not records or any(not r.get("error") and "candidates" not in r for r in records):
        return []
    if len(records) != s["results"]:
        notes.append(f"{row['run']}: results.jsonl holds {len(records)} results but summary.json "
                     f"{s['results']}; not re-scored at smaller N")
        return []
    out = []
    for n in default_ns(big_n)[:-1]:
        at_n = rescore_records(records, n)
        summary = summarize_results(at_n, int(cfg["data"]["repeats"]))[method]
        point = {**values, **({"method.n": n} if "method.n" in values else {})}
        r = _row(f"{row['run']}@{n}", Path(row["dir"]), method, summary, cfg, point, params,
                 source=f"rescored from N={big_n}")
        r.update(budget=n, rollouts_saved_by_reuse_mean=None)
        out.append((r, problem_accuracy(at_n)))
    return out


def problem_accuracy(records: list[dict]) -> dict[str, float]:
    """{problem id: mean correctness over its repeats} over the problems with a gold answer; a
    failed result counts as wrong, as in summary.json."""
    verdicts = defaultdict(list)
    for r in records:
        if r.get("gold") is not None:
            verdicts[str(r["problem_id"])].append(bool(r.get("correct")))
    return {p: sum(v) / len(v) for p, v in verdicts.items()}


def candidate_accuracy(records: list[dict]) -> dict[str, float]:
    """{problem id: fraction of correct candidates} of an SC / BoN run: each problem's pass@1
    estimated from all its samples (every repeat's N candidates); a failed result counts as wrong."""
    verdicts = defaultdict(list)
    for r in records:
        if r.get("gold") is None:
            continue
        candidates = r.get("candidates") or [{"answer": None}]
        verdicts[str(r["problem_id"])] += [c["answer"] is not None and is_equivalent(c["answer"], r["gold"])
                                           for c in candidates]
    return {p: sum(v) / len(v) for p, v in verdicts.items()}


# -- curves and fronts -------------------------------------------------------------------------
def _curve(row: dict, swept: list[str]) -> str:
    """The method, and the values of swept keys other than budgets (e.g. the policy)."""
    extra = [f"{k.split('.')[-1]}={_short(row[k])}" for k in swept
             if k not in BUDGET_KEYS and row.get(k) is not None]
    return ", ".join([LABELS.get(row["method"], row["method"]), *extra])


def _short(value) -> str:
    text = str(value)
    return text.rstrip("/").rsplit("/", 1)[-1] if "/" in text else text


def points(rows: list[dict], column: str) -> list[tuple[float, float, dict]]:
    return [(float(r[column]), float(r["avg@k"]), r) for r in rows
            if r.get(column) is not None and r.get("avg@k") is not None and r[column] > 0]


def pareto_front(points: list[tuple[float, float, dict]]) -> list[tuple[float, float, dict]]:
    """The points no other point beats on both: less (or equal) compute and more accuracy."""
    front, best = [], -math.inf
    for x, y, row in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y, row))
            best = y
    return front




def title(runs: dict) -> str:
    reward = f" · reward {', '.join(sorted(runs['reward']))}" if runs["reward"] else ""
    return (f"{', '.join(sorted(runs['data']))} ({', '.join(sorted(runs['size']))}) · "
            f"policy {', '.join(sorted(runs['policy']))}{reward}")
