"""Cost per problem of ∇-Reasoner (max 8 rollouts) against Best-of-N@8, same problems and hardware.

Both run through the same runtime with the same batching; the script prints wall time
and model calls (paper and honest) per problem, and the ratios ∇-Reasoner / BoN@8 (the
paper reports 1.12 in wall time on GPUs).

    python benchmarks/method_cost.py --policy toy:policy --reward toy:reward --problems 32
"""

from __future__ import annotations

import argparse
import json
import time

from nabla_dist.experiment.config import load_config
from nabla_dist.experiment.data import load_problems
from nabla_dist.experiment.build import build_runtime, make_program, with_model_defaults
from nabla_dist.experiment.run import problem_seed


def measure(cfg, runtime, problems) -> dict:
    outputs = {}
    programs = (
        (p.id, make_program(with_model_defaults(cfg.method, runtime.prompts), runtime.prompts.encode(p.question), problem_seed(cfg.seed, p.id, 0),
                            runtime.head_matrix() if cfg.method.parametrization == "latents" else None))
        for p in problems
    )
    start = time.perf_counter()
    runtime.run(programs, lambda k, o, e: outputs.__setitem__(k, (o, e)), max_in_flight=cfg.runtime.max_in_flight)
    wall = time.perf_counter() - start
    done = [o for o, e in outputs.values() if e is None]
    n = len(problems)
    return {
        "wall_s_per_problem": wall / n,
        "model_calls_per_problem": sum(o.count.model_calls for o in done) / n,
        "model_calls_honest_per_problem": sum(o.count.model_calls_honest for o in done) / n,
        "response_tokens_per_problem": sum(len(o.response_ids) for o in done) / n,
        "errors": len(outputs) - len(done),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default=None, help="experiment YAML to start from (default: built-in defaults)")
    parser.add_argument("--policy", default="tiny:policy")
    parser.add_argument("--reward", default="tiny:reward")
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("overrides", nargs="*", help="extra config overrides for both methods")
    args = parser.parse_args()
    common = [
        f"policy.path={args.policy}", f"reward.path={args.reward}", "data.name=toy", f"data.size={args.problems}",
        "data.split=test", f"method.max_new_tokens={args.max_new_tokens}", *args.overrides,
    ]
    figures = {}
    runtime = None
    for name, extra in (("best_of_n", ["method.name=best_of_n", "method.n=8"]),
                        ("nabla", ["method.name=nabla", "method.max_rollouts=8"])):
        cfg = load_config(args.experiment, common + extra)
        runtime = runtime or build_runtime(load_config(args.experiment, common + ["method.name=best_of_n"]))
        figures[name] = measure(cfg, runtime, load_problems(cfg.data))
        print(name, json.dumps(figures[name]), flush=True)
    figures["ratio_wall"] = figures["nabla"]["wall_s_per_problem"] / figures["best_of_n"]["wall_s_per_problem"]
    figures["ratio_model_calls"] = (
        figures["nabla"]["model_calls_per_problem"] / figures["best_of_n"]["model_calls_per_problem"]
    )
    figures["ratio_model_calls_honest"] = (
        figures["nabla"]["model_calls_honest_per_problem"] / figures["best_of_n"]["model_calls_honest_per_problem"]
    )
    print(json.dumps(figures, indent=2))
    print(f"∇-Reasoner / BoN@8: wall {figures['ratio_wall']:.2f}x, model calls {figures['ratio_model_calls']:.2f}x "
          f"(honest {figures['ratio_model_calls_honest']:.2f}x)")


if __name__ == "__main__":
    main()
