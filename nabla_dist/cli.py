"""`nabla-dist` command line.

    nabla-dist run [EXPERIMENT] [key=value ...]     run (or resume) one experiment
    nabla-dist rescore OUTPUT_DIR [--n 1 2 4]      SC / BoN at smaller N, no new generation
    nabla-dist sweep SWEEP [key=value ...]          a grid of runs (nabla_dist/configs/sweep/), then its report
    nabla-dist report DIR [DIR ...] [--out OUT]     tables and plots over run / sweep directories
    nabla-dist demo [key=value ...]                 the embedded default (the sweep `demo`)
    nabla-dist train-toy [--out DIR]                rebuild the shipped toy policy and reward model
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from nabla_dist.experiment.config import ConfigError, load_config
from nabla_dist.experiment.results import OutputBusy
from nabla_dist.experiment.demo import add_demo_command
from nabla_dist.experiment.sweep import add_sweep_commands
from nabla_dist.experiment.train_toy import add_train_toy_command


def _run(args) -> int:
    from nabla_dist.experiment.run import Experiment

    cfg = load_config(args.experiment, args.overrides)
    experiment = Experiment(cfg)
    try:
        summary = experiment.run()
    finally:
        experiment.runtime.shutdown()
    print(json.dumps(summary, indent=2))
    print(f"results: {cfg.output_dir}/results.jsonl  summary: {cfg.output_dir}/summary.json")
    return 0


def _rescore(args) -> int:
    from nabla_dist.experiment.rescore import format_table, rescore_run

    try:
        table = rescore_run(args.output_dir, args.n)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    print(format_table(table))
    print(f"rescore: {args.output_dir}/rescore.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nabla-dist", description=__doc__)
    parser.add_argument("--log-level", default="WARNING")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one experiment (a packaged one or your YAML file, plus overrides)")
    run.add_argument("experiment", nargs="?", default="default",
                     help="a packaged experiment (default, toy, paper/math500, …: nabla_dist/configs/) or a YAML path")
    run.add_argument("overrides", nargs="*", help="config overrides, e.g. data.limit=4 method.name=greedy")
    run.set_defaults(func=_run)
    rescore = sub.add_parser("rescore", help="re-score a self_consistency / best_of_n run at smaller N, "
                             "without new generation (writes <output_dir>/rescore.json)")
    rescore.add_argument("output_dir")
    rescore.add_argument("--n", type=int, nargs="+", help="the n's (default: 1, 2, 4, … below N, and N)")
    rescore.set_defaults(func=_rescore)
    add_sweep_commands(sub)
    add_demo_command(sub)
    add_train_toy_command(sub)
    argv = sys.argv[1:] if argv is None else argv
    # `nabla-dist run data.limit=4`: a first positional with '=' is an override, not an experiment
    if len(argv) >= 2 and argv[0] == "run" and "=" in argv[1]:
        argv = [argv[0], "default", *argv[1:]]
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, OutputBusy) as error:
        print(f"nabla-dist: error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # e.g. NoReplicaLeft: results so far are in output_dir
        print(f"nabla-dist: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
