"""`nabla-dist report` on hand-made run and sweep directories (the numbers, the fits, the plots) and
on a tiny real sweep (every table and section, logged to the sweep's W&B group)."""

from __future__ import annotations

import csv
import json
import math

import pytest

from nabla_dist.cli import main
from nabla_dist.experiment.config import load_config, to_yaml
from nabla_dist.experiment.collect import count_params, pareto_front
from nabla_dist.experiment.plots import DPI, FIGSIZE
from nabla_dist.experiment.summary import summarize_results

PARAMS = 1000
PLOTS = ("accuracy_vs_model_calls", "accuracy_vs_model_calls_honest", "accuracy_vs_flops", "accuracy_vs_wall_time",
         "rejection_rate", "difficulty_vs_model_calls", "difficulty_vs_model_calls_honest", "difficulty_vs_flops",
         "difficulty_vs_wall_time")
SECTIONS = ("## Fits with uncertainty", "### Predicted accuracy at report budgets", "## Methods at equal compute",
            "## Extrapolation check", "## Difficulty bins and the compute-optimal choice")


def accuracy(avg: float, problems: int) -> dict:
    out = {"n_problems": problems, "k": 1}
    for name in ("avg@1", "pass@1", "maj@1"):
        out.update({name: avg, f"{name}_ci_low": max(avg - 0.25, 0), f"{name}_ci_high": min(avg + 0.25, 1)})
    return out


def nabla_summary(avg: float, calls: float, forward: float, backward: float, run_wall_s: float, results: int = 10):
    return {"nabla": {
        "results": results, "errors": 0, "problems": results, "accuracy": accuracy(avg, results),
        "model_calls_mean": calls, "model_calls_honest_mean": calls + 2, "model_calls_total": calls * results,
        "model_calls_honest_total": (calls + 2) * results, "rollouts_mean": 2.0,
        "forward_tokens_mean": forward, "backward_tokens_mean": backward, "forward_tokens_total": forward * results,
        "backward_tokens_total": backward * results, "response_tokens_mean": 8.0, "response_tokens_total": 8 * results,
        "wall_s_mean": 1.5, "wall_s_total": 1.5 * results, "run_wall_s": run_wall_s, "problems_per_s": 0.5,
        "response_tokens_per_s": 4.0, "rejection_rate": 0.25, "cache_skip_rate": 0.75, "selection_skip_rate": 0.5,
    }}


def write_run(path, overrides: list[str], summary: dict, records: list[dict]) -> None:
    path.mkdir(parents=True)
    cfg = load_config("tiny", ["wandb.mode=disabled", f"output_dir={path}", *overrides])
    (path / "config.yaml").write_text(to_yaml(cfg))
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def nabla_records(solved: int, method="nabla") -> list[dict]:
    """10 problems, the first `solved` right: 2 with 5 optimized positions and 3 rollouts (3 reuses
    each), 8 with nothing optimized."""
    counts = [{"positions_optimized": 5, "rollouts": 3}] * 2 + [{"positions_optimized": 0, "rollouts": 1}] * 8
    return [{"problem_id": str(i), "repeat": 0, "method": method, "gold": "1", "correct": i < solved, "error": None,
             "counts": c} for i, c in enumerate(counts)]


def candidate(answer: str, tokens: int, forward_tokens: int) -> dict:
    return {"response": f"\\boxed{{{answer}}}", "answer": answer, "tokens": tokens, "forward_tokens": forward_tokens,
            "stopped": True}


def sc_records() -> list[dict]:
    """SC at N=2 on 2 problems. At n=1: problem a right (1), b wrong (5); calls 4 and 3; forward tokens 10 and 8."""
    rows = [("a", "1", [candidate("1", 4, 10), candidate("3", 6, 12)]),
            ("b", "2", [candidate("5", 3, 8), candidate("2", 5, 9)])]
    return [{"problem_id": pid, "repeat": 0, "method": "self_consistency", "seed": 0, "gold": gold, "pred": None,
             "correct": None, "response_tokens": 0, "counts": {}, "wall_s": 1.0, "session": 100.0,
             "finished_at": 104.0, "error": None, "candidates": cands} for pid, gold, cands in rows]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The report (--params) of a sweep directory with three ∇-Reasoner points and a greedy one (and a
    point never run), and of an SC run: (report dir, SC run dir)."""
    tmp_path = tmp_path_factory.mktemp("report")
    sweep = tmp_path / "sweep"
    points = [  # name, max_rollouts, accuracy, model calls, forward, backward tokens, run wall s
        ("nabla__max_rollouts-1", 1, 0.2, 10, 30, 10, 20.0),
        ("nabla__max_rollouts-2", 2, 0.5, 100, 300, 100, 40.0),
        ("nabla__max_rollouts-4", 4, 0.6, 1000, 3000, 1000, 80.0),
    ]
    index = []
    for name, rollouts, avg, calls, forward, backward, wall in points:
        write_run(sweep / name, ["method.name=nabla", f"method.max_rollouts={rollouts}"],
                  nabla_summary(avg, calls, forward, backward, wall), nabla_records(round(avg * 10)))
        index.append({"name": name, "dir": name, "values": {"method.name": "nabla", "method.max_rollouts": rollouts},
                      "status": "finished"})
    greedy = nabla_summary(0.3, 10, 40, 0, 10.0)["nabla"] | {"rejection_rate": None, "cache_skip_rate": None,
                                                             "selection_skip_rate": None}
    write_run(sweep / "greedy", ["method.name=greedy"], {"greedy": greedy}, nabla_records(3, "greedy"))
    index.append({"name": "greedy", "dir": "greedy", "values": {"method.name": "greedy"}, "status": "finished"})
    index.append({"name": "never", "dir": "never", "values": {"method.name": "best_of_n"}, "status": "pending"})
    (sweep / "sweep.json").write_text(json.dumps({"name": "hand", "points": index}))
    sc = tmp_path / "sc"
    records = sc_records()
    from nabla_dist.experiment.rescore import rescore_records

    write_run(sc, ["method.name=self_consistency", "method.n=2"],
              summarize_results(rescore_records(records, 2), 1), rescore_records(records, 2))
    out = tmp_path / "report"
    assert main(["report", str(sweep), str(sc), "--out", str(out), "--params", str(PARAMS)]) == 0
    return out, sc


def read_csv(path) -> dict[str, dict]:
    with open(path) as f:
        return {row["run"]: row for row in csv.DictReader(f)}


def test_report_copies_summaries_and_derives_flops_wall_time_reuse_and_smaller_n(report):
    out, sc = report
    rows = read_csv(out / "summary.csv")
    assert set(rows) == {"sweep/nabla__max_rollouts-1", "sweep/nabla__max_rollouts-2", "sweep/nabla__max_rollouts-4",
                         "sweep/greedy", "sc", "sc@1"}
    one = rows["sweep/nabla__max_rollouts-1"]
    assert float(one["avg@k"]) == 0.2 and float(one["avg@k_ci_high"]) == 0.45 and one["k"] == "1"
    assert float(one["model_calls_mean"]) == 10 and float(one["model_calls_honest_mean"]) == 12
    assert float(one["flops_mean"]) == 2 * PARAMS * (30 + 10)  # 2·P·forward + 2·P·backward
    assert float(one["flops_total"]) == 2 * PARAMS * (300 + 100)
    assert float(one["wall_s_per_result"]) == 20.0 / 10
    assert float(one["rejection_rate"]) == 0.25 and float(one["cache_skip_rate"]) == 0.75
    assert float(one["rollouts_saved_by_reuse_mean"]) == (2 * (5 - 2) + 8 * 0) / 10
    assert one["method.max_rollouts"] == "1" and one["budget"] == "1" and one["source"] == "run"
    assert rows["sweep/greedy"]["rejection_rate"] == "" and rows["sweep/greedy"]["rollouts_saved_by_reuse_mean"] == ""

    whole, first = rows["sc"], rows["sc@1"]  # SC@2 as run; SC@1 re-scored from its first candidates
    sc_summary = json.loads((sc / "summary.json").read_text())["self_consistency"]
    assert float(whole["model_calls_mean"]) == sc_summary["model_calls_mean"] == (4 + 6 + 3 + 5) / 2
    assert first["source"] == "rescored from N=2" and first["budget"] == "1"
    assert float(first["avg@k"]) == 0.5  # a: 1 = gold; b: 5 ≠ 2
    assert float(first["model_calls_mean"]) == (4 + 3) / 2 and float(first["model_calls_honest_mean"]) == (4 + 3) / 2
    assert float(first["forward_tokens_mean"]) == (10 + 8) / 2 and float(first["flops_mean"]) == 2 * PARAMS * 9
    assert first["run_wall_s"] == "" and first["wall_s_per_result"] == ""  # the N-run's time is not n's

    md = (out / "report.md").read_text()
    assert "| sweep/nabla__max_rollouts-2 | nabla | 2 |" in md and "0.5 [0.25, 0.75]" in md
    assert "rescored from N=2" in md and "never: no summary.json (status pending)" in md
    assert "2·P·forward tokens + 2·P·backward tokens" in md


def read_fits(out) -> dict[tuple[str, str, str], dict]:
    with open(out / "fits.csv") as f:
        return {(r["measure"], r["curve"], r["form"]): r for r in csv.DictReader(f)}


def test_fit_coefficients_are_the_least_squares_line_on_log10_compute_with_intervals(report):
    out, _ = report
    fitted = read_fits(out)
    # calls 10, 100, 1000 → v = log10(c/10) = 0, 1, 2; accuracy 0.2, 0.5, 0.6: b = Σ(v-v̄)(y-ȳ) / Σ(v-v̄)² = 0.4 / 2,
    # a = ȳ − b·v̄ = 1.3/3 − 0.2: the accuracy at the smallest compute, inside [0, 1]
    line = fitted["model calls", "∇-Reasoner", "log-linear"]
    assert float(line["b"]) == pytest.approx(0.2) and float(line["a"]) == pytest.approx(1.3 / 3 - 0.2)
    assert float(line["c0"]) == 10 and line["chosen"] == "True" and line["problems"] == "10"
    residuals = [0.2 - (1.3 / 3 - 0.2), 0.5 - (1.3 / 3), 0.6 - (1.3 / 3 + 0.2)]
    total = sum((y - 1.3 / 3) ** 2 for y in (0.2, 0.5, 0.6))
    assert float(line["r2"]) == pytest.approx(1 - sum(r * r for r in residuals) / total)
    # held out (each budget but the smallest): (0, .2), (2, .6) predict .4 at 1 (−.1); (0, .2), (1, .5) predict
    # .8 at 2 (+.2)
    assert float(line["heldout_rmse"]) == pytest.approx(math.sqrt((0.01 + 0.04) / 2))
    for coefficient in ("a", "b"):
        assert float(line[f"{coefficient}_ci_low"]) <= float(line[coefficient]) <= float(line[f"{coefficient}_ci_high"])
        assert float(line[f"{coefficient}_ci_low"]) < float(line[f"{coefficient}_ci_high"])
    power = fitted["model calls", "∇-Reasoner", "power"]  # three budgets fit it exactly but cannot judge it
    assert power["chosen"] == "False" and power["heldout_rmse"] == "" and power["b"] == ""
    assert 0 <= float(power["a"]) <= 1 and 0 <= float(power["ceiling"]) <= 1 and float(power["alpha"]) > 0
    # wall time per problem 2, 4, 8 s: the same accuracies, two points per doubling
    wall = fitted["wall time", "∇-Reasoner", "log-linear"]
    assert float(wall["b"]) == pytest.approx(0.4 / 2 / math.log10(2) ** 2 * math.log10(2))
    assert not any(curve == "greedy" for _, curve, _ in fitted)  # one point: no fit
    sc = fitted["model calls", "SC", "log-linear"]  # SC@1 (re-scored) and SC@2: equal accuracy, a flat line
    assert float(sc["b"]) == pytest.approx(0) and float(sc["a"]) == pytest.approx(0.5) and sc["r2"] == ""
    md = (out / "report.md").read_text()
    assert f"| model calls | ∇-Reasoner | log-linear ✓ | 10 | a = {1.3 / 3 - 0.2:.4f} [" in md
    for section in SECTIONS:
        assert section in md


def test_curves_are_compared_at_equal_compute_on_their_fits_with_paired_intervals(report):
    out, _ = report
    with open(out / "comparisons.csv") as f:
        rows = {(r["measure"], r["curve_a"], r["curve_b"], float(r["compute"])): r for r in csv.DictReader(f)}
    # ∇-Reasoner's line at 10 calls (a = 1.3/3 − 0.2) against greedy (one budget: 10 calls, 3 of the 10 problems)
    versus = rows["model calls", "∇-Reasoner", "greedy", 10.0]
    assert float(versus["difference"]) == pytest.approx((1.3 / 3 - 0.2) - 0.3)
    assert float(versus["difference_ci_low"]) <= float(versus["difference"]) <= float(versus["difference_ci_high"])
    md = (out / "report.md").read_text()
    assert "∇-Reasoner − greedy: the difference is not distinguishable from zero at 10 (largest: " in md


def test_every_plot_is_a_png_of_the_figure_size(report):
    import matplotlib.image

    out, _ = report
    for stem in PLOTS:
        path = out / f"{stem}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(path)
        assert image.shape[:2] == (FIGSIZE[1] * DPI, FIGSIZE[0] * DPI)
        assert image[..., :3].std() > 0.05, f"{stem}.png is blank"
        assert f"({stem}.png)" in (out / "report.md").read_text()


def test_pareto_front_keeps_points_no_other_beats():
    points = [(3.5, 0.5, "a"), (9, 0.5, "b"), (10, 0.3, "c"), (100, 0.5, "d"), (1000, 0.6, "e"), (1000, 0.4, "f")]
    assert [p[2] for p in pareto_front(points)] == ["a", "e"]


def test_flop_parameters_are_the_matmul_weights_of_the_model_config(tiny_paths):
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(tiny_paths["policy"])
    head_dim = c.hidden_size // c.num_attention_heads
    attention = 2 * c.hidden_size * head_dim * (c.num_attention_heads + c.num_key_value_heads)  # q, o; k, v
    layer = attention + 3 * c.hidden_size * c.intermediate_size + 2 * c.hidden_size  # gate, up, down; 2 norms
    expected = c.num_hidden_layers * layer + c.hidden_size + c.vocab_size * c.hidden_size  # final norm, LM head
    assert count_params("tiny:policy") == expected  # the input embedding table is a lookup: not counted


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory, tiny_paths):
    """configs/sweep/budget.yaml on 3 built-in problems, 4 new tokens: its own report at the end."""
    out = tmp_path_factory.mktemp("budget") / "sweep"
    assert main(["sweep", "budget", "data.limit=3", "method.max_new_tokens=4", "wandb.mode=disabled",
                 f"sweep.output_dir={out}"]) == 0
    return out


def test_a_tiny_real_sweep_reports_fits_with_intervals_comparisons_extrapolation_and_difficulty(tiny_sweep):
    report = tiny_sweep / "report"
    fitted = read_fits(report)
    forms = {form for _, _, form in fitted}
    assert forms == {"log-linear", "power"}
    with open(report / "fits.csv") as f:
        columns = csv.DictReader(f).fieldnames
    for coefficient in ("a", "b", "ceiling", "alpha"):
        assert {coefficient, f"{coefficient}_ci_low", f"{coefficient}_ci_high"} <= set(columns)
    assert {"form", "chosen", "heldout_rmse", "c0", "problems"} <= set(columns)
    measures = {measure for measure, _, _ in fitted}
    assert {"model calls", "model calls (honest)", "FLOPs"} <= measures  # SC, BoN and ∇ each have ≥ 2 budgets
    for (measure, curve, form), row in fitted.items():
        assert row["problems"] == "3" and 0 <= float(row["a"]) <= 1
        assert float(row["a_ci_low"]) <= float(row["a"]) + 1e-9 and float(row["a"]) <= float(row["a_ci_high"]) + 1e-9
    assert sum(row["chosen"] == "True" for row in fitted.values()) == len({(m, c) for m, c, _ in fitted})
    for name in ("predictions", "comparisons", "extrapolation", "bins", "difficulty", "compute_optimal"):
        with open(report / f"{name}.csv") as f:
            assert list(csv.DictReader(f)), f"{name}.csv is empty"
    with open(report / "bins.csv") as f:
        bins = list(csv.DictReader(f))
    assert len(bins) == 3 and all(b["bin"] for b in bins)  # every problem has a base score from SC@16's candidates
    md = (report / "report.md").read_text()
    for section in SECTIONS:
        assert section in md
    assert "fraction of correct candidates in self_consistency__n-16 (16 samples per result)" in md
    assert "**Optimism.**" in md and "--split" in md
    assert (report / "difficulty_vs_flops.png").stat().st_size > 0


def test_the_report_goes_to_the_sweeps_wandb_group_with_its_tables_and_plots(tiny_sweep, tmp_path, monkeypatch):
    from tests.experiment.test_tracking import logged, wandb_records

    for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.delenv("WANDB_DIR", raising=False)
    out = tmp_path / "report"
    assert main(["report", str(tiny_sweep), "--out", str(out), "--wandb", "offline", "--bootstrap", "50",
                 "--split"]) == 0
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    keys = logged(run_dir)["summary"]
    for name in ("summary", "fits", "predictions", "comparisons", "extrapolation", "bins", "difficulty",
                 "compute_optimal", "accuracy_vs_flops", "difficulty_vs_flops", "rejection_rate"):
        assert any(key.startswith(f"report/{name}/_type") for key in keys), f"report/{name} not logged"
    (log_file,) = run_dir.glob("*.wandb")
    groups = {r.run.run_group for r in wandb_records(log_file) if r.WhichOneof("record_type") == "run"}
    assert groups == {"budget"}  # the sweep's name, the group of every point
