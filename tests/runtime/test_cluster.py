"""The embedded Ray stays on loopback, joins fail fast, a replica's ranks get their env.

That no connection leaves 127.0.0.1 needs strace: benchmarks/check_loopback.py.
"""

from __future__ import annotations

import os
import time

import pytest
import ray

from nabla_dist.runtime.cluster import LOOPBACK, start_ray
from nabla_dist.runtime.dist_group import RankWorker, create_rank_actors, replica_placement_group


def test_join_of_unreachable_address_fails_fast_naming_it(monkeypatch):
    if ray.is_initialized():
        pytest.skip("Ray is already initialized in this process: start_ray would return it")
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=r"'127\.0\.0\.1:1'.*address=None"):
        start_ray("127.0.0.1:1", connect_timeout_s=2.0)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    with pytest.raises(ConnectionError, match=r"'auto' \(127\.0\.0\.1:1\)"):
        start_ray("auto", connect_timeout_s=2.0)
    assert time.monotonic() - started < 10
    assert not ray.is_initialized()


def test_malformed_address_is_rejected():
    if ray.is_initialized():
        pytest.skip("Ray is already initialized in this process: start_ray would return it")
    with pytest.raises(ValueError, match="'headnode'.*host:port"):
        start_ray("headnode")


@pytest.fixture(scope="module")
def ray_session():
    home = os.environ["HOME"]
    session = start_ray(None, num_cpus=2)
    assert os.environ["HOME"] == home  # the private Ray HOME is not left in the driver
    yield session
    if session.started_here:
        ray.shutdown()


@ray.remote(num_cpus=0.5)
class Echo:
    def where(self) -> dict[str, str]:
        return {
            "node_ip": ray.util.get_node_ip_address(),
            "home": os.environ.get("HOME", ""),
            "ds_accelerator": os.environ.get("DS_ACCELERATOR", ""),
        }


def test_embedded_ray_runs_on_loopback_with_actor_round_trip(ray_session):
    assert ray_session.node_ip == LOOPBACK
    assert ray_session.address.startswith(f"{LOOPBACK}:")
    assert ray.nodes()[0]["NodeManagerAddress"] == LOOPBACK
    echo = Echo.remote()
    where = ray.get(echo.where.remote(), timeout=60)
    ray.kill(echo)
    assert where["node_ip"] == LOOPBACK
    assert where["home"] == os.environ["HOME"]  # workers see the real HOME, not Ray's private one
    assert where["ds_accelerator"] == "cpu"


def test_start_ray_is_idempotent(ray_session):
    again = start_ray(None, num_cpus=1)
    assert again.address == ray_session.address
    assert not again.started_here


class EnvRank(RankWorker):
    def env(self) -> dict[str, str]:
        keys = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE")
        return {key: os.environ[key] for key in keys}


def test_rank_actors_get_distributed_env_on_one_node(ray_session):
    pg = replica_placement_group(2, cpus_per_actor=0.5)
    ranks = create_rank_actors(EnvRank, pg, cpus_per_actor=0.5)
    try:
        envs = ray.get([rank.env.remote() for rank in ranks], timeout=60)
    finally:
        for rank in ranks:
            ray.kill(rank)
        ray.util.remove_placement_group(pg)
    assert [env["RANK"] for env in envs] == ["0", "1"]
    assert [env["LOCAL_RANK"] for env in envs] == ["0", "1"]
    assert {env["MASTER_ADDR"] for env in envs} == {LOOPBACK}
    assert len({env["MASTER_PORT"] for env in envs}) == 1
    assert {(env["WORLD_SIZE"], env["LOCAL_SIZE"]) for env in envs} == {("2", "2")}


def test_placement_group_that_cannot_fit_names_the_missing_resources(ray_session):
    with pytest.raises(TimeoutError, match=r"2 x \{'CPU': 8\.0\}.*Lower tp_size"):
        replica_placement_group(2, cpus_per_actor=8, ready_timeout_s=1)
