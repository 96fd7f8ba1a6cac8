"""Experiment configuration: OmegaConf structured configs mirrored by YAML in `configs/`.

`load_config(experiment, overrides)` merges, in order: these defaults, `configs/<experiment>.yaml`
(or a YAML path), then `a.b=c` overrides. Unknown keys and wrong types are refused by
OmegaConf; ranges are checked in `__post_init__` with the value and the fix named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nabla_dist.algorithm.baselines import SampleConfig
from nabla_dist.algorithm.dto import DTOConfig
from nabla_dist.algorithm.nabla import NablaConfig
from nabla_dist.algorithm.requests import SamplingParams
from nabla_dist.engines.policy import EngineOptions
from nabla_dist.experiment.data import DataConfig
from nabla_dist.runtime.scheduler import DEFAULT_PATIENCE

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
METHODS = ("nabla", "greedy", "self_consistency", "best_of_n")
RUNTIMES = ("local", "ray")


class ConfigError(ValueError):
    pass


def _check(ok: bool, key: str, value, fix: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {fix}")


@dataclass
class SamplingConfig:
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0

    def __post_init__(self):
        _check(self.temperature >= 0, "temperature", self.temperature, "use ≥ 0 (0 = greedy)")
        _check(0 < self.top_p <= 1, "top_p", self.top_p, "use a value in (0, 1]")
        _check(self.top_k >= 0, "top_k", self.top_k, "use ≥ 0 (0 = off)")

    def params(self) -> SamplingParams:
        return SamplingParams(self.temperature, self.top_p, self.top_k)


@dataclass
class MethodConfig:
    name: str = "nabla"
    max_new_tokens: int = 256
    stop: List[str] = field(default_factory=list)
    # self_consistency / best_of_n
    n: int = 8
    # ∇-Reasoner (defaults of ALGORITHM.md, MATH-500 script)
    parametrization: str = "logits"
    lambda_nll: float = 1e-3
    lambda_reward: float = 1.0
    max_iters: int = 20
    lr: float = 0.01
    min_lr_ratio: float = 0.1
    st_temperature: float = 1.0
    confidence_threshold: Optional[float] = 0.97
    grad_norm_threshold: Optional[float] = 4.0
    entropy_threshold: Optional[float] = None
    rollout: SamplingConfig = field(default_factory=SamplingConfig)
    resample: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0.5))
    rejection_sampling: bool = True
    max_rollouts: int = 8
    grad_caching: bool = True
    reuse_selector_grad: bool = True

    def __post_init__(self):
        _check(self.name in METHODS, "method.name", self.name, f"choose one of {METHODS}")
        _check(self.max_new_tokens >= 1, "method.max_new_tokens", self.max_new_tokens, "use ≥ 1")
        _check(self.n >= 1, "method.n", self.n, "use ≥ 1")
        _check(self.parametrization in ("logits", "latents"), "method.parametrization",
               self.parametrization, "use 'logits' or 'latents'")
        _check(self.max_iters >= 1, "method.max_iters", self.max_iters, "use ≥ 1")
        _check(self.lr > 0, "method.lr", self.lr, "use > 0")
        _check(0 <= self.min_lr_ratio <= 1, "method.min_lr_ratio", self.min_lr_ratio, "use a value in [0, 1]")
        _check(self.st_temperature > 0, "method.st_temperature", self.st_temperature, "use > 0")
        _check(self.confidence_threshold is None or 0 < self.confidence_threshold <= 1,
               "method.confidence_threshold", self.confidence_threshold, "use a value in (0, 1] or null")
        _check(self.max_rollouts >= 1, "method.max_rollouts", self.max_rollouts, "use ≥ 1")

    def nabla(self) -> NablaConfig:
        return NablaConfig(
            parametrization=self.parametrization,
            lambda_nll=self.lambda_nll,
            lambda_reward=self.lambda_reward,
            dto=DTOConfig(self.max_iters, self.lr, self.min_lr_ratio, self.st_temperature, self.grad_caching),
            confidence_threshold=self.confidence_threshold,
            grad_norm_threshold=self.grad_norm_threshold,
            entropy_threshold=self.entropy_threshold,
            rollout=self.rollout.params(),
            resample=self.resample.params(),
            rejection_sampling=self.rejection_sampling,
            max_rollouts=self.max_rollouts,
            max_new_tokens=self.max_new_tokens,
            reuse_selector_grad=self.reuse_selector_grad,
        )

    def sample(self) -> SampleConfig:
        return SampleConfig(n=self.n, sampling=self.rollout.params(), max_new_tokens=self.max_new_tokens)


@dataclass
class ModelConfig:
    path: str = "tiny:policy"
    tokenizer: Optional[str] = None  # default: the model's own directory
    dtype: str = "float32"
    autocast_bf16: bool = False
    # Gradient passes: keys/values of the fixed prefix (prompt + committed tokens) computed
    # once and kept for this many prefixes (least recently used dropped); the policy's
    # regenerations prefill only their forced token on them. 0 recomputes the whole
    # sequence every pass (the naive path, for ablations). Exact either way.
    prefix_cache: int = 64
    # Policy only: the gradient-norm probe projects its candidates to vocabulary space a
    # window at a time (1, 2, 4, …) and stops at the first reaching the threshold; false
    # projects every ahead position first, as the reference implementation does.
    lazy_probe: bool = True

    def __post_init__(self):
        _check(self.dtype in ("float32", "bfloat16", "float16"), "dtype", self.dtype,
               "use float32, bfloat16 or float16")
        _check(self.prefix_cache >= 0, "prefix_cache", self.prefix_cache, "use ≥ 0 (0 turns the prefix KV off)")

    def engine_options(self, device: str) -> EngineOptions:
        return EngineOptions(device, self.autocast_bf16, prefix_cache=self.prefix_cache, lazy_probe=self.lazy_probe)


REWARD_KINDS = ("classifier", "verifier")


@dataclass
class RewardConfig(ModelConfig):
    """`kind`: a sequence classifier with one output, or a generative verifier (a causal
    LM judging the solution; reward = log p(`verdict`), see engines/verifier.py)."""

    path: str = "tiny:reward"
    kind: str = "classifier"
    verdict: str = "yes"

    def __post_init__(self):
        super().__post_init__()
        _check(self.kind in REWARD_KINDS, "reward.kind", self.kind, f"choose one of {REWARD_KINDS}")


@dataclass
class RuntimeConfig:
    kind: str = "local"
    device: str = "cpu"
    max_batch_size: int = 16
    max_in_flight: int = 16  # problem programs running at once
    # Serve the request type with the most pending requests first (so ∇-Reasoner's rollouts
    # gather into full batches); a type passed over this many times in a row goes next.
    # null: every pending type each round. Speed only: answers never depend on batching.
    batch_patience: Optional[int] = DEFAULT_PATIENCE
    address: Optional[str] = None  # ray: None starts a local loopback cluster; "auto" joins
    num_cpus: Optional[int] = None
    # ray replicas (runtime/ray_runtime.py checks them against the model and the cluster)
    policy_replicas: int = 1
    reward_replicas: int = 1
    tp_size: int = 1  # ranks (GPUs) per policy replica, one torch.distributed group
    reward_tp_size: int = 1
    sharding: str = "none"  # none | autotp | zero3 (never DeepSpeed init_inference: wrong gradients)
    gpus_per_actor: float = 0.0  # 1 on a GPU cluster
    cpus_per_actor: float = 1.0
    max_restarts: int = 3  # rebuilds of one replica before it is retired

    def __post_init__(self):
        _check(self.kind in RUNTIMES, "runtime.kind", self.kind, f"choose one of {RUNTIMES}")
        _check(self.max_batch_size >= 1, "runtime.max_batch_size", self.max_batch_size, "use ≥ 1")
        _check(self.max_in_flight >= 1, "runtime.max_in_flight", self.max_in_flight, "use ≥ 1")
        _check(self.batch_patience is None or self.batch_patience >= 0, "runtime.batch_patience",
               self.batch_patience, "use ≥ 0, or null to serve every pending type each round")


@dataclass
class WandbConfig:
    """experiment/tracking.py. Credentials never go here: W&B reads WANDB_API_KEY or ~/.netrc."""

    mode: str = "offline"  # offline (sync later) | online | disabled (tests)
    project: str = "nabla-dist"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)

    def __post_init__(self):
        _check(self.mode in ("disabled", "offline", "online"), "wandb.mode", self.mode,
               "use disabled, offline or online")


@dataclass
class ExperimentConfig:
    seed: int = 0
    output_dir: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    policy: ModelConfig = field(default_factory=ModelConfig)
    reward: Optional[RewardConfig] = field(default_factory=RewardConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)


def experiment_file(experiment: str) -> Path:
    path = Path(experiment)
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():
            raise ConfigError(f"experiment file {experiment!r} does not exist")
        return path
    path = CONFIG_DIR / f"{experiment}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown experiment {experiment!r}: no {path}; known: {known}")
    return path


def load_config(experiment: str | None = "default", overrides: list[str] = ()) -> ExperimentConfig:
    """Defaults ← experiment YAML ← `key=value` overrides, validated."""
    try:
        cfg = OmegaConf.structured(ExperimentConfig)
        if experiment:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(experiment_file(experiment)))
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or "?"
        message = (getattr(error, "msg", None) or str(error)).split("\n")[0]
        raise ConfigError(f"bad configuration key {key!r}: {message}") from error
    except ValueError as error:  # __post_init__ checks of nested configs
        raise ConfigError(str(error)) from error


def to_yaml(cfg: ExperimentConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
