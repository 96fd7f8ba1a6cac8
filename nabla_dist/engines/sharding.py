"""DeepSpeed sharding of a frozen Hugging Face model whose input-embedding gradients must be exact.

Every rank of a replica builds the same model, calls `shard_model` and then runs
identical inputs through the returned module:

    module = shard_model(model, "autotp", world_size=2)
    embeds = full_weight(module.get_input_embeddings())[ids].requires_grad_()  # [batch, seq, hidden]
    logits = module(inputs_embeds=embeds, attention_mask=mask, position_ids=pos).logits
    (grad,) = torch.autograd.grad(objective(logits), embeds)   # same, exact, on every rank

Which DeepSpeed paths give exact gradients (measured, tests/engines/test_sharding.py):
- "autotp": `deepspeed.initialize` in training mode with `tensor_parallel.autotp_size`, no
  optimizer, `vocab_parallel_lm_head: False` (a tied LM head would otherwise return logits
  split over the vocabulary). Use `engine.module(...)`: `engine(...)` then backward raises
  without an optimizer.
- "zero3": ZeRO stage 3, no optimizer, `engine.module(...)`. Parameters are gathered by
  collectives inside forward and backward, so every rank must run the same passes.
- never `deepspeed.init_inference(tp_size=N)`: forward is exact, but its all-reduces
  (`deepspeed::inference_all_reduce_`) have no autograd kernel, so the gradient comes back
  silently wrong (57-83% relative error on the test's tiny Llama; PyTorch only warns).
"""

from __future__ import annotations

import os
from typing import Any

import torch

SHARDINGS = ("none", "autotp", "zero3")


def deepspeed_env(has_gpu: bool) -> dict[str, str]:
    """Environment DeepSpeed needs in a rank's process. On CPU: the CPU accelerator (gloo
    backend) and a stable cache for the shm op it JIT-builds at its first init (~30 s)."""
    if has_gpu:
        return {}
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return {
        "DS_ACCELERATOR": "cpu",
        "TORCH_EXTENSIONS_DIR": os.path.join(cache, "nabla_dist", "torch_extensions"),
    }


def shard_model(model: torch.nn.Module, sharding: str, world_size: int) -> torch.nn.Module:
    """Freeze `model` (no grads, eval mode) and shard it over the `world_size` ranks of the current distributed group.

    `sharding` is "none" (returned as is), "autotp" (tensor parallel; `world_size` must divide
    the attention and key-value head counts) or "zero3" (parameters partitioned). Call it on
    every rank with an identically built model; the distributed group is joined here from the
    environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK) when not joined yet.
    Returns the module to call; with world_size 1 that is `model` itself.
    """
    if sharding not in SHARDINGS:
        raise ValueError(f"Unknown sharding {sharding!r}; use one of {', '.join(SHARDINGS)}.")
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}.")
    model.requires_grad_(False).eval()
    if sharding == "none" or world_size == 1:
        return model
    if sharding == "autotp":
        check_autotp_divides_heads(model.config, world_size)
    join_group(world_size)
    import deepspeed

    config: dict[str, Any] = {"train_micro_batch_size_per_gpu": 1}
    if sharding == "autotp":
        # vocab_parallel_lm_head False: full logits on every rank, tied embeddings included.
        config["tensor_parallel"] = {"autotp_size": world_size, "vocab_parallel_lm_head": False}
    else:
        config["zero_optimization"] = {"stage": 3}
    engine, *_ = deepspeed.initialize(model=model, config=config)
    module = engine.module
    if sharding == "autotp":
        _check_full_vocabulary_head(module)
    # The engine owns the hooks and groups the module relies on; keep it alive with the
    # module without registering it as a submodule (it is an nn.Module holding `module`).
    module.__dict__["_nabla_deepspeed_engine"] = engine
    return module


def full_weight(layer: torch.nn.Module) -> torch.Tensor:
    """The whole `layer.weight`, detached, e.g. of `module.get_output_embeddings()` for the
    vocabulary projection. Sharded weights are gathered, so every rank must call it.

    Needed because the shards are what the module holds: under "zero3" every weight is
    empty (shape [0]) outside forward; under "autotp" an untied LM head keeps only this
    rank's slice of the vocabulary ([vocab / world_size, hidden]).
    """
    weight = layer.weight
    if hasattr(weight, "ds_id"):  # ZeRO-3 partitioned parameter
        import deepspeed

        with deepspeed.zero.GatheredParameters([weight]):
            return weight.detach().clone()
    if getattr(layer, "is_tp_parallel", False):
        from deepspeed.module_inject.layers import LinearLayer

        if type(layer) is not LinearLayer:
            raise NotImplementedError(
                f"full_weight of an AutoTP {type(layer).__name__} is not supported; only "
                "column-parallel LinearLayer (the LM head) and unsharded layers are."
            )
        with torch.no_grad():
            return layer._all_gather_shards(weight.detach(), layer._partition_sizes, dim=0)
    return weight.detach()


def check_autotp_divides_heads(config, world_size: int, key: str = "world_size") -> None:
    """AutoTP splits attention heads over ranks: `world_size` must divide the head counts of
    `config` (a model config; `key` names the setting in the message). Needs no weights."""
    config = getattr(config, "text_config", None) or config
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    if heads is None:
        raise ValueError(
            f"autotp needs the model config's num_attention_heads to check {key}={world_size}, and "
            f"{type(config).__name__} has none — use sharding='zero3'"
        )
    for name, count in (("num_attention_heads", heads), ("num_key_value_heads", kv_heads)):
        if count % world_size:
            divisors = [d for d in range(1, count + 1) if heads % d == 0 and kv_heads % d == 0]
            raise ValueError(
                f"autotp {key} {world_size} does not divide the model's {name} ({count}) — "
                f"use a tensor-parallel size in {divisors}, or sharding='zero3'"
            )


def _check_full_vocabulary_head(module: torch.nn.Module) -> None:
    # A vocabulary-parallel head returns logits split over the vocabulary, silently.
    from deepspeed.module_inject.layers import VocabParallelLinear

    split = [name for name, sub in module.named_modules() if isinstance(sub, VocabParallelLinear)]
    if split:
        raise RuntimeError(
            f"AutoTP sharded the output head {split} over the vocabulary although "
            "vocab_parallel_lm_head is False; this DeepSpeed version changed that option's "
            "meaning. Pin deepspeed==0.19.8 or use sharding='zero3'."
        )


def join_group(world_size: int) -> None:
    """Join this rank's torch.distributed group through DeepSpeed (gloo on CPU) from the
    environment set by `dist_group.RankWorker`, and check that it has `world_size` ranks."""
    for key, value in deepspeed_env(torch.cuda.is_available()).items():
        os.environ.setdefault(key, value)
    import deepspeed
    import torch.distributed as dist

    if not dist.is_initialized():
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise RuntimeError(
                f"shard_model with world_size {world_size} needs a distributed group, and "
                f"{', '.join(missing)} are not set; start the ranks with "
                "nabla_dist.runtime.dist_group.create_rank_actors (or torchrun)."
            )
        os.environ.setdefault("LOCAL_RANK", os.environ["RANK"])
        os.environ.setdefault("LOCAL_SIZE", os.environ["WORLD_SIZE"])
    deepspeed.init_distributed(verbose=False)
    if dist.get_world_size() != world_size:
        raise ValueError(
            f"shard_model got world_size {world_size} but the distributed group has "
            f"{dist.get_world_size()} ranks; pass the group's size (one replica = one group)."
        )
