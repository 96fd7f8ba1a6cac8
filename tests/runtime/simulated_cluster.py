"""A multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`), loopback only.

Each node is its own raylet with its own resources. Nodes advertise GPUs they do not have:
Ray's GPU resource is a count it schedules by (an actor asking for one gets a
CUDA_VISIBLE_DEVICES that CPU torch ignores), so GPU layouts are placed on CPU exactly as
on a GPU cluster. The processes start with the embedded cluster's loopback guarantees
(runtime/cluster.py): node IP 127.0.0.1, usage stats off, the private HOME holding
`provider: {type: local}` while head processes spawn; workers get the real HOME, DeepSpeed's
CPU environment, gloo on loopback, and this interpreter's bin/ first on PATH (a job's
`python` is this venv's).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from nabla_dist.engines.sharding import deepspeed_env
from nabla_dist.runtime import cluster as loopback
from nabla_dist.runtime.dist_group import free_port as loopback_free_port


def free_port() -> int:
    return loopback_free_port(loopback.LOOPBACK)


def worker_env() -> dict[str, str]:
    env = {"HOME": os.path.expanduser("~"), **deepspeed_env(False),
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    interface = loopback._loopback_interface()
    if interface:
        env["GLOO_SOCKET_IFNAME"] = interface
    return env


@contextlib.contextmanager
def simulated_cluster(nodes: list[dict], env: dict | None = None, **head_args) -> Iterator:
    """A cluster of `nodes` (each: num_cpus, num_gpus, …; the first is the head, which also
    takes `head_args`, e.g. include_dashboard), shut down on exit. `env`: more environment
    for every node's processes (what a cluster file would set)."""
    from ray.cluster_utils import Cluster

    os.environ.update(loopback._LOOPBACK_ENV)
    loopback._patch_imported_ray_constants()
    home = loopback.nabla_cache_dir() / "ray_home"
    loopback._write_bootstrap_config(home)
    common = dict(node_ip_address=loopback.LOOPBACK, env_vars={**worker_env(), **(env or {})})
    # The head's dashboard agent would take Ray's fixed default port, which another Ray on this
    # machine may hold (the job server then has "no available agent"); worker nodes get a free one.
    head = dict(include_dashboard=False, dashboard_agent_listen_port=free_port())
    with loopback._home_set_to(home):
        cluster = Cluster(initialize_head=True, head_node_args={**common, **head, **nodes[0], **head_args})
        try:
            for node in nodes[1:]:
                cluster.add_node(**common, **node)
        except BaseException:
            cluster.shutdown()
            raise
    try:
        yield cluster
    finally:
        cluster.shutdown()
