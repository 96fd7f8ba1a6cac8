"""The processes of an embedded Ray cluster die with the driver that started them.

Ray's head processes (GCS, raylet, agents) and its workers are started by the driver and
outlive it when it is killed: after `kill -9` of a driver, `ray::DashboardAgent` and
`ray::RuntimeEnvAgent` were still alive 15 s later. So:

- Every embedded cluster is marked: its processes inherit `NABLA_DIST_RAY_OWNER=<driver
  pid>:<driver start time>:<random>` from the environment `ray.init` spawns them with (the
  raylet passes it on to every worker and agent). The mark is in /proc/<pid>/environ.
- A watchdog process (`python -m nabla_dist.runtime.reaper <mark>`, its own session, so a
  Ctrl-C or a kill of the driver's process group leaves it) blocks reading a pipe only the
  driver holds open. When the driver exits, however it exits, the read returns and the
  watchdog kills every process that carries the mark.
- The next embedded start also kills marked processes whose driver is gone (the watchdog
  itself may have been killed), and only those: a mark whose driver still runs is left alone.

Linux only (/proc); elsewhere both are no-ops.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

ENV = "NABLA_DIST_RAY_OWNER"
_PROC = Path("/proc")


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22 of /proc/<pid>/stat): with the pid,
    it names one process, even after the pid is reused."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def new_mark() -> str:
    """A mark for a cluster this process (the driver) is about to start."""
    return f"{os.getpid()}:{_start_time(os.getpid())}:{uuid.uuid4().hex[:12]}"


def marked_processes(mark: str | None = None) -> dict[int, str]:
    """pid -> mark of every process we may read whose environment carries a mark (`mark`:
    only that one)."""
    found = {}
    prefix = f"{ENV}=".encode()
    if not _PROC.is_dir():
        return found
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or another user's
            continue
        for item in environ.split(b"\0"):
            if item.startswith(prefix):
                value = item[len(prefix):].decode(errors="replace")
                if mark is None or value == mark:
                    found[int(entry.name)] = value
                break
    return found


def _owner_alive(mark: str) -> bool:
    pid, _, rest = mark.partition(":")
    started = rest.partition(":")[0]
    return pid.isdigit() and _start_time(int(pid)) == started


def kill_marked(mark: str | None = None, orphans_only: bool = False, passes: int = 5) -> list[int]:
    """SIGKILL the processes carrying `mark` (None: any mark); `orphans_only`: only those whose
    driver is gone. A few passes, since a dying raylet may still spawn a worker."""
    killed: list[int] = []
    for _ in range(passes):
        victims = [pid for pid, found in marked_processes(mark).items()
                   if not (orphans_only and _owner_alive(found))]
        if not victims:
            break
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                pass
        time.sleep(0.2)
    return killed


class Watchdog:
    """Kills the marked processes once this driver is gone (see the module docstring)."""

    def __init__(self, mark: str):
        self.mark = mark
        env = {k: v for k, v in os.environ.items() if k != ENV}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "nabla_dist.runtime.reaper", mark],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=env, start_new_session=True, close_fds=True,
        )

    def stop(self) -> None:
        """Done with this cluster: the watchdog sweeps what is left of it and exits."""
        if self._process.stdin is not None and not self._process.stdin.closed:
            self._process.stdin.close()


def _watch(mark: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the driver's to handle
    try:
        while sys.stdin.buffer.read(4096):
            pass
    finally:
        kill_marked(mark)


if __name__ == "__main__":
    _watch(sys.argv[1])
