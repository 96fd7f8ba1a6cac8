"""Sweeps: one base experiment, a grid of config values, one resumable run directory per point.

    nabla-dist sweep SWEEP [key=value ...]    run (or resume) the packaged sweep SWEEP (or a YAML path)

Packaged sweeps are nabla_dist/configs/sweep/<SWEEP>.yaml. A sweep file (sweep/budget.yaml is
a full example):

    base: default                  # a packaged experiment or a YAML path; omit for the typed defaults
    overrides: {data.limit: 8}     # every point: dotted or nested keys over the base
    sweep: {name: budget, output_dir: runs/sweeps/budget, parallel: 1, report: true}
    grids:                         # the sweep is the union of these sub-grids, in order
      - method.name: [self_consistency, best_of_n]   # a sub-grid is the product of its lists
        method.n: [1, 2, 4, 8, 16]
      - zip: {method.name: [greedy, nabla], method.max_rollouts: [1, 8]}  # varied together

`key=value` on the command line: `sweep.*` sets an option above, any other key overrides the
base for every point (a swept key is refused: edit the grid instead). Each point runs in
`<output_dir>/<point name>/` (the name is made from its values, e.g. `best_of_n__n-4`) with
`wandb.group` = the sweep name unless one is set, and its resolved config is kept there as
point.yaml (`nabla-dist run <dir>/point.yaml` reruns that point alone). A point is finished
when its summary.json covers all its problems × repeats: it is skipped. Any other point
resumes through `Experiment` (run.py), which skips its finished problems.

Points run one after another in this process, those on the same models back to back (the
ones needing the reward model first) so that loaded models are reused. With `sweep.parallel > 1` they run as that many `nabla-dist run` processes at once; with
`runtime.kind=ray` every process joins one Ray cluster (`runtime.address`, or an embedded one
this process starts), where replicas of different points wait for each other's GPUs.
`<output_dir>/sweep.json` lists the points, their directories, values and status; at the end
`report.py` writes `<output_dir>/report/`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import yaml

from nabla_dist.experiment.config import (
    CONFIGS,
    ConfigError,
    ExperimentConfig,
    YamlFile,
    load_config,
    to_yaml,
    yaml_file,
)
from nabla_dist.experiment.results import write_json_atomic, write_text_atomic
from nabla_dist.experiment.progress import announce

log = logging.getLogger(__name__)

SWEEPS = CONFIGS / "sweep"
OPTIONS = ("name", "output_dir", "parallel", "report")
MAX_NAME = 96


@dataclass
class Point:
    name: str
    values: dict  # swept key -> value, in the order the sub-grid writes them
    cfg: ExperimentConfig = field(repr=False)
    status: str = "pending"  # pending | running | finished | skipped | failed
    error: str | None = None

    def entry(self) -> dict:
        return {"name": self.name, "dir": self.name, "method": self.cfg.method.name, "values": self.values,
                "status": self.status, "error": self.error}


@dataclass
class Sweep:
    name: str
    file: str
    base: str | None
    overrides: list[str]  # dotlist applied to the base for every point
    output_dir: Path
    parallel: int = 1
    report: bool = True
    points: list[Point] = field(default_factory=list)

    def write_index(self) -> None:
        index = {"name": self.name, "file": self.file, "base": self.base, "overrides": self.overrides,
                 "output_dir": str(self.output_dir), "parallel": self.parallel,
                 "points": [p.entry() for p in self.points]}
        write_json_atomic(self.output_dir / "sweep.json", index)


# -- reading a sweep file -------------------------------------------------------------------
def sweep_file(sweep: str) -> YamlFile:
    return yaml_file(sweep, SWEEPS, "sweep")


def _flatten(node: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _dotlist(values: dict) -> list[str]:
    # JSON is valid OmegaConf override grammar: strings stay strings ("1e-3", "a/b"), null is None
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def expand(grids: list[dict], where: str) -> list[dict]:
    """Every assignment of the sub-grids, in order: the product of each sub-grid's axes, where a
    `zip` group (a mapping of equal-length lists, or a list of such) counts as one axis."""
    if not isinstance(grids, list) or not all(isinstance(g, dict) for g in grids):
        raise ConfigError(f"{where}: `grids` must be a list of mappings (key: [values]), got {grids!r}")
    assignments = []
    for number, grid in enumerate(grids):
        axes = []
        for key, values in grid.items():
            if key != "zip":
                axes.append([{key: v} for v in (values if isinstance(values, list) else [values])])
                continue
            for group in values if isinstance(values, list) else [values]:
                lengths = {k: len(v) if isinstance(v, list) else None for k, v in group.items()}
                if None in lengths.values() or len(set(lengths.values())) != 1:
                    raise ConfigError(f"{where}: grids[{number}].zip needs lists of one length, got {lengths}")
                axes.append([dict(zip(group, combo)) for combo in zip(*group.values())])
        for combo in itertools.product(*axes):
            assignments.append({k: v for part in combo for k, v in part.items()})
    return assignments


def _slug(value) -> str:
    if isinstance(value, list):
        return "-".join(_slug(v) for v in value)
    if value is None or isinstance(value, bool):
        text = json.dumps(value)
    else:
        text = str(value)
        if "/" in text.strip("/"):  # a path or hub id: its last component names it
            text = text.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "_"


def point_name(values: dict) -> str:
    """`best_of_n__n-4`: values joined by `__`, each after the shortest unique suffix of its key
    (`*.name` keys show only the value). Depends only on the point's own values, so stable."""
    keys = [k.split(".") for k in values]
    parts = []
    for key, pieces in zip(values, keys):
        short = next(pieces[-i:] for i in range(1, len(pieces) + 1)
                     if [k[-i:] for k in keys].count(pieces[-i:]) == 1)
        slug = _slug(values[key])
        parts.append(slug if pieces[-1] == "name" else f"{'_'.join(short)}-{slug}")
    name = "__".join(parts) or "base"
    if len(name) > MAX_NAME:
        name = f"{name[:MAX_NAME - 9]}-{_digest(values)}"
    return name


def _digest(values: dict) -> str:
    return hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]


def load_sweep(sweep: str, cli: list[str] = ()) -> Sweep:
    """The sweep file with `cli` overrides, every point's config resolved and checked."""
    path = sweep_file(sweep)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from error
    unknown = set(spec) - {"base", "overrides", "sweep", "grids"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level keys {sorted(unknown)}; use base, overrides, sweep, grids")
    options = dict(spec.get("sweep") or {})
    overrides = _flatten(spec.get("overrides") or {})
    extra = []
    for item in cli:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not key=value")
        if key.startswith("sweep."):
            options[key[len("sweep."):]] = yaml.safe_load(value)
        else:
            extra.append(item)
    bad = set(options) - set(OPTIONS)
    if bad:
        raise ConfigError(f"unknown sweep options {sorted(bad)}; use sweep.{{{','.join(OPTIONS)}}}")
    name = str(options.get("name") or PurePosixPath(path.name).stem)
    parallel = options.get("parallel", 1)
    if not isinstance(parallel, int) or parallel < 1:
        raise ConfigError(f"sweep.parallel={parallel!r} is invalid: use an integer ≥ 1")
    base = spec.get("base")
    if base and isinstance(path, Path) and Path(base).suffix in (".yaml", ".yml") and not Path(base).exists():
        base = str(path.parent / base)  # a base path relative to the user's sweep file
    out = Path(options.get("output_dir") or f"runs/sweeps/{name}")
    assignments = expand(spec.get("grids") or [{}], str(path))
    swept = {k for a in assignments for k in a}
    for item in extra:
        if item.partition("=")[0] in swept:
            raise ConfigError(f"{item.partition('=')[0]} is swept by {path}; drop the override or edit its grids")
    if "output_dir" in swept | set(overrides) | {i.partition("=")[0] for i in extra}:
        raise ConfigError("output_dir is set per point by the sweep; use sweep.output_dir=DIR")
    result = Sweep(name, str(path), base, _dotlist(overrides) + list(extra), out, parallel,
                   bool(options.get("report", True)))
    names: dict[str, dict] = {}
    for values in assignments:
        point = point_name(values)
        if point in names and names[point] == values:
            log.warning("%s: point %s appears twice; it runs once", path, point)
            continue
        if point in names:  # different values, same slug
            point = f"{point}-{_digest(values)}"
        names[point] = values
        try:
            cfg = load_config(base, result.overrides + _dotlist(values))
        except ConfigError as error:
            raise ConfigError(f"{path}, point {point}: {error}") from error
        cfg.output_dir = str(out / point)
        if cfg.wandb.group is None:
            cfg.wandb.group = name
        result.points.append(Point(point, values, cfg))
    return result


# -- running it -------------------------------------------------------------------------------
def expected_results(cfg: ExperimentConfig) -> int:
    from nabla_dist.experiment.data import load_problems

    return len(load_problems(cfg.data)) * cfg.data.repeats


def is_finished(cfg: ExperimentConfig) -> bool:
    """summary.json covers every problem × repeat of `cfg`, computed with `cfg`'s settings."""
    from nabla_dist.experiment.run import check_resume

    summary_path = Path(cfg.output_dir) / "summary.json"
    if not summary_path.exists():
        return False
    check_resume(Path(cfg.output_dir), cfg)  # a point made with other settings is an error, not "done"
    summary = json.loads(summary_path.read_text()).get(cfg.method.name)
    return summary is not None and summary["results"] == expected_results(cfg)


def _runtime_key(cfg: ExperimentConfig) -> str:
    """What building a runtime reads (build.build_runtime): equal keys can share the engines."""
    return json.dumps([asdict(cfg.policy), asdict(cfg.reward) if cfg.reward else None, list(cfg.method.stop),
                       cfg.method.parametrization, asdict(cfg.runtime)], sort_keys=True)


class _Runtimes:
    """One runtime at a time, kept while consecutive points can share it."""

    def __init__(self):
        self.runtime, self.key, self.with_reward = None, None, False

    def get(self, cfg: ExperimentConfig):
        from nabla_dist.experiment.build import build_runtime, needs_reward

        wants_reward = needs_reward(cfg)
        if self.runtime is None or self.key != _runtime_key(cfg) or (wants_reward and not self.with_reward):
            self.close()
            self.runtime = build_runtime(cfg)
            self.key, self.with_reward = _runtime_key(cfg), wants_reward
        return self.runtime

    def close(self) -> None:
        if self.runtime is not None:
            self.runtime.shutdown()
        self.runtime = None


def _run_in_process(sweep: Sweep, points: list[Point]) -> None:
    from nabla_dist.experiment.build import needs_reward
    from nabla_dist.experiment.run import Experiment

    groups: dict[str, int] = {}  # points on the same models run back to back, those needing the reward first
    order = sorted(points, key=lambda p: (groups.setdefault(_runtime_key(p.cfg), len(groups)), not needs_reward(p.cfg)))
    runtimes = _Runtimes()
    try:
        for number, point in enumerate(order, 1):
            point.status = "running"
            sweep.write_index()
            announce(f"sweep {sweep.name}: point {number}/{len(order)} {point.name}")
            try:
                Experiment(point.cfg, runtimes.get(point.cfg)).run()
                point.status = "finished"
            except Exception as error:  # one bad point does not stop the others
                log.error("sweep %s: point %s failed: %s", sweep.name, point.name, error)
                point.status, point.error = "failed", f"{type(error).__name__}: {error}"
                runtimes.close()  # it may be the runtime that broke
            sweep.write_index()
    finally:
        runtimes.close()


def _shared_ray_address(points: list[Point]) -> tuple[str | None, bool]:
    """The cluster every point process joins; an embedded one is started here if none is named."""
    ray_points = [p for p in points if p.cfg.runtime.kind == "ray"]
    if not ray_points or any(p.cfg.runtime.address for p in ray_points):
        return None, False
    from nabla_dist.runtime.cluster import start_ray

    session = start_ray(None, num_cpus=ray_points[0].cfg.runtime.num_cpus)
    return session.address, session.started_here


def _run_processes(sweep: Sweep, points: list[Point]) -> None:
    address, started = _shared_ray_address(points)
    waiting, running = list(points), {}
    try:
        while waiting or running:
            while waiting and len(running) < sweep.parallel:
                point = waiting.pop(0)
                out = Path(point.cfg.output_dir)
                command = [sys.executable, "-m", "nabla_dist", "run", str(out / "point.yaml")]
                if address and point.cfg.runtime.kind == "ray":
                    command += [f"runtime.address={address}", "runtime.num_cpus=null"]  # not in point.yaml
                with open(out / "sweep.log", "a") as process_log:
                    running[point.name] = (point, subprocess.Popen(command, stdout=process_log,
                                                                   stderr=subprocess.STDOUT))
                point.status = "running"
                sweep.write_index()
                announce(f"sweep {sweep.name}: point {points.index(point) + 1}/{len(points)} {point.name} started "
                         f"(log: {out / 'sweep.log'})")
            time.sleep(0.2)
            for name, (point, process) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[name]
                if process.returncode == 0:
                    point.status = "finished"
                else:
                    point.status = "failed"
                    point.error = f"exit status {process.returncode}; see {Path(point.cfg.output_dir) / 'sweep.log'}"
                    log.error("sweep %s: point %s failed: %s", sweep.name, name, point.error)
                sweep.write_index()
    finally:
        for point, process in running.values():  # stopped early: stop the points we started
            process.terminate()
            process.wait()
            point.status = "pending"
        sweep.write_index()
        if started:
            import ray

            ray.shutdown()


def run_sweep(sweep: Sweep) -> Sweep:
    """Run every unfinished point; write sweep.json as it goes and the report at the end."""
    sweep.output_dir.mkdir(parents=True, exist_ok=True)
    todo = []
    for point in sweep.points:
        Path(point.cfg.output_dir).mkdir(parents=True, exist_ok=True)
        try:
            finished = is_finished(point.cfg)
        except ConfigError as error:
            point.status, point.error = "failed", str(error)
            continue
        point.status = "skipped" if finished else "pending"
        if not finished:
            write_text_atomic(Path(point.cfg.output_dir) / "point.yaml", to_yaml(point.cfg))
            todo.append(point)
    sweep.write_index()
    log.info("sweep %s: %d points, %d to run, in %s", sweep.name, len(sweep.points), len(todo), sweep.output_dir)
    if sweep.parallel > 1 and len(todo) > 1:
        _run_processes(sweep, todo)
    else:
        _run_in_process(sweep, todo)
    if sweep.report and any(p.status in ("finished", "skipped") for p in sweep.points):
        from nabla_dist.experiment.report import write_report

        write_report([sweep.output_dir], sweep.output_dir / "report")
    return sweep
