"""launch/submit.py: where results go, and a Ray job submitted to a head started here on
127.0.0.1 that runs to completion with its output directory complete where asked and the
W&B key nowhere on disk."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from launch import submit  # noqa: E402
from tests.runtime.simulated_cluster import free_port, simulated_cluster  # noqa: E402

pytestmark = pytest.mark.timeout(900)
# stands in for the W&B key in the head's environment; made at run time, so that the copy of
# this file the job ships does not hold it
FAKE_KEY = f"fake-wandb-key-{uuid.uuid4().hex}"
SMALL = ["data.limit=2", "method.name=greedy", "method.max_new_tokens=8", "wandb.mode=disabled",
         "runtime.reward_replicas=0", "runtime.cpus_per_actor=0.5"]


def test_a_relative_output_dir_is_refused_or_put_under_the_output_root(monkeypatch):
    monkeypatch.delenv(submit.OUTPUT_ROOT_ENV, raising=False)
    configured, _ = submit.read_config("run", "paper/math500", [])
    assert configured == "runs/paper/math500"
    with pytest.raises(submit.SubmitError, match="output_dir='runs/paper/math500' is relative.*--output-dir"):
        submit.resolve_output_dir("run", configured)
    assert submit.resolve_output_dir("run", configured, "/shared/x") == "/shared/x"
    assert submit.resolve_output_dir("run", configured, output_root="/nfs/me") == "/nfs/me/runs/paper/math500"
    monkeypatch.setenv(submit.OUTPUT_ROOT_ENV, "/lustre/team")
    assert submit.resolve_output_dir("run", configured) == "/lustre/team/runs/paper/math500"
    configured, _ = submit.read_config("sweep", "model_size", ["sweep.output_dir=/shared/sweeps/ms"])
    assert submit.resolve_output_dir("sweep", configured) == "/shared/sweeps/ms"
    with pytest.raises(submit.SubmitError, match="run nope: unknown experiment"):
        submit.read_config("run", "nope", [])


def test_the_job_command_sets_the_output_dir_and_joins_the_cluster_and_carries_no_secret(monkeypatch):
    monkeypatch.setenv(submit.SECRET_ENV, FAKE_KEY)
    command = submit.entrypoint("sweep", "model_size", ["sweep.parallel=2"], "/shared/s")
    assert command.endswith("sweep model_size sweep.parallel=2 sweep.output_dir=/shared/s runtime.kind=ray "
                            "runtime.address=auto")
    assert FAKE_KEY not in command and FAKE_KEY not in submit.probe_entrypoint("/shared/s", (submit.SECRET_ENV,))
    with pytest.raises(SystemExit):
        submit.parse(["--address", "http://127.0.0.1:1", "run", "default", "runtime.kind=local"])


@pytest.fixture(scope="module")
def head():
    """A one-node Ray cluster with its dashboard (the job server) on 127.0.0.1; the W&B key is
    in its environment, as a cluster file puts it there."""
    if ray.is_initialized():
        ray.shutdown()
    port = free_port()
    with simulated_cluster([dict(num_cpus=2)], env={submit.SECRET_ENV: FAKE_KEY}, include_dashboard=True,
                           dashboard_host="127.0.0.1", dashboard_port=port) as cluster:
        yield cluster, f"http://127.0.0.1:{port}"


def files_holding(text: str, *roots: Path) -> list[str]:
    found = []
    for root in roots:
        done = subprocess.run(["grep", "-rlF", text, str(root)], capture_output=True, text=True)
        found += done.stdout.split()
    return found


def test_a_submitted_run_completes_into_the_output_dir_and_the_key_stays_off_disk(head, tmp_path):
    from ray.job_submission import JobSubmissionClient

    cluster, address = head
    out = tmp_path / "shared" / "run"
    assert submit.main(["--address", address, "--output-dir", str(out), "run", "default", *SMALL]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["error"] is None and r["method"] == "greedy" for r in records)
    assert json.loads((out / "summary.json").read_text())["greedy"]["results"] == 2
    assert "runtime:\n  kind: ray" in (out / "config.yaml").read_text()
    client = JobSubmissionClient(address)
    jobs = client.list_jobs()
    assert all(FAKE_KEY not in json.dumps(job.runtime_env or {}) + job.entrypoint for job in jobs)
    session = Path(cluster.head_node.get_session_dir_path())
    assert files_holding(FAKE_KEY, session, out) == []
    # the probe sees the key in the head's environment without reading it out
    submit.probe(client, str(tmp_path / "shared" / "probe"), online=True)


def test_an_online_run_is_refused_when_the_head_lacks_the_key(head, tmp_path, monkeypatch):
    from ray.job_submission import JobSubmissionClient

    monkeypatch.setattr(submit, "SECRET_ENV", "NABLA_DIST_TEST_NO_SUCH_KEY")
    with pytest.raises(submit.SubmitError, match="wandb.mode=online but the head node has no "
                                                 "NABLA_DIST_TEST_NO_SUCH_KEY"):
        submit.probe(JobSubmissionClient(head[1]), str(tmp_path / "out"), online=True)


@pytest.mark.slow  # two points in one job: ~1 min on 2 cores
def test_a_submitted_sweep_completes_with_every_point_and_its_report(head, tmp_path):
    sweep = tmp_path / "two.yaml"  # the head is this machine: an absolute path is readable there
    sweep.write_text("base: default\noverrides: {data.limit: 2, method.max_new_tokens: 8, wandb.mode: disabled, "
                     "runtime.reward_replicas: 0, runtime.cpus_per_actor: 0.5, method.n: 2}\n"
                     "sweep: {name: two}\ngrids:\n  - method.name: [greedy, self_consistency]\n")
    out = tmp_path / "shared" / "sweep"
    assert submit.main(["--address", head[1], "--output-dir", str(out), "sweep", str(sweep)]) == 0
    index = json.loads((out / "sweep.json").read_text())
    assert {p["name"]: p["status"] for p in index["points"]} == {"greedy": "finished", "self_consistency": "finished"}
    assert (out / "report" / "report.md").exists()
