"""Check that the embedded Ray (nabla_dist.runtime.cluster.start_ray) connects only to loopback.

Runs a small job under `strace -f -e trace=connect` (all of Ray's processes included) and
prints every connect() to an address that is neither 127.0.0.0/8, ::1 nor a unix socket.

    python benchmarks/check_loopback.py                  # start Ray, one actor round trip
    python benchmarks/check_loopback.py --with-deepspeed # plus a 2-rank AutoTP group (gloo)

With --with-deepspeed, expect DNS queries (port 53): torch's TCPStore rendezvous formats
its peer address with getnameinfo, a reverse lookup of 127.0.0.1 that goes to the resolver
when /etc/hosts lacks `::ffff:127.0.0.1`. No TCP connection leaves the machine.

Exit status: 0 when none were found, 1 otherwise, 2 when strace is missing
(`apt-get install -y strace`). Not a pytest test: it needs strace and ptrace rights.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

JOB = r'''
import os, sys
import ray
from nabla_dist.runtime.cluster import start_ray

session = start_ray(None, num_cpus=2)

@ray.remote(num_cpus=0.5)
class Echo:
    def ping(self, x):
        return x + 1, ray.util.get_node_ip_address()

echo = Echo.remote()
assert ray.get(echo.ping.remote(1), timeout=120) == (2, "127.0.0.1")

if "--with-deepspeed" in sys.argv:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from nabla_dist.engines.sharding import shard_model
    from nabla_dist.runtime.dist_group import RankWorker, create_rank_actors, replica_placement_group

    class Rank(RankWorker):
        def grad_norm(self):
            torch.manual_seed(0)
            model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=128))
            module = shard_model(model, "autotp", 2)
            embeds = torch.randn(1, 5, 64, requires_grad=True)
            (grad,) = torch.autograd.grad(module(inputs_embeds=embeds).logits.sum(), embeds)
            return grad.norm().item()

    pg = replica_placement_group(2, cpus_per_actor=0.5)
    ranks = create_rank_actors(Rank, pg, cpus_per_actor=0.5)
    print("autotp grad norms", ray.get([r.grad_norm.remote() for r in ranks], timeout=600))

print("job ok, node ip", session.node_ip)
ray.shutdown()
'''

# connect(5, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.0.0.1")}, 16)
# connect(7, {sa_family=AF_INET6, sin6_port=htons(80), sin6_flowinfo=..., inet_pton(AF_INET6, "::1", ...
_INET = re.compile(r'sin_port=htons\((\d+)\), sin_addr=inet_addr\("([^"]+)"\)')
_INET6 = re.compile(r'sin6_port=htons\((\d+)\).*?inet_pton\(AF_INET6, "([^"]+)"')


def is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip in ("::1", "0.0.0.0", "::") or ip.startswith("::ffff:127.")


def outside_connects(trace: str) -> Counter[str]:
    """`ip:port` -> count, for every connect() in `trace` to a non-loopback inet address."""
    found: Counter[str] = Counter()
    for line in trace.splitlines():
        if "connect(" not in line or "AF_UNIX" in line or "AF_UNSPEC" in line:
            continue
        match = _INET.search(line) or _INET6.search(line)
        if match and not is_loopback(match.group(2)):
            found[f"{match.group(2)}:{match.group(1)}"] += 1
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--with-deepspeed", action="store_true", help="also run a 2-rank AutoTP group")
    parser.add_argument("--keep-trace", type=Path, help="copy the raw strace output here")
    args = parser.parse_args()
    if shutil.which("strace") is None:
        print("strace not found: apt-get install -y strace", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        trace_path = Path(tmp) / "connect.trace"
        command = ["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(trace_path),
                   sys.executable, "-c", JOB]
        if args.with_deepspeed:
            command.append("--with-deepspeed")
        job = subprocess.run(command, capture_output=True, text=True)
        trace = trace_path.read_text()
        if args.keep_trace:
            args.keep_trace.write_text(trace)
    print(job.stdout.strip())
    if job.returncode != 0:
        print(job.stderr[-4000:], file=sys.stderr)
        print(f"job failed with exit status {job.returncode}", file=sys.stderr)
        return 1
    connects = [line for line in trace.splitlines() if "connect(" in line]
    inet = [line for line in connects if "AF_INET" in line]
    found = outside_connects(trace)
    print(f"connect() calls: {len(connects)} ({len(inet)} inet, the rest unix)")
    print(f"non-loopback connects: {sum(found.values())}")
    for address, count in found.most_common():
        note = "  (DNS query)" if address.endswith(":53") else ""
        print(f"  {address}  x{count}{note}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
