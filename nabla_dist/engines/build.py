"""The one way engines are built, from a spec: by the local runtime and by every Ray rank.

Loading, the reward kind, dtype and DeepSpeed sharding are decided here and nowhere else.
A sharded replica passes its rank's view through constructor arguments: what sharding
splits but the engines read whole (embedding tables, the LM head) is copied before the
model is sharded.

The `check_*` functions run the same checks on tokenizers and config files alone, so a
configuration that cannot work is refused before any model loads.
"""

from __future__ import annotations

import torch

from nabla_dist.engines.loading import check_weights, load_causal_lm, load_reward_model, load_tokenizer, model_config
from nabla_dist.engines.policy import PolicyEngine
from nabla_dist.engines.reward import RewardEngine, alignment_index, check_chat_template
from nabla_dist.engines.sharding import check_autotp_divides_heads, shard_model
from nabla_dist.engines.spec import PolicySpec, RewardSpec
from nabla_dist.engines.verifier import GenerativeVerifierEngine, verdict_token_id


def build_policy_engine(
    spec: PolicySpec,
    device: str = "cpu",
    stop_strings=(),
    *,
    sharding: str = "none",
    world_size: int = 1,
    keep_head: bool = False,
) -> PolicyEngine:
    """`world_size` > 1: this process is one rank of a replica whose torch.distributed group
    is joined; `keep_head`: keep W_head whole for `head_matrix` (the `latents` parametrization)."""
    tokenizer = load_tokenizer(spec.tokenizer_path)
    model = load_causal_lm(spec.path, spec.dtype, allow_pickle=spec.allow_pickle)
    sharded = sharding != "none" and world_size > 1
    head = model.get_output_embeddings().weight.detach().float().clone() if keep_head and sharded else None
    embeddings = _whole_embeddings(model, sharding, world_size)
    module = shard_model(model, sharding, world_size)
    return PolicyEngine(module, tokenizer, spec, device, stop_strings,
                        whole_embeddings=embeddings, whole_head=head, sync_logits=sharded)


def build_reward_engine(
    spec: RewardSpec,
    policy_tokenizer,
    device: str = "cpu",
    policy_vocab_size: int | None = None,
    *,
    sharding: str = "none",
    world_size: int = 1,
) -> RewardEngine:
    """The engine of `spec.kind`: a one-output sequence classifier or a generative verifier.
    `policy_vocab_size`: rows of the policy's embedding matrix (see RewardEngine)."""
    tokenizer = load_tokenizer(spec.tokenizer_path)
    if spec.kind == "verifier":
        engine_cls = GenerativeVerifierEngine
        model = load_causal_lm(spec.path, spec.dtype, allow_pickle=spec.allow_pickle, role="reward")
    else:
        engine_cls, model = RewardEngine, load_reward_model(spec.path, spec.dtype, allow_pickle=spec.allow_pickle)
    embeddings = _whole_embeddings(model, sharding, world_size)
    module = shard_model(model, sharding, world_size)
    return engine_cls(module, tokenizer, policy_tokenizer, spec, device, policy_vocab_size,
                      whole_embeddings=embeddings)


def _whole_embeddings(model, sharding: str, world_size: int) -> torch.Tensor | None:
    """ZeRO-3 leaves each rank a slice of every parameter, but the engines index the input
    embedding table directly: they read this whole copy, taken before sharding."""
    if sharding != "zero3" or world_size == 1:
        return None
    return model.get_input_embeddings().weight.detach().clone()


# -- checks before anything loads ------------------------------------------------------------
def check_policy(spec: PolicySpec, *, sharding: str = "none", tp_size: int = 1):
    """Returns the policy tokenizer (the reward check aligns to it)."""
    tokenizer = load_tokenizer(spec.tokenizer_path)
    check_weights(spec.path, spec.allow_pickle, "policy")
    if sharding == "autotp" and tp_size > 1:
        check_autotp_divides_heads(model_config(spec.path), tp_size, "runtime.tp_size")
    return tokenizer


def check_reward(spec: RewardSpec, policy_tokenizer, *, sharding: str = "none", tp_size: int = 1) -> None:
    """The reward engine's own template, alignment and verdict checks, on its tokenizer."""
    tokenizer = load_tokenizer(spec.tokenizer_path)
    check_weights(spec.path, spec.allow_pickle, "reward")
    if sharding == "autotp" and tp_size > 1:
        check_autotp_divides_heads(model_config(spec.path), tp_size, "runtime.reward_tp_size")
    try:
        check_chat_template(tokenizer)
        alignment_index(tokenizer, policy_tokenizer)
        if spec.kind == "verifier":
            verdict_token_id(tokenizer, spec.verdict)
    except ValueError as error:
        raise ValueError(f"reward.path={spec.path!r} cannot serve this policy: {error}") from error
