import csv

from nabla_dist.cli import main
from nabla_dist.experiment.sweep import load_sweep


def test_demo_sweep_is_the_four_methods_on_held_out_toy_problems_with_the_shipped_pair():
    sweep = load_sweep("demo", [])
    names = [p.name for p in sweep.points]
    assert names == ["greedy", "self_consistency__n-8", "best_of_n__n-8", "nabla__max_rollouts-8"]
    for point in sweep.points:
        cfg = point.cfg
        assert (cfg.policy.path, cfg.reward.path) == ("toy:policy", "toy:reward")
        assert (cfg.data.name, cfg.data.split, cfg.data.size) == ("toy", "test", 300)
        assert cfg.runtime.kind == "ray"


def test_demo_runs_end_to_end_and_prints_one_row_per_method(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "data.size=3", "runtime.kind=local", "wandb.mode=disabled", f"sweep.output_dir={out}"])
    assert code == 0
    printed = capsys.readouterr().out
    with open(out / "report" / "summary.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["source"] == "run"]
    assert sorted(r["run"] for r in rows) == sorted(
        ["greedy", "self_consistency__n-8", "best_of_n__n-8", "nabla__max_rollouts-8"]
    )
    for row in rows:
        assert row["run"] in printed
        assert int(row["problems"]) == 3
    assert (out / "report" / "accuracy_vs_model_calls.png").exists()
    assert "On the Pareto front" in printed and "∇-Reasoner − Best-of-N@8:" in printed


def test_paired_difference_interval_covers_a_known_gap_and_holds_zero_without_one():
    from nabla_dist.experiment.metrics import paired_difference

    a = {str(i): float(i % 2) for i in range(400)}
    same = dict(a)
    diff, low, high = paired_difference(a, same)
    assert diff == low == high == 0.0
    better = {k: 1.0 for k in a}
    diff, low, high = paired_difference(better, a)
    assert diff == 0.5 and low <= 0.5 <= high and low > 0
