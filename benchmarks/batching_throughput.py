"""Continuous batching on the Ray runtime: 16 problems in flight against 1 at a time.

One policy replica (one Ray actor) serves ∇-Reasoner for a random Llama of 8 layers,
hidden 512 (the "mid" shape, tiny BPE tokenizer), built and saved by this script. The
method keeps only the policy terms (lambda_reward=0, no rejection sampling), so a single
replica does all the work and the two runs differ only in how many problems share it.
`--method greedy` measures decoding alone (one rollout per problem).
Prints problems/min for each, the speedup, and the share of wall time spent outside
engine compute (coordinator and Ray transport): 1 − Σ rank-0 engine seconds / wall.
Responses must be identical in both runs.

    python benchmarks/batching_throughput.py --problems 16 --cpus-per-actor 1
"""

from __future__ import annotations

import argparse
import tempfile
import time

from nabla_dist.engines.tiny import build_tokenizer, random_model
from nabla_dist.experiment.config import load_config
from nabla_dist.experiment.data import load_problems
from nabla_dist.experiment.build import build_runtime, make_program, with_model_defaults
from nabla_dist.experiment.run import problem_seed
from nabla_dist.runtime.cluster import start_ray
from nabla_dist.runtime.ray_runtime import RayRuntime


def save_model(directory: str) -> None:
    tokenizer = build_tokenizer(vocab_size=400, seed=0)
    random_model("mid", tokenizer, seed=0).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def run(runtime: RayRuntime, cfg, problems, in_flight: int) -> dict:
    """Solve `problems` with at most `in_flight` at once; wall and engine seconds, responses."""
    responses = {}

    def on_finish(key, output, error):
        if error is not None:
            raise error
        responses[key] = output.response_ids

    programs = ((p.id, make_program(with_model_defaults(cfg.method, runtime.prompts), runtime.prompts.encode(p.question), problem_seed(cfg.seed, p.id, 0)))
                for p in problems)
    engine, by_kind = sum(runtime.engine_seconds.values()), dict(runtime.engine_seconds)
    calls, served = sum(runtime.engine_calls.values()), sum(runtime.requests_served.values())
    start = time.perf_counter()
    runtime.run(programs, on_finish, max_in_flight=in_flight)
    wall = time.perf_counter() - start
    return {
        "wall": wall,
        "engine": sum(runtime.engine_seconds.values()) - engine,
        "calls": sum(runtime.engine_calls.values()) - calls,
        "requests": sum(runtime.requests_served.values()) - served,
        "responses": responses,
        "by_kind": {k: round(v - by_kind.get(k, 0), 1) for k, v in runtime.engine_seconds.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--max-iters", type=int, default=5)
    parser.add_argument("--method", default="nabla", choices=["nabla", "greedy"])
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, help="also the replica's torch threads")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        save_model(directory)
        cfg = load_config(None, [
            f"output_dir={directory}/run", f"policy.path={directory}", "data.name=builtin",
            f"data.limit={args.problems}", f"method.max_new_tokens={args.max_new_tokens}",
            f"method.name={args.method}", f"method.max_iters={args.max_iters}", "method.lambda_reward=0",
            "method.rejection_sampling=false",
            "method.grad_norm_threshold=null", f"runtime.max_batch_size={args.problems}", "runtime.kind=ray",
            "runtime.policy_replicas=1", "runtime.reward_replicas=0", "runtime.tp_size=1",
            f"runtime.cpus_per_actor={args.cpus_per_actor}",
        ])
        start_ray(None)
        runtime = build_runtime(cfg)
        try:
            problems = load_problems(cfg.data)
            run(runtime, cfg, problems[:2], in_flight=2)  # warm-up: first passes, allocator
            one = run(runtime, cfg, problems, in_flight=1)
            many = run(runtime, cfg, problems, in_flight=args.problems)
        finally:
            runtime.shutdown()

    if one["responses"] != many["responses"]:
        raise SystemExit("responses differ between 1 and 16 in flight: batching changed results")
    method = "∇-Reasoner (policy terms)" if args.method == "nabla" else "greedy"
    print(f"{len(problems)} problems, {method}, {args.max_new_tokens} new tokens, random Llama 8 layers × hidden 512, "
          f"one replica, {args.cpus_per_actor:g} CPU")
    print(f"{'in flight':>9} {'problems/min':>13} {'wall s':>8} {'engine calls':>13} {'requests':>9} "
          f"{'outside engine':>15}")
    for name, r in (("1", one), (str(args.problems), many)):
        print(f"{name:>9} {60 * len(problems) / r['wall']:>13.1f} {r['wall']:>8.1f} {r['calls']:>13} "
              f"{r['requests']:>9} {1 - r['engine'] / r['wall']:>15.1%}")
    print("engine seconds by request type:", {name: r["by_kind"] for name, r in (("1", one), ("many", many))})
    print(f"speedup from batching: {one['wall'] / many['wall']:.2f}x")


if __name__ == "__main__":
    main()
