"""Submit one experiment as a Ray job to a running cluster and follow its logs.

    python launch/submit.py --address http://HEAD:8265 default data.limit=100 runtime.policy_replicas=4

The job runs `python -m nabla_dist run EXPERIMENT OVERRIDES runtime.kind=ray runtime.address=auto`
on the cluster. `--working-dir` ships this checkout, which Ray puts on the job's and the
actors' PYTHONPATH; the cluster image must already have the dependencies (pyproject.toml).
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from pathlib import Path

from ray.job_submission import JobStatus, JobSubmissionClient

REPO = Path(__file__).resolve().parents[1]


def entrypoint(experiment: str, overrides: list[str]) -> str:
    return shlex.join(["python", "-m", "nabla_dist", "run", experiment, *overrides,
                       "runtime.kind=ray", "runtime.address=auto"])


async def follow(client: JobSubmissionClient, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://10.0.0.1:8265")
    parser.add_argument("--working-dir", default=str(REPO), help="directory shipped to the cluster ('' = none)")
    parser.add_argument("--no-wait", action="store_true", help="print the job id and return")
    parser.add_argument("--gpus", type=float, default=0, help="GPUs for the driver process (usually 0)")
    parser.add_argument("experiment", help="name under configs/ or a YAML path inside the working dir")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.limit=100")
    args = parser.parse_args(argv)
    if any(o.startswith(("runtime.kind=", "runtime.address=")) for o in args.overrides):
        parser.error("runtime.kind and runtime.address are set by submit.py (ray, auto); drop them")

    client = JobSubmissionClient(args.address)
    runtime_env = {"working_dir": args.working_dir, "excludes": ["runs/", ".venv/", ".git/"]} if args.working_dir else None
    job_id = client.submit_job(
        entrypoint=entrypoint(args.experiment, args.overrides),
        runtime_env=runtime_env,
        entrypoint_num_gpus=args.gpus or None,
    )
    print(f"submitted {job_id} to {args.address}", file=sys.stderr)
    if args.no_wait:
        print(job_id)
        return 0
    asyncio.run(follow(client, job_id))
    status = client.get_job_status(job_id)
    print(f"{job_id}: {status}", file=sys.stderr)
    return 0 if status == JobStatus.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
