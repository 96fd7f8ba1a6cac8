"""∇-Reasoner throughput: naive path against the accelerated path, same problems and seeds.

Naive, as the reference implementation works: one problem at a time, batch size 1, full
recompute of every gradient pass (no prefix KV), every ahead position's gradient norm
projected for the probe, no reuse of the selector's gradient. Accelerated: prefix KV (also
for regenerations' prefill), the lazy probe, reuse, and 1, 4 and 16 problems in flight
batched together. Responses must be identical; the script
prints problems/min, gradient passes/s and the speedups.

    python benchmarks/dto_throughput.py --shape smollm2-135m --problems 16
    python benchmarks/dto_throughput.py --shape toy --problems 64   # the shipped trained pair

Random weights are unsure everywhere, so selection picks the first positions and the fixed
prefix is little more than the prompt; `--shape toy` runs the trained toy pair with
the toy experiment's method (and its held-out problems), where positions are picked mid-answer.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from nabla_dist.algorithm.nabla import NablaConfig, NablaReasoner
from nabla_dist.engines.policy import PolicyEngine
from nabla_dist.engines.reward import RewardEngine
from nabla_dist.engines.spec import PolicySpec, RewardSpec
from nabla_dist.engines.tiny import build_tokenizer, random_model
from nabla_dist.experiment.config import load_config
from nabla_dist.experiment.data import DataConfig, load_problems
from nabla_dist.runtime.local import LocalRuntime
from nabla_dist.runtime.options import RuntimeOptions


def build(shape: str, accelerated: bool, batch: int):
    cache = 64 if accelerated else 0
    policy_spec = PolicySpec("toy:policy", prefix_cache=cache, lazy_probe=accelerated)
    options = RuntimeOptions(max_batch_size=batch)
    if shape == "toy":
        return LocalRuntime.start(policy_spec, RewardSpec("toy:reward", prefix_cache=cache), options)
    tokenizer = build_tokenizer(vocab_size=400, seed=0)
    policy = PolicyEngine(random_model(shape, tokenizer, seed=0), tokenizer, policy_spec)
    reward = RewardEngine(
        random_model("tiny" if shape == "tiny" else "mid", tokenizer, reward=True, seed=1),
        tokenizer, tokenizer, RewardSpec(prefix_cache=cache), policy_vocab_size=policy.embeddings.shape[0],
    )
    return LocalRuntime(policy, reward, options)


def run(runtime: LocalRuntime, questions, cfg: NablaConfig, in_flight: int):
    outputs = {}
    programs = (
        (i, NablaReasoner(runtime.prompts.encode(q), cfg, seed=1000 + i).run()) for i, q in enumerate(questions)
    )
    start = time.perf_counter()
    runtime.run(programs, lambda k, o, e: outputs.__setitem__(k, o if e is None else e), max_in_flight=in_flight)
    wall = time.perf_counter() - start
    errors = [o for o in outputs.values() if isinstance(o, BaseException)]
    if errors:
        raise errors[0]
    return outputs, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="mid", help="tiny | mid | smollm2-135m | toy (the trained pair)")
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--max-iters", type=int, default=5)
    parser.add_argument("--in-flight", default="1,4,16")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.shape == "toy":  # the shipped pair, its method settings and held-out problems
        cfg = load_config("toy", []).method
        questions = [p.question for p in load_problems(DataConfig(name="toy", size=args.problems, seed=0))]
    else:
        questions = [p.question for p in load_problems(DataConfig(name="toy", size=args.problems, seed=7))]
        # every position is uncertain under random weights; the probe's norm test always passes
        cfg = NablaConfig(max_new_tokens=args.max_new_tokens, max_rollouts=8, grad_norm_threshold=1e-9,
                          max_iters=args.max_iters, lr=0.05)
    figures = {"shape": args.shape, "problems": args.problems, "threads": torch.get_num_threads()}

    naive_runtime = build(args.shape, accelerated=False, batch=1)
    naive, naive_wall = run(naive_runtime, questions, dataclasses.replace(cfg, reuse_selector_grad=False), 1)
    naive_grads = naive_runtime.engine_calls["PolicyGrad"]
    figures["naive"] = {"wall_s": naive_wall, "problems_per_min": 60 * len(questions) / naive_wall,
                        "grad_passes_per_s": naive_grads / naive_wall}
    for in_flight in [int(x) for x in args.in_flight.split(",")]:
        runtime = build(args.shape, accelerated=True, batch=in_flight)
        outputs, wall = run(runtime, questions, cfg, in_flight)
        same = sum(outputs[k].response_ids == naive[k].response_ids for k in naive)
        identical = same == len(naive)
        grad_requests = sum(o.count.grad_evaluations + o.count.probes for o in outputs.values())
        figures[f"accelerated_{in_flight}"] = {
            "wall_s": wall,
            "problems_per_min": 60 * len(questions) / wall,
            "grad_passes_per_s": grad_requests / wall,
            "speedup": naive_wall / wall,
            "identical_responses": identical,
            "identical_problems": same,
            "policy_grad_batches": runtime.engine_calls["PolicyGrad"],
            "policy_grad_requests": grad_requests,
        }
        print(f"in flight {in_flight:>2}: {60 * len(questions) / wall:7.2f} problems/min, "
              f"speedup {naive_wall / wall:5.2f}x, identical responses {same}/{len(naive)}", flush=True)
    print(f"naive      : {figures['naive']['problems_per_min']:7.2f} problems/min "
          f"({figures['naive']['grad_passes_per_s']:.2f} gradient passes/s)")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
