"""Submit an experiment or a sweep as a Ray job to a running cluster, and follow its logs.

    python launch/submit.py --address http://127.0.0.1:8265 --output-dir /shared/runs/math500 \\
        run paper/math500 data.limit=100
    python launch/submit.py --address http://127.0.0.1:8265 --output-dir /shared/sweeps/model_size \\
        sweep model_size sweep.parallel=2

The job runs `python -m nabla_dist run|sweep NAME OVERRIDES runtime.kind=ray runtime.address=auto`
on the cluster's head node. `--address` is the Ray dashboard, which the cluster files bind to
the head's 127.0.0.1: reach it through a port-forward (`ray dashboard cluster/autoscaler.yaml`,
`kubectl port-forward`, `ssh -L 8265:127.0.0.1:8265 HEAD`).

Where results go. The job's working directory is a temporary copy on the head node that Ray
deletes, so a relative output directory would vanish with it. The run's `output_dir` (a
sweep's `sweep.output_dir`) must be an absolute path on storage the head node writes and
keeps: a shared file system or a mounted volume that every node sees (NFS, Lustre, EFS, a
Kubernetes PersistentVolumeClaim). It is, in this order: `--output-dir`; an `output_dir=`
(`sweep.output_dir=`) override; the experiment's own value when absolute; or the experiment's
relative value under `--output-root` / `$NABLA_DIST_OUTPUT_ROOT`. Anything else is refused
before submitting. Before the job, a probe job on the head checks that the directory can be
written (`--no-probe` skips it).

The W&B key. Ray writes a job's runtime environment, environment variables included, in
plain text to `runtime_env_agent.log` on every node the job touches (Ray 2.60), so this
script never sends WANDB_API_KEY (nor anything else secret) with the job. The driver reads
it from the head node's own environment, set where the cluster starts: a Kubernetes Secret
in the head pod (cluster/rayjob.yaml), the batch job's environment (cluster/slurm.sbatch),
a secrets-manager lookup in the head's start command (cluster/autoscaler.yaml). With
`wandb.mode=online` the probe job checks that the head has the key, without reading it.

`--working-dir` (default: this checkout) ships code to the job and its actors, which then
import it instead of the image's installed package; `--working-dir ''` uses what the image
has installed (cluster/Dockerfile).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import time
from pathlib import Path, PurePosixPath

REPO = Path(__file__).resolve().parents[1]
OUTPUT_ROOT_ENV = "NABLA_DIST_OUTPUT_ROOT"
SECRET_ENV = "WANDB_API_KEY"
EXCLUDES = ["runs/", ".venv/", ".git/", "wandb/", "build/", "*.egg-info/", ".netrc", "__pycache__/"]
SET_HERE = ("runtime.kind=", "runtime.address=")


class SubmitError(ValueError):
    pass


def output_key(command: str) -> str:
    return "sweep.output_dir" if command == "sweep" else "output_dir"


def read_config(command: str, name: str, overrides: list[str]) -> tuple[str, str]:
    """(output directory, wandb.mode) of the experiment or sweep with `overrides`, read and
    validated here, so a bad name or key fails before anything is submitted."""
    from nabla_dist.experiment.config import ConfigError, load_config
    from nabla_dist.experiment.sweep import load_sweep

    try:
        if command == "sweep":
            sweep = load_sweep(name, overrides)
            return str(sweep.output_dir), sweep.points[0].cfg.wandb.mode
        cfg = load_config(name, overrides)
        return cfg.output_dir, cfg.wandb.mode
    except (ConfigError, FileNotFoundError) as error:
        raise SubmitError(f"{command} {name}: {error}") from error


def resolve_output_dir(command: str, configured: str, output_dir: str | None = None,
                       output_root: str | None = None) -> str:
    """The job's absolute output directory: `output_dir` (--output-dir) if given, else the
    config's (overrides included) when absolute, else the config's under `output_root` /
    $NABLA_DIST_OUTPUT_ROOT; a relative directory with no root is refused."""
    key = output_key(command)
    chosen = output_dir or configured
    if PurePosixPath(chosen).is_absolute():
        return chosen
    root = output_root or os.environ.get(OUTPUT_ROOT_ENV)
    if not root or not PurePosixPath(root).is_absolute():
        raise SubmitError(
            f"{key}={chosen!r} is relative: on the cluster it would land in the job's temporary working "
            f"directory on the head node and vanish with it. Pass --output-dir with an absolute path on "
            f"storage every node sees (a shared file system or mounted volume), or --output-root / "
            f"${OUTPUT_ROOT_ENV}=/shared/path to put {chosen!r} under it")
    return str(PurePosixPath(root) / chosen)


def entrypoint(command: str, name: str, overrides: list[str], output_dir: str) -> str:
    return shlex.join(["python", "-m", "nabla_dist", command, name, *overrides, f"{output_key(command)}={output_dir}",
                       "runtime.kind=ray", "runtime.address=auto"])


def probe_entrypoint(output_dir: str, need: tuple[str, ...]) -> str:
    """A command for the head node: can it write `output_dir`, which of `need` are in its
    environment (yes/no only: no value leaves the process)."""
    script = (
        "import json, os, pathlib, sys, uuid\n"
        "out = pathlib.Path(sys.argv[1]); report = {'env': {k: bool(os.environ.get(k)) for k in sys.argv[2:]}}\n"
        "try:\n"
        "    out.mkdir(parents=True, exist_ok=True); f = out / f'.submit-probe-{uuid.uuid4().hex}'\n"
        "    f.write_text('ok'); f.unlink(); report['writable'] = True\n"
        "except OSError as e:\n"
        "    report['writable'] = False; report['error'] = str(e)\n"
        "print('NABLA_PROBE ' + json.dumps(report))\n"
    )
    return shlex.join(["python", "-c", script, output_dir, *need])


def submit_job(client, timeout_s: float = 120.0, **job) -> str:
    """`client.submit_job(**job)`, retried while the head's job agent is still starting (a
    cluster that just came up answers "No available agent to submit job")."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as error:
            if "No available agent" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def wait(client, job_id: str, timeout_s: float) -> str:
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout_s
    while (status := client.get_job_status(job_id)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            raise SubmitError(f"the probe job {job_id} did not finish in {timeout_s:.0f} s (status {status})")
        time.sleep(0.5)
    return status


def probe(client, output_dir: str, online: bool, timeout_s: float = 120.0) -> None:
    """Refuse a head that cannot write `output_dir`, or lacks the W&B key for an online run."""
    need = (SECRET_ENV,) if online else ()
    job_id = submit_job(client, entrypoint=probe_entrypoint(output_dir, need))
    wait(client, job_id, timeout_s)
    logs = client.get_job_logs(job_id)
    line = next((l for l in logs.splitlines() if l.startswith("NABLA_PROBE ")), None)
    if line is None:
        raise SubmitError(f"the probe job {job_id} failed on the head node:\n{logs[-2000:]}")
    report = json.loads(line[len("NABLA_PROBE "):])
    if not report["writable"]:
        raise SubmitError(f"the head node cannot write {output_dir} ({report.get('error')}): mount shared storage "
                          "there on every node, or choose another --output-dir")
    if online and not report["env"][SECRET_ENV]:
        raise SubmitError(
            f"wandb.mode=online but the head node has no {SECRET_ENV} in its environment; this script does not "
            "send it (Ray would write it to its logs): give it to the head where the cluster starts (README, "
            "'Running on a cluster'), or run with wandb.mode=offline and `wandb sync` later")


async def follow(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def parse(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS"),
                        help="Ray dashboard address, e.g. http://127.0.0.1:8265 (default: $RAY_API_SERVER_ADDRESS)")
    parser.add_argument("--output-dir", help="absolute path on shared storage for results (a sweep's sweep.output_dir)")
    parser.add_argument("--output-root", help=f"put a relative output_dir under this absolute path "
                        f"(default: ${OUTPUT_ROOT_ENV})")
    parser.add_argument("--working-dir", default=str(REPO), help="code shipped to the job ('' = the image's install)")
    parser.add_argument("--no-probe", action="store_true", help="skip the probe job on the head node")
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return")
    parser.add_argument("--gpus", type=float, default=0, help="GPUs for the driver process (usually 0)")
    parser.add_argument("command", choices=("run", "sweep"), help="one experiment, or a sweep of them")
    parser.add_argument("name", help="a packaged experiment / sweep name, or a YAML path inside the working dir")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.limit=100")
    args = parser.parse_args(argv)
    if not args.address:
        parser.error("--address is required (or set RAY_API_SERVER_ADDRESS)")
    if any(o.startswith(SET_HERE) for o in args.overrides):
        parser.error("runtime.kind and runtime.address are set by submit.py (ray, auto); drop them")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from ray.job_submission import JobStatus, JobSubmissionClient

    key = output_key(args.command)
    overrides = [o for o in args.overrides if not o.startswith(f"{key}=")]  # submit.py sets it, resolved
    try:
        configured, mode = read_config(args.command, args.name, args.overrides)
        output_dir = resolve_output_dir(args.command, configured, args.output_dir, args.output_root)
        online = mode == "online"
        client = JobSubmissionClient(args.address)
        if not args.no_probe:
            probe(client, output_dir, online)
    except SubmitError as error:
        print(f"submit.py: error: {error}", file=sys.stderr)
        return 2
    runtime_env = {"working_dir": args.working_dir, "excludes": EXCLUDES} if args.working_dir else None
    job_id = submit_job(client, entrypoint=entrypoint(args.command, args.name, overrides, output_dir),
                        runtime_env=runtime_env, entrypoint_num_gpus=args.gpus or None)
    print(f"submitted {job_id} to {args.address}; results in {output_dir}", file=sys.stderr)
    if args.no_wait:
        print(job_id)
        return 0
    asyncio.run(follow(client, job_id))
    status = client.get_job_status(job_id)
    print(f"{job_id}: {status}; results in {output_dir}", file=sys.stderr)
    return 0 if status == JobStatus.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
