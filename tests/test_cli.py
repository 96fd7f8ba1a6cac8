"""The `nabla-dist run` command end to end on the tiny models, and its bad-input messages."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nabla_dist.cli import main

FAST = ["method.max_new_tokens=12", "method.max_iters=3", "wandb.mode=disabled"]


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_writes_one_line_per_problem_and_a_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "tiny", "data.limit=4", f"output_dir={out}", *FAST]) == 0
    lines = read_lines(out / "results.jsonl")
    assert len(lines) == 4
    required = {"problem_id", "repeat", "method", "response", "model_calls", "model_calls_honest", "wall_s", "error"}
    assert all(required <= set(line) for line in lines)
    assert all(line["error"] is None and line["model_calls"] > 0 for line in lines)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["nabla"]["results"] == 4
    assert (out / "config.yaml").exists()


def test_module_entry_point_runs(tmp_path):
    out = tmp_path / "m"
    proc = subprocess.run(
        [sys.executable, "-m", "nabla_dist", "run", "tiny", "data.limit=1", "method.name=greedy", f"output_dir={out}", *FAST],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(read_lines(out / "results.jsonl")) == 1


@pytest.mark.parametrize(
    "override,message",
    [
        ("method.nmae=3", "nmae"),
        ("method.name=beam", "method.name='beam'"),
        ("method.max_iters=0", "method.max_iters=0"),
        ("method.lr=-1", "method.lr=-1"),
        ("runtime.kind=slurm", "runtime.kind='slurm'"),
        ("method.max_iters=abc", "max_iters"),
        ("policy.path=/nonexistent/model", "/nonexistent/model"),
    ],
)
def test_bad_config_value_is_named_in_a_clear_error(tmp_path, capsys, override, message):
    code = main(["run", "tiny", f"output_dir={tmp_path}", *FAST, override])
    assert code == 2
    assert message in capsys.readouterr().err


def test_bad_problems_are_recorded_and_the_run_goes_on(tmp_path):
    data = tmp_path / "problems.jsonl"
    rows = [
        {"id": "ok-1", "question": "Compute 2 + 3.", "answer": "5"},
        {"id": "long", "question": "Compute " + " + ".join(["1"] * 400) + ".", "answer": "400"},
        {"id": "ok-2", "question": "Compute 4 * 5.", "answer": "20"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    assert main(["run", "tiny", "data.name=jsonl", f"data.path={data}", f"output_dir={out}", *FAST]) == 0
    lines = {line["problem_id"]: line for line in read_lines(out / "results.jsonl")}
    assert set(lines) == {"ok-1", "long", "ok-2"}
    assert "does not fit the policy context" in lines["long"]["error"]
    assert lines["ok-1"]["error"] is None and lines["ok-2"]["error"] is None


def test_tokenizer_without_chat_template_is_refused_with_the_fix(tiny_paths):
    from transformers import AutoTokenizer

    from nabla_dist.engines.prompt import PromptEncoder
    from tests.conftest import make_policy

    policy = make_policy(tiny_paths)
    tokenizer = AutoTokenizer.from_pretrained(tiny_paths["tokenizer"])
    tokenizer.chat_template = None
    prompts = PromptEncoder(tokenizer, policy.context, policy.stop_token_ids)
    with pytest.raises(ValueError, match="no chat template"):
        prompts.encode("Compute 1 + 1.")
    with pytest.raises(ValueError, match="empty problem"):
        policy.prompts.encode("   ")
