"""Sharded models must give the unsharded logits, rewards and input-embedding gradients.

A wrong sharded gradient is silent (DeepSpeed's init_inference TP is off by ~2% and raises
nothing), so each rank compares against an unsharded copy of the same model in its own
process. Two Ray actors form one gloo group of world size 2, as a replica does at run time.
"""

from __future__ import annotations

import sys

import pytest
import torch

from nabla_dist.engines.sharding import full_weight, shard_model
from nabla_dist.runtime.dist_group import RankWorker

WORLD_SIZE = 2
TOLERANCE = 1e-5  # relative, fp32
MODELS = ("llama", "qwen2_tied", "llama_reward")


def build_model(kind: str) -> torch.nn.Module:
    """Tiny random model, identical on every rank (fixed seed), fp32."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    shape = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=False))
    elif kind == "qwen2_tied":
        model = Qwen2ForCausalLM(Qwen2Config(**shape, tie_word_embeddings=True))
    elif kind == "llama_reward":
        model = LlamaForSequenceClassification(LlamaConfig(**shape, num_labels=1))
    else:
        raise ValueError(kind)
    return model.float().eval()


def make_inputs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A left-padded batch of 2 (second row has 3 pads), embedded by the unsharded model."""
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 128, (2, 7), generator=generator)  # [batch, seq]
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    ids[1, :3] = 0
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    targets = torch.randint(0, 128, (2, 7), generator=generator)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)  # [batch, seq, hidden]
    return {"embeds": embeds, "mask": mask, "position_ids": position_ids, "targets": targets}


def forward_and_grad(module: torch.nn.Module, kind: str, inputs: dict[str, torch.Tensor]):
    """(logits or score, d objective / d inputs_embeds); objective = sum of target log-probs
    over real tokens for a causal LM, the summed score for a reward model."""
    embeds = inputs["embeds"].clone().requires_grad_(True)
    out = module(inputs_embeds=embeds, attention_mask=inputs["mask"], position_ids=inputs["position_ids"])
    logits = out.logits  # [batch, seq, vocab] or [batch, 1]
    if kind == "llama_reward":
        objective = logits.sum()
    else:
        one_hot = torch.nn.functional.one_hot(inputs["targets"], logits.shape[-1]).to(logits.dtype)
        one_hot = one_hot * inputs["mask"][..., None]
        objective = (torch.log_softmax(logits, dim=-1) * one_hot).sum()
    (grad,) = torch.autograd.grad(objective, embeds)
    return logits.detach(), grad


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape, f"shape {tuple(got.shape)} != {tuple(want.shape)}"
    return ((got - want).norm() / want.norm()).item()


class ShardingRank(RankWorker):
    """One rank: builds each model twice (reference, to shard), compares the two."""

    def __init__(self, rank_env):
        super().__init__(rank_env)
        torch.set_num_threads(1)

    def compare(self, sharding: str) -> dict[str, dict[str, float]]:
        """Relative errors of outputs and input gradients, per model kind."""
        errors = {}
        for kind in MODELS:
            reference = build_model(kind)
            inputs = make_inputs(reference)
            want_out, want_grad = forward_and_grad(reference, kind, inputs)
            module = shard_model(build_model(kind), sharding, WORLD_SIZE)
            got_out, got_grad = forward_and_grad(module, kind, inputs)
            errors[kind] = {
                "out": relative_error(got_out, want_out),
                "grad": relative_error(got_grad, want_grad),
                "input_embeddings": relative_error(
                    full_weight(module.get_input_embeddings()), reference.get_input_embeddings().weight
                ),
            }
            if kind != "llama_reward":
                errors[kind]["output_embeddings"] = relative_error(
                    full_weight(module.get_output_embeddings()), reference.get_output_embeddings().weight
                )
        return errors

    def compare_init_inference(self) -> dict[str, float]:
        """The known-bad path: DeepSpeed inference TP (no kernel injection) on the Llama LM."""
        import deepspeed

        from nabla_dist.engines.sharding import join_group

        join_group(WORLD_SIZE)
        reference = build_model("llama")
        inputs = make_inputs(reference)
        want_out, want_grad = forward_and_grad(reference, "llama", inputs)
        engine = deepspeed.init_inference(
            build_model("llama").requires_grad_(False),
            tensor_parallel={"tp_size": WORLD_SIZE},
            dtype=torch.float32,
            replace_with_kernel_inject=False,
        )
        got_out, got_grad = forward_and_grad(engine.module, "llama", inputs)
        return {"out": relative_error(got_out, want_out), "grad": relative_error(got_grad, want_grad)}


@pytest.fixture(scope="module")
def ray_session():
    import ray
    from ray import cloudpickle

    from nabla_dist.runtime.cluster import start_ray

    # Workers get this module's functions by value: `tests` need not be importable there.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    session = start_ray(None, num_cpus=2)
    yield session
    if session.started_here:
        ray.shutdown()


def run_on_ranks(method: str, *args):
    """Calls `ShardingRank.<method>(*args)` on a fresh 2-rank group (one group per DeepSpeed
    setup: its global state does not mix configurations in one process)."""
    import ray
    from ray.util.placement_group import remove_placement_group

    from nabla_dist.runtime.dist_group import create_rank_actors, replica_placement_group

    pg = replica_placement_group(WORLD_SIZE, cpus_per_actor=0.5)
    ranks = create_rank_actors(ShardingRank, pg, cpus_per_actor=0.5)
    try:
        return ray.get([getattr(rank, method).remote(*args) for rank in ranks], timeout=540)
    finally:
        for rank in ranks:
            ray.kill(rank)
        remove_placement_group(pg)


@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["autotp", "zero3"])
def test_sharded_outputs_and_input_gradients_match_unsharded(ray_session, sharding):
    per_rank = run_on_ranks("compare", sharding)
    for rank, errors in enumerate(per_rank):
        for kind, error in errors.items():
            assert error["out"] <= TOLERANCE, f"rank {rank} {sharding} {kind} output: {error}"
            assert error["grad"] <= TOLERANCE, f"rank {rank} {sharding} {kind} gradient: {error}"
            # full_weight gathers the shards back: exactly the original matrices.
            assert error["input_embeddings"] == 0, f"rank {rank} {sharding} {kind}: {error}"
            assert error.get("output_embeddings", 0) == 0, f"rank {rank} {sharding} {kind}: {error}"


@pytest.mark.slow
def test_comparison_catches_init_inference_wrong_gradient(ray_session):
    # Proves the check above has teeth: this path's gradient is wrong while its forward is right.
    per_rank = run_on_ranks("compare_init_inference")
    for error in per_rank:
        assert error["out"] <= TOLERANCE
        assert error["grad"] > 1e-3


def test_no_sharding_returns_the_model_unchanged():
    model = build_model("llama")
    assert shard_model(model, "none", WORLD_SIZE) is model
    assert not any(p.requires_grad for p in model.parameters())


def test_unknown_sharding_is_rejected():
    with pytest.raises(ValueError, match="'tp'.*none, autotp, zero3"):
        shard_model(build_model("llama"), "tp", WORLD_SIZE)


def test_autotp_world_size_must_divide_heads():
    with pytest.raises(ValueError, match=r"world_size 3 .* num_attention_heads \(4\).*\[1, 2\]"):
        shard_model(build_model("llama"), "autotp", 3)
    with pytest.raises(ValueError, match=r"world_size 4 .* num_key_value_heads \(2\)"):
        shard_model(build_model("llama"), "autotp", 4)


def test_full_weight_of_an_unsharded_layer_is_its_weight():
    model = build_model("qwen2_tied")
    assert torch.equal(full_weight(model.get_output_embeddings()), model.get_input_embeddings().weight)


def test_world_size_one_returns_the_frozen_model():
    model = build_model("llama")
    assert shard_model(model, "zero3", 1) is model
    assert not any(p.requires_grad for p in model.parameters())
