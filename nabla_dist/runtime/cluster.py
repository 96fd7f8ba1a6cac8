"""Start or join the Ray cluster that runs the replicas.

`start_ray(None, ...)` starts an embedded single-node Ray bound to 127.0.0.1 that opens no
connection off the machine (laptop, CI, sandboxes without a network). Out of the box, Ray
2.60 binds to the external interface, opens a UDP "connect" to 8.8.8.8 to find its own IP,
probes the cloud metadata service 169.254.169.254 and metadata.google.internal from the
dashboard's usage-stats module (even with usage stats disabled), and writes an auth token
into ~/.ray. What stops each of these (checked with strace, see benchmarks/check_loopback.py):

- `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`: node IP = 127.0.0.1, no 8.8.8.8 probe. Ray reads
  it when `ray` is imported, so an already imported `ray` is patched as well.
- `~/ray_bootstrap_config.yaml` with `provider: {type: local}` in the HOME of Ray's head
  processes: the usage-stats module reads the cloud provider from it instead of probing
  metadata servers. The file lives in a private HOME (`<cache>/nabla_dist/ray_home`) that
  is HOME only while `ray.init` spawns the head processes; the driver's HOME is restored
  right after and workers get the real HOME back through the job's `runtime_env`, so
  neither `~/.cache` lookups nor Ray Tune's "am I on an autoscaler cluster" check (which
  looks for that same file) are affected.
- `RAY_USAGE_STATS_ENABLED=0`, `RAY_AUTH_MODE=disabled` (no token, no ~/.ray/auth_token).
- workers get `GLOO_SOCKET_IFNAME=lo`, so torch.distributed's gloo pairs stay on loopback.

Left: torch's TCPStore (MASTER_ADDR/PORT rendezvous) formats its peer with getnameinfo,
which sends a reverse-DNS query for 127.0.0.1 when /etc/hosts has no `::ffff:127.0.0.1`
entry; no TCP connection leaves the machine.

The embedded cluster's processes die with the driver that started it, even by `kill -9`
(reaper.py: a watchdog process, and a sweep of orphans at the next embedded start).

`start_ray("auto" | "host:port" | "ray://host:port", ...)` joins an existing cluster and
fails within `connect_timeout_s` when nothing listens there (a bare `ray.init` retries for
minutes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from nabla_dist.runtime import reaper

logger = logging.getLogger(__name__)
_watchdog: reaper.Watchdog | None = None  # of the embedded cluster this process started last

LOOPBACK = "127.0.0.1"

# Environment that keeps an embedded Ray on loopback; set before Ray's processes start.
_LOOPBACK_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
}
_BOOTSTRAP_CONFIG = "ray_bootstrap_config.yaml"
_BOOTSTRAP_CONFIG_TEXT = (
    "# Written by nabla_dist: tells Ray's usage stats the provider, so it\n"
    "# does not probe cloud metadata servers.\n"
    "provider: {type: local}\n"
)


@dataclass(frozen=True)
class RaySession:
    """Where the driver is connected: `address` is the GCS address, `node_ip` the driver's node."""

    address: str
    node_ip: str
    started_here: bool  # True when this call started the embedded cluster


def nabla_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/nabla_dist` (default `~/.cache/nabla_dist`), home of Ray's private HOME."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nabla_dist"


def start_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    *,
    connect_timeout_s: float = 5.0,
    env_vars: Mapping[str, str] | None = None,
    object_store_memory: int | None = None,
) -> RaySession:
    """Start an embedded loopback-only Ray (`address=None`) or join one ("auto", "host:port").

    Idempotent: when Ray is already initialized in this process, returns its session and
    ignores the arguments. `env_vars` go to every worker of the job (embedded cluster only;
    a joined cluster's job env is left to the caller). On a machine without a GPU the
    workers also get `DS_ACCELERATOR=cpu` and a stable `TORCH_EXTENSIONS_DIR`.
    """
    import ray

    if ray.is_initialized():
        return _current_session(started_here=False)
    if address is None:
        return _start_embedded(num_cpus, num_gpus, dict(env_vars or {}), object_store_memory)
    if num_cpus is not None or num_gpus is not None:
        logger.warning("num_cpus/num_gpus are ignored when joining the cluster at %s", address)
    return _join(address, connect_timeout_s)


def _current_session(started_here: bool, requested: str = "") -> RaySession:
    import ray

    try:
        address = ray.get_runtime_context().gcs_address
    except Exception:  # a Ray Client (ray://) driver has no GCS address of its own
        address = requested
    return RaySession(address=address, node_ip=ray.util.get_node_ip_address(), started_here=started_here)


def _start_embedded(
    num_cpus: int | None,
    num_gpus: int | None,
    env_vars: dict[str, str],
    object_store_memory: int | None,
) -> RaySession:
    import ray

    from nabla_dist.engines.sharding import deepspeed_env

    os.environ.update(_LOOPBACK_ENV)
    _patch_imported_ray_constants()
    has_gpu = num_gpus > 0 if num_gpus is not None else _has_cuda()
    ds_env = deepspeed_env(has_gpu)
    for key, value in ds_env.items():
        os.environ.setdefault(key, value)

    real_home = os.path.expanduser("~")
    worker_env = {"HOME": real_home, **{k: os.environ[k] for k in ds_env}}
    loopback_interface = _loopback_interface()
    if loopback_interface and "GLOO_SOCKET_IFNAME" not in os.environ:
        # gloo otherwise binds where the hostname resolves, often the external interface.
        worker_env["GLOO_SOCKET_IFNAME"] = loopback_interface
    worker_env.update(env_vars)
    ray_home = nabla_cache_dir() / "ray_home"
    _write_bootstrap_config(ray_home)
    _watch_new_cluster()
    init_kwargs = dict(
        address="local",
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=False,
        object_store_memory=object_store_memory,
        runtime_env={"env_vars": worker_env},
        _node_ip_address=LOOPBACK,
    )
    with _home_set_to(ray_home), _env_set(reaper.ENV, _watchdog.mark):
        try:
            ray.init(**init_kwargs)
        except Exception as error:
            # Ray gives its raylet a fixed 30 s to register; a busy small machine can miss it.
            if "timed out during startup" not in str(error):
                raise
            logger.warning("Ray startup timed out (%s); retrying once", error)
            ray.shutdown()
            ray.init(**init_kwargs)
    session = _current_session(started_here=True)
    if session.node_ip != LOOPBACK:
        ray.shutdown()
        raise RuntimeError(
            f"Ray started on node IP {session.node_ip}, not {LOOPBACK}: "
            f"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 did not take effect in Ray {ray.__version__}; "
            "update nabla_dist/runtime/cluster.py for this Ray version."
        )
    logger.info("Started embedded Ray at %s (loopback only)", session.address)
    return session


def _join(address: str, connect_timeout_s: float) -> RaySession:
    import ray

    target = _resolve_address(address)
    if target is None:
        raise ConnectionError(
            f"No running Ray cluster found for address={address!r} (RAY_ADDRESS is unset and "
            "no `ray start` cluster is recorded on this machine). Start one with "
            "`ray start --head`, pass its host:port, or pass address=None for an embedded cluster."
        )
    host, port = _split_host_port(target, address)
    if _is_loopback(host):
        # Keeps Ray from rewriting 127.0.0.1 into the external IP, where nothing listens.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        _patch_imported_ray_constants()
    try:
        with socket.create_connection((host, port), timeout=connect_timeout_s):
            pass
    except OSError as error:
        raise ConnectionError(
            f"Cannot reach the Ray cluster at {address!r} ({host}:{port}): {error}. "
            "Check that its head node runs (`ray status --address HOST:PORT` on that machine), "
            "that the port is the GCS port (default 6379) or the Ray Client port (10001, "
            "with ray://), and that no firewall blocks it; or pass address=None to start an "
            "embedded cluster."
        ) from error
    ray.init(address=target)
    session = _current_session(started_here=False, requested=target)
    logger.info("Joined Ray cluster at %s", session.address)
    return session


def _resolve_address(address: str) -> str | None:
    """"auto" -> RAY_ADDRESS or the cluster recorded by `ray start`; other values unchanged."""
    if address != "auto":
        return address
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    from ray._private.utils import read_ray_address

    return read_ray_address(None)


def _split_host_port(target: str, address: str) -> tuple[str, int]:
    hostport = target.removeprefix("ray://").rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(
            f"Ray address {address!r} is not 'auto', 'host:port' or 'ray://host:port'; "
            "pass e.g. '10.0.0.5:6379', or None to start an embedded cluster."
        )
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _patch_imported_ray_constants() -> None:
    # ray_constants reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER at import; the driver may have
    # imported ray before us. Processes Ray spawns read it from the environment.
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] != "0"


def _write_bootstrap_config(ray_home: Path) -> None:
    ray_home.mkdir(parents=True, exist_ok=True)
    path = ray_home / _BOOTSTRAP_CONFIG
    if not path.exists() or path.read_text() != _BOOTSTRAP_CONFIG_TEXT:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(_BOOTSTRAP_CONFIG_TEXT)
        os.replace(tmp, path)


def _watch_new_cluster() -> None:
    """Kill what killed drivers left, then mark the cluster about to start and watch it."""
    global _watchdog
    orphans = reaper.kill_marked(orphans_only=True)
    if orphans:
        logger.warning("killed %d Ray processes left by a driver that was killed: %s", len(orphans), orphans)
    if _watchdog is not None:  # the previous embedded cluster of this process is shut down
        _watchdog.stop()
    _watchdog = reaper.Watchdog(reaper.new_mark())


@contextlib.contextmanager
def _env_set(key: str, value: str) -> Iterator[None]:
    """`key` in the environment only while Ray's processes are spawned (they keep it; later
    children of the driver do not get it)."""
    os.environ[key] = value
    try:
        yield
    finally:
        os.environ.pop(key, None)


@contextlib.contextmanager
def _home_set_to(home: Path) -> Iterator[None]:
    # Ray's head processes inherit the environment at spawn time and only then read HOME.
    old_home = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    try:
        yield
    finally:
        if old_home is None:
            del os.environ["HOME"]
        else:
            os.environ["HOME"] = old_home


def _loopback_interface() -> str | None:
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return None
    return next((name for name in names if name in ("lo", "lo0")), None)


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()
