"""Faults on a real local Ray (loopback, CPU, tiny models): a policy worker killed, a reward
worker killed, a worker that stops answering, the driver killed.

Worker processes are killed or stopped with real signals on their pids. Each disturbed run
must write every result once, equal to the same problems on the in-process runtime.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

ray = pytest.importorskip("ray")

from nabla_dist.cli import main  # noqa: E402
from nabla_dist.experiment.build import build_runtime  # noqa: E402
from nabla_dist.experiment.config import load_config  # noqa: E402
from nabla_dist.experiment.run import Experiment  # noqa: E402
from nabla_dist.runtime import reaper  # noqa: E402
from nabla_dist.runtime.cluster import start_ray  # noqa: E402
from tests.conftest import read_results as results  # noqa: E402

pytestmark = pytest.mark.timeout(600)

# ∇-Reasoner on 2 problems: a few dozen policy and reward requests, so a fault lands mid-run
METHOD = ["data.limit=2", "method.max_new_tokens=8", "method.max_iters=3", "method.grad_norm_threshold=null",
          "wandb.mode=disabled"]
RAY = ["runtime.kind=ray", "runtime.policy_replicas=1", "runtime.reward_replicas=1", "runtime.cpus_per_actor=0.5",
       "runtime.max_restarts=3"]
POLICY_REQUESTS, REWARD_REQUESTS = ("Rollout", "PolicyGrad"), ("RewardGrad", "Reward")


def worker_pid(replica) -> int:
    return ray.get(replica.actors[0].__ray_call__.remote(lambda worker: os.getpid()))


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    session = start_ray(None, num_cpus=2)
    runtime = build_runtime(load_config(None, [f"output_dir={tmp_path_factory.mktemp('boot')}", *METHOD, *RAY]))
    yield runtime
    runtime.shutdown()
    if session.started_here and ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same problems on the in-process runtime, nothing disturbed."""
    out = tmp_path_factory.mktemp("local")
    Experiment(load_config(None, [f"output_dir={out}", *METHOD])).run()
    return results(out)


def disturbed_run(runtime, out, replica, kinds, act, after=4, **options):
    """Run the experiment on `runtime`, doing `act(pid)` to `replica`'s worker once `after`
    requests of `kinds` have been served in this run."""
    runtime.options = dataclasses.replace(runtime.options, **options)
    pid = worker_pid(replica)
    served = lambda: sum(runtime.requests_served[k] for k in kinds)  # noqa: E731
    start, acted = served(), threading.Event()

    def watch():
        deadline = time.monotonic() + 300
        while served() < start + after and time.monotonic() < deadline:
            time.sleep(0.005)
        act(pid)
        acted.set()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        Experiment(load_config(None, [f"output_dir={out}", *METHOD, *RAY]), runtime=runtime).run()
    finally:
        thread.join()
        with_pid_gone(pid)
    assert acted.is_set()
    return pid


def with_pid_gone(pid: int) -> None:
    """A stopped worker is killed by Ray after its replica is dropped; make sure of it."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.parametrize("model", ["policy", "reward"])
def test_a_killed_worker_is_rebuilt_its_requests_requeued_and_no_result_lost_or_doubled(
        runtime, reference, tmp_path, caplog, model):
    replica = (runtime.policy if model == "policy" else runtime.reward)[0]
    kinds = POLICY_REQUESTS if model == "policy" else REWARD_REQUESTS
    restarts = runtime.restarts
    with caplog.at_level(logging.WARNING, logger="nabla_dist.runtime.ray_runtime"):
        pid = disturbed_run(runtime, tmp_path, replica, kinds, lambda pid: os.kill(pid, signal.SIGKILL))
    assert runtime.restarts == restarts + 1
    assert re.search(rf"{model}-0 lost a rank \(\w+\); rebuilding it .* [1-9]\d* requests requeued", caplog.text)
    assert worker_pid(replica) != pid  # a new process serves now
    assert results(tmp_path) == reference


def test_a_worker_that_stops_answering_is_caught_by_the_deadline_and_replaced(
        runtime, reference, tmp_path, caplog):
    replica, restarts = runtime.policy[0], runtime.restarts
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="nabla_dist.runtime.ray_runtime"):
        pid = disturbed_run(runtime, tmp_path, replica, POLICY_REQUESTS, lambda pid: os.kill(pid, signal.SIGSTOP),
                            reply_timeout_s=5.0)
    runtime.options = dataclasses.replace(runtime.options, reply_timeout_s=1800.0)
    assert runtime.restarts >= restarts + 1  # (on a very busy machine a healthy replica may miss 5 s too)
    assert "policy-0 did not answer its batch of" in caplog.text
    assert re.search(r"policy-0 lost a rank \(ReplicaTimeout\); rebuilding it .* [1-9]\d* requests requeued",
                     caplog.text)
    waited = re.search(r"within runtime\.reply_timeout_s=5 s \(waited (\d+\.\d) s\); treating it as dead",
                       caplog.text)
    assert waited and float(waited.group(1)) >= 5
    assert worker_pid(replica) != pid
    assert results(tmp_path) == reference
    assert time.monotonic() - started < 240


def test_a_killed_driver_leaves_no_ray_process_and_the_run_resumes(tmp_path):
    out = tmp_path / "run"
    overrides = ["method.name=greedy", "data.limit=20", "method.max_new_tokens=64", "runtime.max_in_flight=1",
                 "wandb.mode=disabled", f"output_dir={out}"]
    on_ray = ["runtime.kind=ray", "runtime.num_cpus=2", "runtime.reward_replicas=0", "runtime.cpus_per_actor=0.5"]
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen([sys.executable, "-m", "nabla_dist", "run", *overrides, *on_ray],
                              stdout=log, stderr=subprocess.STDOUT)
    results_file = out / "results.jsonl"
    deadline = time.monotonic() + 240
    while not (results_file.exists() and results_file.read_bytes().count(b"\n") >= 1):
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()
        assert time.monotonic() < deadline, "no result within 240 s"
        time.sleep(0.05)
    ours = [pid for pid, mark in reaper.marked_processes().items() if mark.startswith(f"{driver.pid}:")]
    assert len(ours) >= 3  # GCS, raylet, the policy worker (and Ray's agents)
    driver.kill()
    driver.wait()
    deadline = time.monotonic() + 30
    while any(map(alive, ours)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in ours if alive(pid)], "Ray processes outlived their killed driver"

    done = results_file.read_bytes().count(b"\n")
    assert 1 <= done < 20
    assert main(["run", *overrides]) == 0  # resumed on the in-process runtime (runtime.* may change)
    assert len(results(out)) == 20


def test_processes_left_by_a_dead_driver_are_reaped_and_a_live_drivers_are_not(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan_mark = f"{dead.pid}:1:orphan{os.getpid()}"
    live_mark = reaper.new_mark()  # this process, alive
    sleepers = {mark: subprocess.Popen(["sleep", "300"], env={**os.environ, reaper.ENV: mark})
                for mark in (orphan_mark, live_mark)}
    try:
        killed = reaper.kill_marked(orphans_only=True)
        assert sleepers[orphan_mark].pid in killed
        assert sleepers[live_mark].pid not in killed
        assert sleepers[orphan_mark].wait(timeout=10) == -signal.SIGKILL
        assert sleepers[live_mark].poll() is None
    finally:
        for process in sleepers.values():
            process.kill()
            process.wait()
