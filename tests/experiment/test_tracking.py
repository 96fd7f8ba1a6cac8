"""W&B in offline mode: what a run logs, where it lives, and that a resumed run keeps its id."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from nabla_dist.experiment.config import load_config
from nabla_dist.experiment.build import build_runtime
from nabla_dist.experiment.run import Experiment
from nabla_dist.experiment.tracking import RUN_ID_FILE, flatten

BASE = ["data.limit=2", "method.name=greedy", "method.max_new_tokens=8"]
FAKE_KEY = "local-0123456789abcdef0123456789abcdef01234567"


def wandb_records(path: Path):
    """The protobuf records of a .wandb file (a LevelDB-style log: 7-byte file header,
    32 KiB blocks, each chunk with a 7-byte header: crc, length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = payload if kind in (1, 2) else buf + payload
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record


def logged(run_dir: Path) -> dict:
    """Summary keys, history rows and artifact names of one offline run directory.

    W&B's service process may still be writing the file when the run returns (seen on a
    loaded machine): read again for up to 60 s until the summary record is there."""
    deadline = time.monotonic() + 60
    while True:
        out = _read_logged(run_dir)
        if out["summary"] or time.monotonic() > deadline:
            return out
        time.sleep(1)


def _read_logged(run_dir: Path) -> dict:
    (log_file,) = run_dir.glob("*.wandb")
    out = {"summary": set(), "history": [], "artifacts": []}
    for record in wandb_records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "summary":
            out["summary"] |= {"/".join(item.nested_key) or item.key for item in record.summary.update}
        elif kind == "history":
            out["history"].append({item.key or "/".join(item.nested_key): item.value_json
                                   for item in record.history.item})
        elif kind == "artifact":
            out["artifacts"].append(record.artifact.name)
    return out


@pytest.fixture(scope="module")
def runtime(tiny_paths):
    return build_runtime(load_config("tiny", BASE))


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)  # present, as on a real machine: must not leak
    monkeypatch.delenv("WANDB_DIR", raising=False)  # the tracker sets it; restored after the test
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))


def test_offline_run_logs_metrics_summary_table_and_results_and_resumes_the_same_run(
    tmp_path, runtime, wandb_env
):
    out = tmp_path / "run"
    summary = Experiment(load_config("tiny", BASE + [f"output_dir={out}", "wandb.mode=offline",
                                                        "wandb.tags=[test]", "wandb.group=g"]), runtime).run()
    run_id = (out / RUN_ID_FILE).read_text().strip()
    (first,) = (out / "wandb").glob(f"offline-run-*-{run_id}")
    first_log = logged(first)
    assert set(flatten(summary)) <= first_log["summary"]
    assert "greedy/accuracy/avg@1" in first_log["summary"]
    steps = [row["problems_done"] for row in first_log["history"] if "problem/model_calls" in row]
    assert steps == ["1", "2"]
    assert all("running/accuracy" in row and "throughput/problems_per_s" in row
               for row in first_log["history"] if "problem/model_calls" in row)
    assert any("responses" in key for key in first_log["summary"])  # the response table
    assert f"results-{run_id}" in first_log["artifacts"]

    # resumed with more problems: same W&B run id, the count goes on from where it stopped
    Experiment(load_config("tiny", BASE + [f"output_dir={out}", "wandb.mode=offline", "data.limit=3"]),
               runtime).run()
    assert (out / RUN_ID_FILE).read_text().strip() == run_id
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(run_id in r.name for r in runs)  # W&B adds -1 to a second run in the same second
    (second,) = [r for r in runs if r != first]
    assert [row["problems_done"] for row in logged(second)["history"] if "problem/model_calls" in row] == ["3"]

    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert FAKE_KEY.encode() not in path.read_bytes(), f"the API key leaked into {path}"


def test_disabled_writes_nothing_for_wandb(tmp_path, runtime):
    out = tmp_path / "run"
    Experiment(load_config("tiny", BASE + [f"output_dir={out}", "wandb.mode=disabled"]), runtime).run()
    assert not (out / "wandb").exists() and not (out / RUN_ID_FILE).exists()
    assert (out / "summary.json").exists()


def test_offline_is_the_default_mode():
    from nabla_dist.experiment.config import ExperimentConfig

    assert ExperimentConfig().wandb.mode == "offline"
