"""The placement plan on described nodes (no Ray): parameter counts from configs alone, which
replica goes where, and what a refusal names."""

from __future__ import annotations

import json
import math

import pytest

from nabla_dist.engines.loading import parameter_count
from nabla_dist.engines.spec import PolicySpec, RewardSpec
from nabla_dist.runtime.options import RuntimeOptions
from nabla_dist.runtime.placement import GIB, Node, PlacementError, plan_for, plan_placement, replica_demands

# Qwen2.5-7B-Instruct's and Qwen2.5-72B-Instruct's architecture (their config.json values)
QWEN7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
              num_key_value_heads=4, vocab_size=152064)
QWEN72B = dict(hidden_size=8192, intermediate_size=29568, num_hidden_layers=80, num_attention_heads=64,
               num_key_value_heads=8, vocab_size=152064)


def qwen2_config(path, shape: dict):
    """A config.json alone (no weights, no tokenizer): enough to count parameters."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "tie_word_embeddings": False,
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1e6, **shape}))
    return str(path)


def qwen2_params(h, i, layers, heads, kv, vocab) -> int:
    """By hand: q, k, v (with biases), o; gate, up, down; two norms per layer; embedding,
    untied head and the final norm."""
    kv_dim = h // heads * kv
    layer = (h * h + h) + 2 * (h * kv_dim + kv_dim) + h * h + 3 * h * i + 2 * h
    return layers * layer + 2 * vocab * h + h


def nodes(*specs) -> list[Node]:
    return [Node(f"{i:032x}", f"10.0.0.{i}", {"GPU": g, "CPU": c, "memory": m * GIB})
            for i, (g, c, m) in enumerate(specs, start=1)]


def test_parameter_count_reads_only_the_config_and_matches_the_architecture(tmp_path):
    path = qwen2_config(tmp_path / "qwen7b", QWEN7B)
    expected = qwen2_params(3584, 18944, 28, 28, 4, 152064)
    assert expected == 7_615_616_512  # Qwen2.5-7B's published total, 7.61B
    assert parameter_count(path) == expected
    assert parameter_count(path, matmul_only=True) == expected - 152064 * 3584  # the input table is a lookup
    # a one-output classifier head replaces the LM head
    assert parameter_count(path, reward=True) == expected - 152064 * 3584 + 3584


def test_a_tp_group_stays_on_one_node_and_replicas_of_a_model_spread_out():
    options = RuntimeOptions(kind="ray", tp_size=2, sharding="autotp", policy_replicas=2, reward_replicas=2,
                             gpus_per_actor=1, cpus_per_actor=1)
    cluster = nodes((4, 8, 64), (2, 8, 64), (2, 8, 64))
    plan = plan_placement(replica_demands(options, 10**6, "float32", 10**6), cluster)
    where = {demand.name: node.address for demand, node in plan.placed}
    # by hand: largest first; each policy replica (2 GPUs) to the node it fills exactly, one
    # per node; then each reward replica to a node without one, the head's 4-GPU node first
    # as the only one left with room
    assert where == {"policy-0": "10.0.0.2", "policy-1": "10.0.0.3", "reward-0": "10.0.0.1", "reward-1": "10.0.0.1"}
    assert [d.name for d, _ in plan.placed] == ["reward-0", "reward-1", "policy-0", "policy-1"]  # start order


def test_a_packing_spreading_misses_is_found_by_best_fit():
    """Spread, the two 3-GPU policy replicas leave 3 + 3 GPUs and the third 2-GPU reward
    replica no room; packed, one node holds both policy replicas, the other the rewards."""
    options = RuntimeOptions(kind="ray", tp_size=3, policy_replicas=2, reward_tp_size=2, reward_replicas=3,
                             sharding="autotp", gpus_per_actor=1, cpus_per_actor=1)
    plan = plan_placement(replica_demands(options, 10**6, "float32", 10**6), nodes((6, 16, 64), (6, 16, 64)))
    where = {demand.name: node.address for demand, node in plan.placed}
    assert where == {"policy-0": "10.0.0.1", "policy-1": "10.0.0.1",
                     "reward-0": "10.0.0.2", "reward-1": "10.0.0.2", "reward-2": "10.0.0.2"}


def test_host_memory_while_loading_limits_ranks_per_node(tmp_path):
    """Every rank reads the whole checkpoint before sharding: tp 8 of a 72B bf16 model needs
    8 × 145 GB on one node."""
    policy = PolicySpec(path=qwen2_config(tmp_path / "qwen72b", QWEN72B), dtype="bfloat16")
    params = qwen2_params(8192, 29568, 80, 64, 8, 152064)
    cluster = nodes((8, 96, 900), (8, 96, 900))
    options = RuntimeOptions(kind="ray", tp_size=8, sharding="autotp", reward_replicas=0, gpus_per_actor=1,
                             cpus_per_actor=4, gpu_memory_gib=80)
    with pytest.raises(PlacementError, match=rf"policy-0 needs {8 * params * 2 / GIB:.1f} GiB host memory on one "
                                             r"node .* the largest node has 900\.0 GiB host memory") as refused:
        plan_for(policy, None, options, cluster)
    assert refused.match(r"runtime\.tp_size∈\{4\}")  # 1 and 2 leave over 60 GiB of weights per 80 GiB GPU
    plan = plan_for(policy, None, RuntimeOptions(**{**options.__dict__, "tp_size": 4, "policy_replicas": 2}),
                    cluster)
    assert {node.address for _, node in plan.placed} == {"10.0.0.1", "10.0.0.2"}  # one replica per node
    # on each GPU: a quarter of the weights and the whole (unsplit) input embedding table
    assert plan.placed[0][0].device_bytes_per_rank == math.ceil(params * 2 / 4) + 152064 * 8192 * 2


def test_weights_per_gpu_are_checked_against_gpu_memory(tmp_path):
    policy = PolicySpec(path=qwen2_config(tmp_path / "qwen7b", QWEN7B), dtype="float32")
    options = RuntimeOptions(kind="ray", reward_replicas=0, gpus_per_actor=1, gpu_memory_gib=24)
    with pytest.raises(PlacementError, match=r"policy-0's weights need 28\.4 GiB per GPU .* may use 18\.0 GiB") as refused:
        plan_for(policy, None, options, nodes((8, 64, 512)))
    assert refused.match(r"policy\.dtype=bfloat16") and refused.match(r"runtime\.tp_size∈\{2,4\} with runtime\.sharding=autotp")


def test_too_few_gpus_in_all_names_the_shortfall_and_the_counts_that_fit(tiny_paths):
    options = RuntimeOptions(kind="ray", policy_replicas=4, reward_replicas=2, gpus_per_actor=1)
    with pytest.raises(PlacementError, match="the replicas need 6 GPUs in all but the cluster has 4 GPUs") as refused:
        plan_for(PolicySpec(), RewardSpec(), options, nodes((2, 8, 64), (2, 8, 64)))
    assert refused.match(r"runtime\.policy_replicas=2")
    assert "runtime.reward_replicas" not in str(refused.value)  # with 4 policy replicas, no reward count fits


def test_the_plan_is_printed_for_people_before_models_load(capsys):
    from nabla_dist.experiment.build import show_plan
    from nabla_dist.experiment.config import load_config

    options = RuntimeOptions(kind="ray", tp_size=2, sharding="autotp", reward_replicas=1, gpus_per_actor=1)
    plan = plan_placement(replica_demands(options, 10**6, "float32", 10**6), nodes((2, 8, 64), (1, 8, 64)))
    show_plan(load_config(None, ["runtime.kind=ray", "runtime.gpu_memory_gib=80"]))(plan)
    printed = capsys.readouterr().err
    assert "placement plan: 2 replicas on 2 nodes" in printed
    assert "node 10.0.0.1" in printed and "policy-0: 2 rank(s)" in printed
    assert printed.index("policy-0") < printed.index("node 10.0.0.2") < printed.index("reward-0")
