"""One prepared GPU check: random models of Qwen2.5-1.5B / 7B shape, bf16, one NVIDIA GPU.

Figures, written to one JSON file (--out):
- gradient agreement: vocabulary-space ∂L/∂y from bf16 weights against fp32 (relative
  error, cosine), policy and reward terms together;
- forward+backward to the input embeddings: tokens/s and MFU (FLOPs ≈ 4·params·tokens:
  a forward and an activation-only backward, parameters frozen);
- rollouts: generated tokens/s for a batch of 16;
- ∇-Reasoner against Best-of-N@8: problems/min on the same problems.
Needs torch and transformers; the package is imported from the working tree. No network.

    python benchmarks/gpu/gpu_check.py --out figures.json                  # on the GPU
    python benchmarks/gpu/gpu_check.py --device cpu --shapes tiny --out x.json   # smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nabla_dist.algorithm.baselines import SampleConfig, best_of_n  # noqa: E402
from nabla_dist.algorithm.nabla import NablaConfig, NablaReasoner  # noqa: E402
from nabla_dist.algorithm.requests import PolicyGrad, RewardGrad, Rollout, SamplingParams  # noqa: E402
from nabla_dist.engines.policy import PolicyEngine  # noqa: E402
from nabla_dist.engines.reward import RewardEngine  # noqa: E402
from nabla_dist.engines.spec import PolicySpec, RewardSpec  # noqa: E402
from nabla_dist.engines.tiny import build_tokenizer, random_model  # noqa: E402
from nabla_dist.runtime.local import LocalRuntime  # noqa: E402
from nabla_dist.runtime.options import RuntimeOptions  # noqa: E402

QUESTION = "Compute ((17 + 25) * 3 - 48) / 6 and explain each step."


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def engines(shape, tokenizer, device, dtype):
    policy = PolicyEngine(random_model(shape, tokenizer, seed=0, dtype=dtype), tokenizer, PolicySpec(), device)
    reward = RewardEngine(random_model(shape, tokenizer, reward=True, seed=1, dtype=dtype), tokenizer, tokenizer,
                          RewardSpec(), device, policy_vocab_size=policy.embeddings.shape[0])
    policy.set_reward_embeddings(reward.aligned)
    return policy, reward


def vocab_grad(policy, reward, ids, start):
    (rg,) = reward.grad([RewardGrad(QUESTION, ids[start:], 0)])
    (pg,) = policy.grad([PolicyGrad(ids, start, list(range(len(ids) - start)), 1e-3, 1.0, rg.embedding_grad)])
    return pg.grads


def gradient_agreement(shape, tokenizer, device) -> dict:
    fp32 = engines(shape, tokenizer, device, torch.float32)
    prompt = fp32[0].prompts.encode(QUESTION).ids
    ids = prompt + torch.randint(3, len(tokenizer), (64,), generator=torch.Generator().manual_seed(0)).tolist()
    reference = vocab_grad(*fp32, ids, len(prompt))
    for engine in fp32:
        engine.model.to(torch.bfloat16)
        engine.prefix_cache.clear()  # its keys/values were computed in fp32
    fp32[0].set_reward_embeddings(fp32[1].aligned_embeddings(tokenizer, fp32[0].embeddings.shape[0]))
    half = vocab_grad(*fp32, ids, len(prompt))
    del fp32
    return {
        "relative_error": float((half - reference).norm() / reference.norm()),
        "cosine": float(torch.nn.functional.cosine_similarity(half.flatten(), reference.flatten(), dim=0)),
    }


def grad_throughput(policy, batch, length, peak_tflops, device) -> dict:
    params = sum(p.numel() for p in policy.model.parameters())
    requests = [
        PolicyGrad(torch.randint(3, 300, (length,), generator=torch.Generator().manual_seed(b)).tolist(),
                   length // 2, [0], 1e-3, 0.0)
        for b in range(batch)
    ]
    policy.grad(requests[:1])  # warm-up
    synchronize(device)
    start = time.perf_counter()
    repeats = 3
    for _ in range(repeats):
        policy.grad(requests)
    synchronize(device)
    wall = (time.perf_counter() - start) / repeats
    tokens = batch * length
    flops = 4 * params * tokens / wall
    return {"tokens_per_s": tokens / wall, "tflops": flops / 1e12, "mfu": flops / (peak_tflops * 1e12),
            "batch": batch, "length": length, "params": params}


def rollout_throughput(policy, batch, new_tokens, device) -> dict:
    prompt = policy.prompts.encode(QUESTION).ids
    requests = [Rollout(prompt, new_tokens, SamplingParams(0.6, 0.95), seed=b) for b in range(batch)]
    policy.rollout(requests[:1])
    synchronize(device)
    start = time.perf_counter()
    results = policy.rollout(requests)
    synchronize(device)
    wall = time.perf_counter() - start
    generated = sum(len(r.tokens) for r in results)
    return {"tokens_per_s": generated / wall, "batch": batch, "generated": generated}


def methods(policy, reward, problems, new_tokens, in_flight) -> dict:
    runtime = LocalRuntime(policy, reward, RuntimeOptions(max_batch_size=in_flight))
    prompts = [runtime.prompts.encode(f"Compute {i} + {2 * i} step by step.") for i in range(problems)]
    out = {}
    factories = {
        "nabla": lambda p, s: NablaReasoner(p, NablaConfig(max_new_tokens=new_tokens, grad_norm_threshold=1e-9,
                                                           max_iters=20), s).run(),
        "best_of_n": lambda p, s: best_of_n(p, SampleConfig(n=8, max_new_tokens=new_tokens), s),
    }
    for name, factory in factories.items():
        done = {}
        start = time.perf_counter()
        runtime.run(((i, factory(p, i)) for i, p in enumerate(prompts)), lambda k, o, e: done.__setitem__(k, o),
                    max_in_flight=in_flight)
        wall = time.perf_counter() - start
        out[name] = {"problems_per_min": 60 * problems / wall, "wall_s": wall,
                     "model_calls_per_problem": sum(o.count.model_calls for o in done.values()) / problems}
    out["wall_ratio_nabla_over_bon"] = out["best_of_n"]["problems_per_min"] / out["nabla"]["problems_per_min"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shapes", default="qwen2.5-1.5b,qwen2.5-7b")
    parser.add_argument("--out", default="gpu_figures.json")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    tokenizer = build_tokenizer(vocab_size=400, seed=0)
    figures = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
               "torch": torch.__version__}
    for shape in args.shapes.split(","):
        entry = {}
        figures[shape] = entry
        entry["gradient_bf16_vs_fp32"] = gradient_agreement(shape, tokenizer, args.device)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        policy, reward = engines(shape, tokenizer, args.device, torch.bfloat16)
        long = 1024 if args.device.startswith("cuda") else 64
        entry["forward_backward"] = grad_throughput(policy, 8, long, args.peak_tflops, args.device)
        entry["rollout"] = rollout_throughput(policy, 16, args.new_tokens, args.device)
        entry["methods"] = methods(policy, reward, args.problems, args.new_tokens, 16)
        Path(args.out).write_text(json.dumps(figures, indent=2))  # keep what is done if a later shape fails
        print(shape, json.dumps(entry), flush=True)
        del policy, reward
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
