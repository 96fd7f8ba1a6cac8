"""Experiment configuration: OmegaConf structured configs mirrored by YAML shipped in the package.

`load_config(experiment, overrides)` merges, in order: these defaults, the experiment's YAML,
then `a.b=c` overrides. An experiment is a name of a file in `nabla_dist/configs/` (`toy`,
`paper/math500`; read through importlib.resources, so an installed wheel has them too) or a
path to a user's own YAML file; `configs/<name>.yaml`, the experiments' place before they
moved into the package, still names the packaged file. A file may start from another with
`base: <experiment>` (its keys win). Unknown keys and wrong types are refused by
OmegaConf; ranges are checked by each section's own dataclass, and the error names the
full key (`method.rollout.top_p=2.0 is invalid: …`).

Each setting is defined once, in the layer that uses it (the way verl composes typed
configs): `method` is ∇-Reasoner's `NablaConfig` and the baselines' `SampleConfig`
(algorithm/), `policy` / `reward` are the engines' `PolicySpec` / `RewardSpec`
(engines/spec.py), `runtime` is `RuntimeOptions` (runtime/options.py). Only what no lower
layer reads lives here: the method's name, stop strings, data, W&B and where results go.
"""

from __future__ import annotations

import difflib
import importlib.resources
import logging
import math
from dataclasses import dataclass, field, fields, is_dataclass
try:
    from importlib.resources.abc import Traversable  # Python ≥ 3.11
except ImportError:  # Python 3.10
    from importlib.abc import Traversable
from pathlib import Path, PurePosixPath
from typing import List, Optional, Union

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from nabla_dist.algorithm.baselines import SampleConfig
from nabla_dist.algorithm.checks import InvalidSetting, check
from nabla_dist.algorithm.nabla import NablaConfig
from nabla_dist.engines.spec import PolicySpec, RewardSpec
from nabla_dist.experiment.data import DataConfig
from nabla_dist.runtime.options import RuntimeOptions

log = logging.getLogger(__name__)
CONFIGS: Traversable = importlib.resources.files("nabla_dist") / "configs"
OLD_ROOT = "configs/"  # where the YAML files lived in a checkout before they moved into the package
YamlFile = Union[Path, Traversable]
METHODS = ("nabla", "greedy", "self_consistency", "best_of_n")
# Keys of earlier versions: (the new key, or None when the key had no effect and is gone; why)
LEGACY_KEYS = {
    "reward.lazy_probe": (None, "the reward engine has no gradient-norm probe; policy.lazy_probe is the switch"),
}


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class MethodConfig(NablaConfig, SampleConfig):
    """`name` picks the program; ∇-Reasoner reads the NablaConfig fields, self-consistency
    and Best-of-N the SampleConfig ones (`n`, `rollout`, `max_new_tokens`), greedy only
    `max_new_tokens`."""

    name: str = "nabla"
    stop: List[str] = field(default_factory=list)  # stop strings, trimmed from responses

    def __post_init__(self):
        NablaConfig.__post_init__(self)
        SampleConfig.__post_init__(self)
        check(self.name in METHODS, "name", self.name, f"choose one of {', '.join(METHODS)}")


@dataclass
class WandbConfig:
    """experiment/tracking.py. Credentials never go here: W&B reads WANDB_API_KEY or ~/.netrc."""

    mode: str = "offline"  # offline (sync later) | online | disabled (tests)
    project: str = "nabla-dist"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)

    def __post_init__(self):
        check(self.mode in ("disabled", "offline", "online"), "mode", self.mode, "use disabled, offline or online")


@dataclass
class ExperimentConfig:
    seed: int = 0
    output_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    policy: PolicySpec = field(default_factory=PolicySpec)
    reward: Optional[RewardSpec] = field(default_factory=RewardSpec)
    method: MethodConfig = field(default_factory=MethodConfig)
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    wandb: WandbConfig = field(default_factory=WandbConfig)


def yaml_file(name: str, folder: Traversable, what: str) -> YamlFile:
    """A user's YAML path as given, or the packaged `<folder>/<name>.yaml` for a name (`what`:
    for messages). `configs/…yaml`, a path into a checkout of earlier versions, names the
    packaged file when no such file exists here."""
    if PurePosixPath(name).suffix in (".yaml", ".yml"):
        path = Path(name).expanduser()
        if path.exists():
            return path
        packaged = CONFIGS.joinpath(*PurePosixPath(name[len(OLD_ROOT):]).parts) if name.startswith(OLD_ROOT) else None
        if packaged is not None and packaged.is_file():
            return packaged
        raise ConfigError(f"{what} file {name!r} does not exist — check the path")
    packaged = folder.joinpath(*PurePosixPath(f"{name}.yaml").parts)
    if not packaged.is_file():
        raise ConfigError(f"unknown {what} {name!r} (the package has no {name}.yaml) — use one of "
                          f"{', '.join(known_names(folder))}, or a path to your own YAML file")
    return packaged


def known_names(folder: Traversable, skip: tuple[str, ...] = ("sweep",)) -> list[str]:
    """The names of the packaged YAML files under `folder` (one level of subfolders, `skip`ped ones aside)."""
    names = []
    for entry in folder.iterdir():
        if entry.is_file() and entry.name.endswith(".yaml"):
            names.append(entry.name[:-len(".yaml")])
        elif entry.is_dir() and entry.name not in skip:
            names += [f"{entry.name}/{n}" for n in known_names(entry, skip)]
    return sorted(names)


def read_yaml(path: YamlFile) -> DictConfig:
    """A YAML file of settings as a mapping; ConfigError for bad YAML or another shape."""
    try:
        node = OmegaConf.create(path.read_text(encoding="utf-8"))  # OmegaConf's YAML loader: 1e-3 is a float
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML ({problem}{where}) — fix the file") from None
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path} holds a {type(node).__name__.removesuffix('Config').lower()}, not a mapping of "
                          "settings — write it as `section: {key: value}` lines, e.g. `method: {name: greedy}`")
    return node


def experiment_file(experiment: str) -> YamlFile:
    return yaml_file(experiment, CONFIGS, "experiment")


def experiment_layers(experiment: str, seen: tuple[str, ...] = ()) -> list[DictConfig]:
    """The experiment file and, first, the experiments it names as `base:` (one level each)."""
    path = experiment_file(experiment)
    if str(path) in seen:
        raise ConfigError(f"{path}: `base:` loops back to itself through {list(seen)}")
    layer = read_yaml(path)
    base = layer.pop("base", None)
    if base and isinstance(path, Path) and PurePosixPath(str(base)).suffix in (".yaml", ".yml") \
            and not Path(str(base)).exists():
        base = path.parent / str(base)  # a base path relative to the user's file
    below = experiment_layers(str(base), (*seen, str(path))) if base else []
    return [*below, upgrade_keys(layer, str(path))]


def upgrade_keys(node: DictConfig, where: str, strict: bool = True) -> DictConfig:
    """Map keys of earlier versions (LEGACY_KEYS) onto today's. A key that had no effect is
    refused with the reason (`strict`, a user's file or override) or dropped (a saved run)."""
    for old, (new, why) in LEGACY_KEYS.items():
        section, _, key = old.rpartition(".")
        parent = OmegaConf.select(node, section) if section else node
        if not isinstance(parent, DictConfig) or key not in parent:
            continue
        if new is not None:
            value = parent.pop(key)
            OmegaConf.update(node, new, value, force_add=True)
            log.warning("%s: %s is now %s", where, old, new)
        elif strict:
            raise ConfigError(f"{where}: {old} no longer exists ({why}) — delete it")
        else:
            parent.pop(key)
    return node



def load_config(experiment: str | None = "default", overrides: list[str] = ()) -> ExperimentConfig:
    """Defaults ← experiment YAML (over its `base:`) ← `key=value` overrides, validated. Every
    error is a ConfigError of one line that names the key (or file) and the fix."""
    schema = OmegaConf.structured(ExperimentConfig)
    cfg = schema
    try:
        if experiment:
            cfg = OmegaConf.merge(cfg, *experiment_layers(experiment))
        for item in overrides:
            if "=" not in item or not item.partition("=")[0].strip():
                raise ConfigError(f"override {item!r} is not key=value — write it as key=value, e.g. data.limit=4")
        cfg = OmegaConf.merge(cfg, upgrade_keys(OmegaConf.from_dotlist(list(overrides)), "override"))
        return build(cfg)
    except OmegaConfBaseException as error:
        raise ConfigError(_omegaconf_message(error, schema)) from error
    except InvalidSetting as error:
        raise ConfigError(f"{error.key}={error.value!r} is invalid — {error.fix}") from error


def _omegaconf_message(error: OmegaConfBaseException, schema: DictConfig) -> str:
    key = getattr(error, "full_key", None) or ""
    message = " ".join((getattr(error, "msg", None) or str(error)).split("\n")[0].split())
    if isinstance(error, ConfigKeyError) and key:
        parent, _, leaf = key.rpartition(".")
        section = OmegaConf.select(schema, parent) if parent else schema
        known = list(section.keys()) if isinstance(section, DictConfig) else []
        close = difflib.get_close_matches(leaf, known, n=1)
        hint = f"did you mean {parent + '.' if parent else ''}{close[0]}?" if close else \
            f"the keys of {parent or 'the top level'} are {', '.join(known)}"
        return f"unknown configuration key {key!r} — {hint}"
    if key:
        return f"bad value for {key}: {message} — give {key} a value of its type"
    return f"bad configuration: {message} — a section (method, policy, …) takes keys, e.g. method.name=greedy"


def build(cfg: DictConfig) -> ExperimentConfig:
    """The typed config from a merged tree; a section's range error names its full key."""
    try:
        typed = OmegaConf.to_object(cfg)
    except InvalidSetting as error:
        raise error.under(_failing_section(cfg) or "") from error
    _check_finite(typed)
    return typed


def _check_finite(node, path: str = "") -> None:
    """No setting takes an infinite or NaN value (null turns optional ones off)."""
    for item in fields(node):
        value, key = getattr(node, item.name), f"{path}{item.name}"
        if is_dataclass(value):
            _check_finite(value, key + ".")
        elif isinstance(value, float):
            check(math.isfinite(value), key, value, "use a finite number")


def _failing_section(node: DictConfig, path: str = "") -> str | None:
    """The deepest section whose dataclass refuses its values (checked children first)."""
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none():
            found = _failing_section(child, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    try:
        OmegaConf.to_object(node)
    except InvalidSetting:
        return path
    return None


def to_yaml(cfg: ExperimentConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
