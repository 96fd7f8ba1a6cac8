"""Re-scoring an SC / BoN run at smaller N equals running at that N."""

from __future__ import annotations

import json

import pytest

from nabla_dist.cli import main
from nabla_dist.experiment.config import load_config
from nabla_dist.experiment.rescore import decide, default_ns, rescore_records, rescore_run
from nabla_dist.experiment.results import ResultsFile
from nabla_dist.experiment.build import build_runtime
from nabla_dist.experiment.run import Experiment

BIG_N, SMALL_N = 4, 2
BASE = ["wandb.mode=disabled", "data.limit=3", "method.max_new_tokens=10"]
TIMING = ("wall_s", "session", "finished_at")


@pytest.fixture(scope="module")
def runs(tiny_paths, tmp_path_factory):
    """{(method, n): (output_dir, records by problem)} for N=4 and n=2 runs, same seeds."""
    runtime = build_runtime(load_config("tiny", BASE + ["method.name=best_of_n"]))
    out = {}
    for method in ("self_consistency", "best_of_n"):
        for n in (BIG_N, SMALL_N):
            path = tmp_path_factory.mktemp(f"{method}{n}")
            Experiment(load_config("tiny", BASE + [f"method.name={method}", f"method.n={n}",
                                                     f"output_dir={path}"]), runtime).run()
            out[method, n] = path, sorted(ResultsFile(path / "results.jsonl").read(), key=lambda r: r["problem_id"])
    return out


def without_timing(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in TIMING}


@pytest.mark.parametrize("method", ["self_consistency", "best_of_n"])
def test_rescoring_at_smaller_n_equals_running_at_that_n(method, runs):
    _, big = runs[method, BIG_N]
    _, small = runs[method, SMALL_N]
    rescored = rescore_records(big, SMALL_N)
    assert len(rescored) == len(small) == 3
    for got, want in zip(rescored, small):
        got, want = without_timing(got), without_timing(want)
        # rewards of the same text move in the last float bits with the batch they were scored in
        for g, w in zip(got.pop("candidates"), want.pop("candidates")):
            g, w = dict(g), dict(w)
            assert g.pop("reward", 0.0) == pytest.approx(w.pop("reward", 0.0), abs=1e-5)
            assert g == w
        assert got == want


@pytest.mark.parametrize("method", ["self_consistency", "best_of_n"])
def test_rescoring_at_n_itself_reproduces_the_run(method, runs):
    _, big = runs[method, BIG_N]
    assert rescore_records(big, BIG_N) == big


def test_rescore_command_writes_a_summary_per_n(runs, capsys):
    path, big = runs["best_of_n", BIG_N]
    assert main(["rescore", str(path)]) == 0
    table = json.loads((path / "rescore.json").read_text())
    assert list(table) == ["best_of_n@1", "best_of_n@2", "best_of_n@4"]
    at = {n: table[f"best_of_n@{n}"] for n in (1, 2, 4)}
    assert at[4] == json.loads((path / "summary.json").read_text())["best_of_n"]
    # paper calls at n: the first n candidates' tokens and n reward scores
    assert at[1]["model_calls_total"] == sum(r["candidates"][0]["tokens"] + 1 for r in big)
    assert at[2]["model_calls_honest_total"] == sum(c["tokens"] + 1 for r in big for c in r["candidates"][:2])
    assert "best_of_n@2" in capsys.readouterr().out
    assert list(rescore_run(path, [3])) == ["best_of_n@3"]


def test_rescore_refuses_n_beyond_the_run_and_methods_without_candidates(runs, tmp_path):
    path, _ = runs["self_consistency", BIG_N]
    with pytest.raises(ValueError, match="N=4"):
        rescore_run(path, [8])
    (tmp_path / "config.yaml").write_text("method:\n  name: greedy\n  n: 8\ndata:\n  repeats: 1\n")
    with pytest.raises(ValueError, match="greedy"):
        rescore_run(tmp_path)


def candidate(answer, reward=0.0, tokens=5):
    return {"response": f"\\boxed{{{answer}}}", "answer": answer, "tokens": tokens, "forward_tokens": tokens + 10,
            "stopped": True, "reward": reward, "reward_tokens": 20}


def test_decide_votes_with_ties_to_the_first_answer_and_ranks_by_reward():
    votes = [candidate("1"), candidate("2"), candidate("2.0"), candidate("1"), candidate(None)]
    sc = decide("self_consistency", votes, gold="2")
    assert (sc["pred"], sc["chosen"], sc["correct"]) == ("1", 0, False)  # 2 == 2.0 ties with 1: first group
    bon = decide("best_of_n", [candidate("1", 0.1), candidate("2", 0.7), candidate("3", 0.7)], gold="2")
    assert (bon["pred"], bon["chosen"], bon["correct"]) == ("2", 1, True)  # first of equal maxima
    assert bon["model_calls"] == bon["model_calls_honest"] == 15 + 3  # a rollout of n tokens: n forwards
    assert bon["counts"]["forward_tokens"] == 3 * 15 + 3 * 20
    assert decide("self_consistency", [candidate(None)], gold="2")["correct"] is False


def test_default_ns_are_powers_of_two_and_n():
    assert default_ns(1) == [1]
    assert default_ns(8) == [1, 2, 4, 8]
    assert default_ns(6) == [1, 2, 4, 6]
