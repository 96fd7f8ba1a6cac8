"""From an experiment config to a running runtime: checks first, then engines or replicas.

The one place where the experiment layer turns its config into what the lower layers
take: specs (`cfg.policy`, `cfg.reward`), runtime options (`cfg.runtime`) and the program
for each problem. Everything that can be checked on tokenizers and config files is checked
before any model loads.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from nabla_dist.algorithm.baselines import best_of_n, greedy, self_consistency
from nabla_dist.algorithm.nabla import NablaReasoner
from nabla_dist.algorithm.program import Program, Prompt
from nabla_dist.engines.build import check_policy, check_reward
from nabla_dist.engines.prompt import PromptEncoder
from nabla_dist.experiment.config import ConfigError, ExperimentConfig, MethodConfig
from nabla_dist.runtime.interface import Runtime

log = logging.getLogger(__name__)


def needs_reward(cfg: ExperimentConfig) -> bool:
    m = cfg.method
    return m.name == "best_of_n" or (m.name == "nabla" and (m.lambda_reward != 0 or m.rejection_sampling))


def preflight(cfg: ExperimentConfig) -> None:
    """The engines' own checks on tokenizers and config files (chat templates, vocabulary
    alignment, the verifier's verdict token, tensor-parallel head counts)."""
    if needs_reward(cfg) and cfg.reward is None:
        raise ConfigError(f"method.name={cfg.method.name} needs a reward model and reward is null — set reward.path "
                          "(e.g. reward.path=tiny:reward), or pick a method without one (greedy, self_consistency)")
    if needs_reward(cfg) and cfg.runtime.kind == "ray" and cfg.runtime.reward_replicas == 0:
        raise ConfigError(f"method.name={cfg.method.name} needs a reward model but runtime.reward_replicas=0 — "
                          "set runtime.reward_replicas ≥ 1")
    device = cfg.runtime.device
    on_this_machine = cfg.runtime.kind == "local" or cfg.runtime.address is None
    if device.startswith("cuda") and on_this_machine and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device={device!r} but torch sees no CUDA GPU here (torch {torch.__version__}) — "
                          "use runtime.device=cpu, or run on a machine with a GPU and a CUDA build of torch")
    for key in cfg.runtime.ignored_by_local():
        log.warning("runtime.%s=%r has no effect with runtime.kind=local", key, getattr(cfg.runtime, key))
    ray = cfg.runtime.kind == "ray"
    try:
        tokenizer = check_policy(cfg.policy, sharding=cfg.runtime.sharding, tp_size=cfg.runtime.tp_size if ray else 1)
        if needs_reward(cfg):
            check_reward(cfg.reward, tokenizer, sharding=cfg.runtime.sharding,
                         tp_size=cfg.runtime.reward_tp_size if ray else 1)
    except ValueError as error:
        raise ConfigError(str(error)) from error


def build_runtime(cfg: ExperimentConfig, checked: bool = False) -> Runtime:
    """`runtime.kind`: local engines in this process, or Ray replicas (same interface).
    `checked`: the caller ran `preflight(cfg)` already."""
    if not checked:
        preflight(cfg)
    reward = cfg.reward if needs_reward(cfg) else None
    if cfg.runtime.kind == "ray":
        from nabla_dist.runtime.ray_runtime import RayRuntime

        try:
            return RayRuntime.start(cfg.policy, reward, cfg.runtime, cfg.method.stop,
                                    keep_head=cfg.method.parametrization == "latents", on_plan=show_plan(cfg))
        except ValueError as error:  # the cluster cannot hold the replicas, or is not there
            raise ConfigError(str(error)) from error
    from nabla_dist.runtime.local import LocalRuntime

    return LocalRuntime.start(cfg.policy, reward, cfg.runtime, cfg.method.stop)


def show_plan(cfg: ExperimentConfig):
    """Prints the placement plan for people (stderr, or the job's log), before any model loads."""
    def show(plan) -> None:
        from nabla_dist.experiment.progress import announce

        announce(plan.describe(cfg.runtime.gpu_memory_gib))

    return show


def with_model_defaults(method: MethodConfig, prompts: PromptEncoder) -> MethodConfig:
    """A sampler's top-k left unset (null) is the policy's generation config's, as in the
    reference implementation (0, no filter, when that config has none)."""
    fill = lambda p: p if p.top_k is not None else dataclasses.replace(p, top_k=prompts.top_k)  # noqa: E731
    return dataclasses.replace(method, rollout=fill(method.rollout), resample=fill(method.resample))


def make_program(m: MethodConfig, prompt: Prompt, seed: int, head=None) -> Program:
    """The program of method `m.name` for one problem × repeat (`m` after with_model_defaults)."""
    if m.name == "nabla":
        return NablaReasoner(prompt, m, seed, head).run()
    if m.name == "greedy":
        return greedy(prompt, m.max_new_tokens, seed)
    if m.name == "self_consistency":
        return self_consistency(prompt, m, seed)
    return best_of_n(prompt, m, seed)
