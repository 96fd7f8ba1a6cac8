"""Soak: a few hundred problems over local Ray while worker processes are killed at random.

Runs ∇-Reasoner on the tiny models twice on the same problems: once undisturbed on the
in-process runtime (the reference), once on an embedded loopback Ray cluster (2 policy and
2 reward replicas, one rank each) while a chaos thread, every few seconds, picks a random
serving worker process and SIGKILLs it (or, for `--stop-share` of the faults, SIGSTOPs it:
a hung worker, caught by `runtime.reply_timeout_s`). Then checks that every problem has
exactly one result (lost = 0, duplicated = 0) equal to the reference, field for field
except timings, and reports problems, faults, replicas rebuilt, requests retried,
deadlines missed and the driver's memory (RSS) growth. Not part of CI.

    python benchmarks/soak.py --problems 300 --out runs/soak        # ~15 min on 2 busy cores
    python benchmarks/soak.py --problems 20 --every 3 6             # a quick look

A fault every 3-8 s kept all four replicas rebuilding most of the time on 2 cores shared
with other jobs (6 results a minute); the default, every 8-15 s, leaves them serving.

Exit status 0 when nothing was lost, doubled or changed; the figures go to <out>/soak.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import ray

from nabla_dist.experiment.build import build_runtime
from nabla_dist.experiment.config import load_config
from nabla_dist.experiment.run import Experiment
from nabla_dist.runtime.cluster import start_ray

TIMING = ("wall_s", "session", "finished_at")


def settings(args) -> list[str]:
    return [f"data.name=toy", f"data.size={args.problems}", f"data.limit={args.problems}", "data.split=test",
            "method.name=nabla", f"method.max_new_tokens={args.tokens}", f"method.max_iters={args.iters}",
            # every position is optimized, so each problem sends many policy and reward requests
            "method.confidence_threshold=null", "method.grad_norm_threshold=null",
            "wandb.mode=disabled", f"runtime.max_in_flight={args.in_flight}", "runtime.max_batch_size=8"]


def ray_settings(args) -> list[str]:
    return ["runtime.kind=ray", "runtime.num_cpus=2", "runtime.policy_replicas=2", "runtime.reward_replicas=2",
            "runtime.cpus_per_actor=0.5", "runtime.max_restarts=100000",
            f"runtime.reply_timeout_s={args.reply_timeout}"]


def read_results(path: Path) -> tuple[dict, int]:
    """(results keyed by (problem, repeat) without timings, lines in total)."""
    records, lines = {}, 0
    for line in path.read_text().splitlines():
        lines += 1
        record = {k: v for k, v in json.loads(line).items() if k not in TIMING}
        records.setdefault((record["problem_id"], record["repeat"]), record)
    return records, lines


class Chaos(threading.Thread):
    """Every `every` seconds (uniform in the range), SIGKILL or SIGSTOP the process of a
    random worker that is serving (not starting up), policy or reward."""

    def __init__(self, runtime, every: tuple[float, float], stop_share: float, seed: int):
        super().__init__(daemon=True)
        self.runtime, self.every, self.stop_share = runtime, every, stop_share
        self.rng = random.Random(seed)
        self.faults: Counter = Counter()
        self.stopped: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.rng.uniform(*self.every)):
            replicas = [r for r in self.runtime.policy + self.runtime.reward
                        if r.actors and not r.retired and not self._starting(r)]
            if not replicas:
                continue
            replica = self.rng.choice(replicas)
            try:
                pid = ray.get(replica.actors[0].__ray_call__.remote(lambda worker: os.getpid()), timeout=2)
            except Exception:  # it died or hung meanwhile
                continue
            model = replica.name.split("-")[0]
            if self.rng.random() < self.stop_share:
                os.kill(pid, signal.SIGSTOP)
                self.stopped.append(pid)
                self.faults[f"{model} stopped"] += 1
            else:
                os.kill(pid, signal.SIGKILL)
                self.faults[f"{model} killed"] += 1

    def _starting(self, replica) -> bool:
        return any(f.replica is replica and f.tickets is None for f in list(self.runtime._flights.values()))

    def finish(self) -> None:
        self.done.set()
        self.join()
        for pid in self.stopped:  # Ray kills a hung worker once its deadline passes; make sure
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=300)
    parser.add_argument("--tokens", type=int, default=24, help="method.max_new_tokens")
    parser.add_argument("--iters", type=int, default=2, help="method.max_iters")
    parser.add_argument("--in-flight", type=int, default=8, help="runtime.max_in_flight")
    parser.add_argument("--every", type=float, nargs=2, default=(8.0, 15.0), metavar=("MIN", "MAX"),
                        help="seconds between faults, uniform in [MIN, MAX]")
    parser.add_argument("--stop-share", type=float, default=0.2, help="share of faults that SIGSTOP (hang)")
    parser.add_argument("--reply-timeout", type=float, default=20.0, help="runtime.reply_timeout_s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/soak"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"problems": args.problems, "settings": settings(args), "ray": ray_settings(args)}

    started = time.monotonic()
    reference_dir = args.out / "reference"
    Experiment(load_config(None, [*settings(args), f"output_dir={reference_dir}"])).run()
    report["reference_s"] = round(time.monotonic() - started, 1)
    reference, _ = read_results(reference_dir / "results.jsonl")

    start_ray(None, num_cpus=2)
    soak_dir = args.out / "soak"
    cfg = load_config(None, [*settings(args), *ray_settings(args), f"output_dir={soak_dir}"])
    runtime = build_runtime(cfg)
    driver = psutil.Process()
    rss_start, rss_peak = driver.memory_info().rss, 0
    sampling = threading.Event()

    def sample():
        nonlocal rss_peak
        while not sampling.wait(1.0):
            rss_peak = max(rss_peak, driver.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    chaos = Chaos(runtime, tuple(args.every), args.stop_share, args.seed)
    started = time.monotonic()
    chaos.start()
    try:
        Experiment(cfg, runtime=runtime).run()
    finally:
        chaos.finish()
        sampling.set()
        sampler.join()
        runtime.shutdown()
        ray.shutdown()
    rss_end = driver.memory_info().rss

    soaked, lines = read_results(soak_dir / "results.jsonl")
    report.update(
        soak_s=round(time.monotonic() - started, 1),
        faults=dict(chaos.faults),
        faults_total=sum(chaos.faults.values()),
        replicas_rebuilt=runtime.restarts,
        requests_retried=runtime.requeued,
        deadlines_missed=runtime.timeouts,
        results=len(soaked),
        lost=len(set(reference) - set(soaked)),
        duplicated=lines - len(soaked),
        unexpected=len(set(soaked) - set(reference)),
        different=sum(soaked[k] != reference[k] for k in set(soaked) & set(reference)),
        errors=sum(r["error"] is not None for r in soaked.values()),
        driver_rss_mib={"start": round(rss_start / 2**20, 1), "peak": round(max(rss_peak, rss_end) / 2**20, 1),
                        "end": round(rss_end / 2**20, 1), "growth": round((rss_end - rss_start) / 2**20, 1)},
    )
    (args.out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    ok = report["lost"] == report["duplicated"] == report["unexpected"] == report["different"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
