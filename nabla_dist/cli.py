"""`nabla-dist` command line.

    nabla-dist run [EXPERIMENT] [key=value ...]     run (or resume) one experiment
    nabla-dist rescore OUTPUT_DIR [--n 1 2 4]      SC / BoN at smaller N, no new generation
    nabla-dist sweep SWEEP [key=value ...]          a grid of runs (nabla_dist/configs/sweep/), then its report
    nabla-dist report DIR [DIR ...] [--out OUT]     tables, scaling fits and plots over run / sweep directories
    nabla-dist demo [key=value ...]                 the embedded default (the sweep `demo`)
    nabla-dist train-toy [--out DIR]                rebuild the shipped toy policy and reward model

A user error (a bad setting, file, path or output directory; a full disk) ends with one
line on stderr, `nabla-dist: error: <what> — <fix>`, and exit status 2; `--debug` adds the
traceback. Ctrl-C stops cleanly with exit status 130: finished results are kept, and the
same command resumes. A run that fails for another reason (every replica of a model lost)
exits with 1; an unexpected exception prints its traceback (a bug: please report it).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import traceback
from pathlib import Path

from nabla_dist.engines.loading import TOY_DIR, ModelPathError
from nabla_dist.experiment.config import ConfigError, load_config
from nabla_dist.experiment.data import DataError
from nabla_dist.experiment.results import OutputError

USER_ERRORS = (ConfigError, DataError, OutputError, ModelPathError, FileNotFoundError)
# Errors of the machine that the user fixes: errno -> the fix
OS_FIXES = {
    errno.ENOSPC: "free some space, then rerun the same command to resume (finished results are kept)",
    errno.EDQUOT: "free some space under your quota, then rerun the same command to resume",
    errno.EACCES: "make it writable, or choose another output_dir",
    errno.EPERM: "make it writable, or choose another output_dir",
    errno.EROFS: "the file system is read-only: choose another output_dir",
    errno.ENOTDIR: "a part of that path is a file: choose another output_dir",
    errno.EISDIR: "a directory is in the way: choose another output_dir",
    errno.EEXIST: "a file is in the way: choose another output_dir",
}
EXIT_USER_ERROR, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


class UsageError(Exception):
    """A command line argparse refuses."""


class Interrupted(Exception):
    """Ctrl-C, with what was kept."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UsageError(f"{message} — see `{self.prog} --help`")


def _run(args) -> int:
    from nabla_dist.experiment.run import Experiment

    experiment, overrides = args.experiment, list(args.overrides)
    if "=" in experiment:  # `nabla-dist run data.limit=4`: an override, not an experiment
        experiment, overrides = "default", [experiment, *overrides]
    cfg = load_config(experiment, overrides)
    experiment = None
    try:
        experiment = Experiment(cfg)
        try:
            summary = experiment.run()
        finally:
            experiment.runtime.shutdown()
    except KeyboardInterrupt:
        if experiment is None:
            raise Interrupted("interrupted before any result — rerun the same command to start") from None
        new, done, wanted = experiment.kept()
        raise Interrupted(
            f"interrupted after {new} new result{'' if new == 1 else 's'} ({done} of {wanted} done in "
            f"{cfg.output_dir}) — rerun the same command to resume"
        ) from None
    print(json.dumps(summary, indent=2))
    print(f"results: {cfg.output_dir}/results.jsonl  summary: {cfg.output_dir}/summary.json")
    return 0


def _rescore(args) -> int:
    from nabla_dist.experiment.rescore import format_table, rescore_run

    try:
        table = rescore_run(args.output_dir, args.n)
    except ValueError as error:
        if isinstance(error, USER_ERRORS):
            raise
        raise ConfigError(str(error)) from error
    print(format_table(table))
    print(f"rescore: {args.output_dir}/rescore.json")
    return 0


def _sweep(args) -> int:
    from nabla_dist.experiment.sweep import load_sweep, run_sweep

    sweep = run_sweep(load_sweep(args.sweep, args.overrides))
    width = max(len(p.name) for p in sweep.points)
    for point in sweep.points:
        print(f"{point.name:<{width}}  {point.status:<8}  {point.error or ''}".rstrip())
    report = sweep.output_dir / "report"
    print(f"sweep: {sweep.output_dir}/sweep.json" + (f"  report: {report}/report.md" if report.exists() else ""))
    return 1 if any(p.status == "failed" for p in sweep.points) else 0


def _report(args) -> int:
    from nabla_dist.experiment.report import write_report

    report = write_report(args.dirs, args.out, args.params, args.wandb, args.bootstrap, args.seed, args.bins,
                          args.bins_from, args.split)
    print(f"{len(report['rows'])} rows; report: {report['out']}/report.md  table: {report['out']}/summary.csv")
    return 0


def _demo(args) -> int:
    from nabla_dist.experiment.demo import run_demo

    return run_demo(args.overrides)


def _train_toy(args) -> int:
    from nabla_dist.experiment.train_toy import ToyTrainConfig, train_toy

    chosen = {k: v for k, v in (("seed", args.seed), ("threads", args.threads)) if v is not None}
    report = train_toy(ToyTrainConfig(**chosen), args.out)
    keys = ("greedy_accuracy", "sample_accuracy", "reward_auc", "reward_auc_within_problem", "reward_accuracy",
            "reward_pick_accuracy", "wall_s")
    print(json.dumps({k: report[k] for k in keys}, indent=2))
    print(f"models: {args.out}/policy  {args.out}/reward  report: {args.out}/policy/train_report.json")
    return 0


def user_error_message(error: BaseException) -> str | None:
    """The one line shown for a user error; None when `error` is not one."""
    if isinstance(error, OSError) and not isinstance(error, FileNotFoundError) and error.errno in OS_FIXES:
        where = f": {error.filename}" if error.filename else ""
        return f"{error.strerror}{where} — {OS_FIXES[error.errno]}"
    if isinstance(error, USER_ERRORS):
        text = str(error.args[0]) if isinstance(error, OSError) and len(error.args) == 1 else str(error)
        return " ".join(text.split())  # one line, whatever a library put in it
    return None


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nabla-dist", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
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
    sweep = sub.add_parser("sweep", help="run (or resume) every point of a sweep (nabla_dist/configs/sweep/ or a "
                           "YAML path), then write its report")
    sweep.add_argument("sweep", help="a packaged sweep (budget, demo, model_size) or a YAML path")
    sweep.add_argument("overrides", nargs="*", help="sweep.parallel=2, sweep.output_dir=DIR, or any experiment "
                       "key for every point, e.g. data.limit=2")
    sweep.set_defaults(func=_sweep)
    report = sub.add_parser("report", help="tables, scaling fits with intervals, the compute-optimal method "
                            "by difficulty and plots over run or sweep directories")
    report.add_argument("dirs", nargs="+", type=Path, help="run directories and/or sweep directories")
    report.add_argument("--out", type=Path, help="output folder (default: DIR/report, or ./report for several)")
    report.add_argument("--params", type=lambda v: int(float(v)), help="policy parameter count for the FLOP estimate "
                        "(default: from the config of policy.path)")
    report.add_argument("--wandb", choices=("disabled", "offline", "online"),
                        help="log the report to W&B (default: the runs' wandb.mode, in their group)")
    report.add_argument("--bootstrap", type=int, default=1000, help="resamples of the problems for every interval")
    report.add_argument("--seed", type=int, default=0, help="seed of the resamples and of --split's halves")
    report.add_argument("--bins", type=int, default=5, help="difficulty bins (quantiles of the base score; tied "
                        "scores can give fewer)")
    report.add_argument("--bins-from", default="auto", help="the base score of the difficulty bins: auto (the largest "
                        "SC / BoN run's fraction of correct candidates, else greedy), greedy, or a run name")
    report.add_argument("--split", action="store_true", help="also choose per bin on a random half of the problems "
                        "and measure the choice on the other half (the in-sample numbers are optimistic)")
    report.set_defaults(func=_report)
    demo = sub.add_parser("demo", help="the embedded default: ∇-Reasoner vs greedy, SC@8 and BoN@8, local Ray, CPU "
                          "(nabla_dist/configs/sweep/demo.yaml)")
    demo.add_argument("overrides", nargs="*", help="e.g. data.size=50 or sweep.output_dir=DIR")
    demo.set_defaults(func=_demo)
    train = sub.add_parser("train-toy", help="rebuild the toy policy and reward model from seeds (CPU, about 21 minutes on 2 cores)")
    train.add_argument("--out", default=str(TOY_DIR), help=f"output directory (default: {TOY_DIR})")
    train.add_argument("--seed", type=int, help="default: ToyTrainConfig's, the shipped weights' (0)")
    train.add_argument("--threads", type=int, help="torch threads (default: ToyTrainConfig's, the shipped weights' "
                       "(2); on a busy machine 1 can be faster)")
    train.set_defaults(func=_train_toy)
    return parser


def _fail(message: str, code: int, error: BaseException, debug: bool) -> int:
    if debug:
        traceback.print_exception(error)
    print(f"nabla-dist: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = _parser().parse_args(argv)
    except UsageError as error:
        return _fail(f"error: {error}", EXIT_USER_ERROR, error, debug)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except Interrupted as error:
        return _fail(str(error), EXIT_INTERRUPTED, error, args.debug)
    except KeyboardInterrupt as error:
        return _fail("interrupted — rerun the same command to resume", EXIT_INTERRUPTED, error, args.debug)
    except Exception as error:
        message = user_error_message(error)
        if message is not None:
            return _fail(f"error: {message}", EXIT_USER_ERROR, error, args.debug)
        if isinstance(error, RuntimeError):  # e.g. NoReplicaLeft: results so far are in output_dir
            text = " ".join(str(error).split())
            return _fail(f"error: {type(error).__name__}: {text}", EXIT_FAILED, error, args.debug)
        traceback.print_exception(error)
        print(f"nabla-dist: internal error: {type(error).__name__}: {error} — this is a bug; please report it "
              "with the traceback above", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
