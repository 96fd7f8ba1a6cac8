"""The Ray runtime on a simulated three-node cluster (ray.cluster_utils.Cluster, loopback only,
GPUs advertised by the nodes and counted by Ray): replicas land where the placement plan
puts them, a run equals the local runtime's, and a layout that cannot fit is refused before
any actor starts.

The lean tests (cluster start, plan, placement groups: ~25 s) run in the CPU suite; those
that start the replicas (DeepSpeed ranks) and run an experiment are marked slow."""

from __future__ import annotations

import time

import pytest

ray = pytest.importorskip("ray")

from ray.util.placement_group import placement_group_table  # noqa: E402

from nabla_dist.engines.spec import PolicySpec, RewardSpec  # noqa: E402
from nabla_dist.experiment.build import build_runtime  # noqa: E402
from nabla_dist.experiment.config import ConfigError, load_config  # noqa: E402
from nabla_dist.experiment.run import Experiment  # noqa: E402
from nabla_dist.runtime.dist_group import replica_placement_group  # noqa: E402
from nabla_dist.runtime.options import RuntimeOptions  # noqa: E402
from nabla_dist.runtime.placement import plan_for  # noqa: E402
from tests.conftest import read_results  # noqa: E402
from tests.runtime.simulated_cluster import simulated_cluster  # noqa: E402

pytestmark = pytest.mark.timeout(900)

# the head has room for every replica; Ray left alone packs replicas there, the plan spreads them
NODES = [dict(num_cpus=2, num_gpus=4), dict(num_cpus=1, num_gpus=1), dict(num_cpus=1, num_gpus=1)]
LAYOUT = dict(kind="ray", policy_replicas=1, tp_size=2, sharding="autotp", reward_replicas=2, reward_tp_size=1,
              gpus_per_actor=1, cpus_per_actor=0.5, max_restarts=1)
METHOD = ["method.max_new_tokens=12", "method.max_iters=4", "method.grad_norm_threshold=null", "wandb.mode=disabled"]


def config(out, *overrides, **runtime):
    return load_config(None, [f"output_dir={out}", *METHOD, *overrides, *(f"runtime.{k}={v}" for k, v in runtime.items())])


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    with simulated_cluster(NODES) as simulated:
        yield simulated
        if ray.is_initialized():
            ray.shutdown()


@pytest.fixture(scope="module")
def runtime(cluster, tmp_path_factory):
    built = build_runtime(config(tmp_path_factory.mktemp("boot"), address=cluster.address, **LAYOUT))
    yield built
    built.shutdown()


def node_of(actor) -> str:
    return ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))


def check_plan(cluster, plan) -> None:
    """By hand: the tp group needs 2 GPUs on one node (only the head has them); each reward
    replica then takes the node it fills exactly, a different one each."""
    assert plan.node_of("policy-0") == cluster.head_node.node_id
    assert {plan.node_of("reward-0"), plan.node_of("reward-1")} == {n.node_id for n in cluster.worker_nodes}


def test_placement_groups_land_on_the_planned_nodes(cluster, tiny_paths):
    if not ray.is_initialized():
        ray.init(address=cluster.address)
    options = RuntimeOptions(**LAYOUT)
    plan = plan_for(PolicySpec(), RewardSpec(), options)
    check_plan(cluster, plan)
    groups = {demand.name: replica_placement_group(demand.ranks, options.cpus_per_actor, options.gpus_per_actor,
                                                   node_id=node.node_id) for demand, node in plan.placed}
    try:
        for name, group in groups.items():
            assert set(placement_group_table(group)["bundles_to_node_id"].values()) == {plan.node_of(name)}, name
    finally:
        for group in groups.values():
            ray.util.remove_placement_group(group)
        deadline = time.monotonic() + 60  # removal is asynchronous: leave the cluster free
        while ray.available_resources().get("GPU", 0) < 6 and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.mark.slow  # starts the replicas (a 2-rank DeepSpeed group): ~45 s on 2 cores
def test_replicas_sit_where_planned_a_tp_group_on_one_node_and_reward_replicas_apart(cluster, runtime):
    plan = runtime.plan
    check_plan(cluster, plan)
    for replica in runtime.policy + runtime.reward:
        bundles = placement_group_table(replica.placement_group)["bundles_to_node_id"]
        assert set(bundles.values()) == {plan.node_of(replica.name)}, replica.name
        assert {node_of(actor) for actor in replica.actors} == {plan.node_of(replica.name)}, replica.name
    assert len(runtime.policy[0].actors) == 2


@pytest.mark.slow
def test_an_experiment_across_three_nodes_equals_the_local_runtime(cluster, runtime, tmp_path):
    cfg = config(tmp_path / "ray", "data.limit=3", address=cluster.address, **LAYOUT)
    Experiment(cfg, runtime=runtime).run()
    Experiment(config(tmp_path / "local", "data.limit=3")).run()
    remote, local = read_results(tmp_path / "ray"), read_results(tmp_path / "local")
    assert len(local) == 3 and all(r["error"] is None and r["response"] for r in local.values())
    assert remote == local


@pytest.mark.parametrize("layout, missing, fits", [
    (dict(tp_size=8, sharding="zero3"), r"policy-0 needs 8 GPUs, 4 CPUs on one node .* but the largest node has 4 GPUs, 2 CPUs",
     r"runtime\.tp_size∈\{1,2,4\}"),
    (dict(reward_replicas=5), "the replicas need 7 GPUs in all but the cluster has 6 GPUs",
     r"runtime\.reward_replicas=4"),
])
def test_a_layout_that_does_not_fit_is_refused_naming_what_is_missing_and_what_fits(
        cluster, tmp_path, layout, missing, fits):
    groups = len(ray.util.placement_group_table()) if ray.is_initialized() else 0  # removed ones stay listed
    with pytest.raises(ConfigError, match=missing) as refused:
        build_runtime(config(tmp_path, address=cluster.address, **{**LAYOUT, **layout}))
    assert refused.match(fits)
    assert len(ray.util.placement_group_table()) == groups  # no placement group, so no rank actor
