"""The Ray runtime on a real local Ray (loopback only), CPU, tiny models.

One Ray session and one runtime — a tensor-parallel policy replica (2 ranks, autotp) and a
separate reward replica — are shared by the module; each test runs whole experiments
through it and compares results.jsonl with the in-process runtime.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time

import pytest

ray = pytest.importorskip("ray")

from nabla_dist.algorithm.requests import Rollout, SamplingParams  # noqa: E402
from nabla_dist.experiment.build import build_runtime  # noqa: E402
from nabla_dist.experiment.config import ConfigError, load_config  # noqa: E402
from nabla_dist.experiment.run import Experiment  # noqa: E402
from nabla_dist.runtime.cluster import start_ray  # noqa: E402
from nabla_dist.runtime.ray_runtime import NoReplicaLeft  # noqa: E402

pytestmark = pytest.mark.timeout(1200)

METHOD = ["method.max_new_tokens=16", "method.max_iters=5", "method.grad_norm_threshold=null", "wandb.mode=disabled"]
RAY = dict(kind="ray", policy_replicas=1, tp_size=2, sharding="autotp", reward_replicas=1, reward_tp_size=1,
           cpus_per_actor=0.5, max_restarts=2)
TIMING = ("wall_s", "session", "finished_at")


def config(out, *overrides, **runtime):
    """A config from overrides, `runtime.<key>=<value>` for each keyword."""
    return load_config(None, [f"output_dir={out}", *METHOD, *overrides, *(f"runtime.{k}={v}" for k, v in runtime.items())])


def results(out) -> dict:
    """results.jsonl without timing fields, keyed by (problem, repeat); a duplicate fails."""
    records = {}
    for line in (out / "results.jsonl").read_text().splitlines():
        record = {k: v for k, v in json.loads(line).items() if k not in TIMING}
        key = (record["problem_id"], record["repeat"])
        assert key not in records, f"{key} written twice"
        records[key] = record
    return records


def total(counter) -> int:
    return sum(counter.values())


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The in-process reference runs share two cores with the Ray actors; OpenMP threads
    spin-waiting for a busy core make them many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ray_session():
    session = start_ray(None, num_cpus=2)
    yield session
    if session.started_here:
        ray.shutdown()


@pytest.fixture(scope="module")
def runtime(ray_session, tmp_path_factory):
    runtime = build_runtime(config(tmp_path_factory.mktemp("boot"), **RAY))
    yield runtime
    runtime.shutdown()


@pytest.fixture(scope="module")
def undisturbed(runtime, tmp_path_factory):
    """The 6-problem run on the Ray runtime, nothing killed."""
    out = tmp_path_factory.mktemp("ray")
    Experiment(config(out, "data.limit=6", **RAY), runtime=runtime).run()
    return results(out)


def test_ray_tp2_results_equal_local_results(undisturbed, tmp_path):
    Experiment(config(tmp_path, "data.limit=6")).run()
    local = results(tmp_path)
    assert len(local) == 6
    assert all(r["error"] is None and r["response"] for r in local.values())
    assert undisturbed == local


def test_requests_are_batched_across_problems_with_unbatched_results(runtime, tmp_path):
    runtime.options = dataclasses.replace(runtime.options, max_batch_size=8)
    calls, served = total(runtime.engine_calls), total(runtime.requests_served)
    Experiment(config(tmp_path / "ray", "data.limit=8", "runtime.max_in_flight=8", **RAY), runtime=runtime).run()
    calls, served = total(runtime.engine_calls) - calls, total(runtime.requests_served) - served
    unbatched = Experiment(config(tmp_path / "local", "data.limit=8", "runtime.max_batch_size=1"))
    unbatched.run()
    assert total(unbatched.runtime.engine_calls) == served  # one engine call per request there
    assert calls <= served / 2.5, f"{calls} engine calls for {served} requests"
    assert results(tmp_path / "ray") == results(tmp_path / "local")


def test_a_failing_request_fails_only_its_problem(runtime):
    def program(ids):
        result = yield Rollout(ids, 4, SamplingParams(temperature=0.0), seed=0)
        return result.tokens

    finished = {}
    programs = {"good-a": program([1, 5, 7]), "bad": program([1, 10**6]), "good-b": program([1, 9])}
    runtime.run(programs, lambda key, output, error: finished.setdefault(key, (output, error)))
    assert sorted(finished) == ["bad", "good-a", "good-b"]
    assert isinstance(finished["bad"][1], IndexError)
    assert finished["good-a"][1] is None and len(finished["good-a"][0]) == 4
    assert finished["good-b"][1] is None and len(finished["good-b"][0]) == 4


@pytest.mark.slow  # rebuilds a replica: ~40 s on 2 cores
def test_killed_policy_rank_rebuilds_its_replica_and_loses_no_problem(runtime, undisturbed, tmp_path, caplog):
    restarts, victim = runtime.restarts, runtime.policy[0].actors[1]
    start = total(runtime.requests_served)

    def kill_mid_run():
        deadline = time.monotonic() + 300
        while total(runtime.requests_served) < start + 60 and time.monotonic() < deadline:
            time.sleep(0.01)
        ray.kill(victim, no_restart=True)

    killer = threading.Thread(target=kill_mid_run, daemon=True)
    killer.start()
    with caplog.at_level("WARNING", logger="nabla_dist.runtime.ray_runtime"):
        Experiment(config(tmp_path, "data.limit=6", **RAY), runtime=runtime).run()
    killer.join()
    assert runtime.restarts == restarts + 1
    assert victim not in runtime.policy[0].actors
    assert "policy-0 lost a rank" in caplog.text
    assert results(tmp_path) == undisturbed  # each problem once, as if nothing happened


@pytest.mark.slow  # its own replicas: ~2 min on 2 cores
def test_zero3_tied_policy_and_reward_equal_local_results(ray_session, tmp_path):
    """ZeRO-3 partitions every weight, including the (tied) embedding table the engines index."""
    overrides = ("data.limit=3", "policy.path=tiny:policy_tied")
    Experiment(config(tmp_path / "local", *overrides)).run()
    cfg = config(tmp_path / "ray", *overrides, **{**RAY, "sharding": "zero3", "reward_tp_size": 2,
                                                  "cpus_per_actor": 0.1})
    runtime = build_runtime(cfg)
    try:
        Experiment(cfg, runtime=runtime).run()
    finally:
        runtime.shutdown()
    assert results(tmp_path / "ray") == results(tmp_path / "local")


@pytest.mark.parametrize("kind", ["classifier", "verifier"])
def test_every_reward_kind_scores_on_ray_as_it_does_locally(ray_session, tmp_path, kind):
    """Ray replicas build their reward engine the way the local runtime does (a verifier once
    got a randomly initialised classifier head on Ray, silently)."""
    reward = ["reward.kind=verifier", "reward.path=tiny:policy", "reward.verdict=is"] if kind == "verifier" else []
    overrides = ("data.limit=2", "method.name=best_of_n", "method.n=3", *reward)
    Experiment(config(tmp_path / "local", *overrides)).run()
    # 0.25: the module's runtime holds 1.5 of the cluster's 2 CPUs while this one runs
    cfg = config(tmp_path / "ray", *overrides, kind="ray", reward_replicas=1, cpus_per_actor=0.25)
    runtime = build_runtime(cfg)
    try:
        Experiment(cfg, runtime=runtime).run()
    finally:
        runtime.shutdown()
    local, remote = results(tmp_path / "local"), results(tmp_path / "ray")
    assert local.keys() == remote.keys()
    for key in local:
        rewards = [c.pop("reward") for c in local[key]["candidates"]]
        assert [c.pop("reward") for c in remote[key]["candidates"]] == pytest.approx(rewards, abs=1e-5)
        assert remote[key] == local[key]


@pytest.mark.parametrize(
    "runtime_fields, reward_tokenizer, message",
    [
        (dict(tp_size=3), None, "runtime.tp_size 3 does not divide"),
        (dict(gpus_per_actor=1.0), None, "GPUs"),
        (dict(), "unalignable", "cannot serve this policy"),
    ],
)
def test_bad_layouts_fail_before_any_actor_starts(ray_session, tmp_path, runtime_fields, reward_tokenizer, message):
    tokenizer = [f"reward.tokenizer={unalignable_tokenizer(tmp_path / reward_tokenizer)}"] if reward_tokenizer else []
    cfg = config(tmp_path, *tokenizer, **{**RAY, **runtime_fields})
    cpus = settled_cpus()  # an earlier test's replicas may still be releasing theirs
    with pytest.raises(ConfigError, match=message):
        build_runtime(cfg)
    assert ray.available_resources().get("CPU", 0) == cpus  # no actor was started


def settled_cpus(timeout_s: float = 30) -> float:
    """Available CPUs once they stop changing (ray.kill and placement group removal are async)."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        now = ray.available_resources().get("CPU", 0)
        if now == last:
            return now
        last = now
        time.sleep(1.0)
    return last


def unalignable_tokenizer(path):
    """A word-level tokenizer sharing almost no token strings with the tiny BPE."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from nabla_dist.engines.tiny import CHATML

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", *(f"word{i}" for i in range(50))])}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")),
                                        pad_token="<pad>", eos_token="<eos>", chat_template=CHATML)
    tokenizer.save_pretrained(path)
    return path


def test_unreachable_address_is_a_clear_error(tmp_path):
    script = (
        "from nabla_dist.experiment.build import build_runtime\n"
        "from nabla_dist.experiment.config import load_config\n"
        f"cfg = load_config(None, ['output_dir={tmp_path}', 'runtime.kind=ray', 'runtime.address=127.0.0.1:9'])\n"
        "build_runtime(cfg)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "ConfigError: runtime.address='127.0.0.1:9'" in done.stderr


@pytest.mark.slow
def test_replica_that_keeps_dying_is_retired_with_a_clear_error(ray_session, tmp_path):
    cfg = config(tmp_path, "data.limit=2", "method.name=greedy", kind="ray", policy_replicas=1, tp_size=1,
                 reward_replicas=0, cpus_per_actor=0.5, max_restarts=0)
    runtime = build_runtime(cfg)
    try:
        ray.kill(runtime.policy[0].actors[0], no_restart=True)
        with pytest.raises(NoReplicaLeft, match="every policy replica is retired"):
            Experiment(cfg, runtime=runtime).run()
    finally:
        runtime.shutdown()
