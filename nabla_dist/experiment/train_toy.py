"""Training the toy policy and outcome reward model on CPU (`nabla-dist train-toy`).

The recipe, as plain functions that `train_toy` runs in order:

1. `build_tokenizer`: byte-level BPE over toy texts, one token per digit, ChatML template.
2. `train_policy`: supervised fine-tuning of a small Llama on the reference solutions of
   train-split problems (loss on the response and its EOS only), one pass. The policy is
   right on about half of the held-out problems and its samples differ: pass@8 is well above
   greedy, so Best-of-N and ∇-Reasoner have room.
3. `sample_responses`: the policy's own samples on other train problems, at several
   temperatures, each graded right or wrong by `grading.grade`.
4. `train_reward`: a sequence classifier (num_labels=1, one layer deeper than the policy)
   reading the conversation exactly as `RewardEngine` builds it (prefix(question) ‖ response
   ids ‖ postfix, left padded), trained with process labels and auxiliary checks on
   reference solutions, near-miss corruptions of them and the policy's samples
   (`toy_reward.py` says how and why).
5. `evaluate`: greedy and sampled accuracy on held-out test problems, the reward's AUC (over
   all samples and within a problem) and accuracy on the test samples, all with the weights as saved (fp16, reloaded in fp32).

Weights, tokenizer and `train_report.json` go to `nabla_dist/assets/toy/{policy,reward}/`
by default, where the `toy:policy` and `toy:reward` paths (engines/loading.py) find them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Regex, pre_tokenizers
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    LlamaConfig,
    PreTrainedTokenizerFast,
)

from nabla_dist.algorithm.requests import Rollout, SamplingParams
from nabla_dist.engines.batch import pad_rows, positions_from_mask
from nabla_dist.engines.policy import PolicyEngine
from nabla_dist.engines.loading import TOY_DIR, TOY_MODELS
from nabla_dist.engines.reward import classifier_conversation, split_template
from nabla_dist.engines.tiny import bpe_chat_tokenizer
from nabla_dist.experiment.grading import grade
from nabla_dist.experiment.toy_reward import AuxiliaryHeads, near_miss, reward_example, reward_loss
from nabla_dist.experiment.toy_task import ToyProblem, generate

log = logging.getLogger(__name__)

# Digits one per token (the first digit of a number carries its leading space): arithmetic
# is learnable by a small model, and answers are 30–100 tokens long.
PRETOKENIZE = r" ?\d| ?[^\s\d]+|\s+"


@dataclass
class ToyTrainConfig:
    seed: int = 0
    threads: int = 2  # torch intra-op threads; the shipped weights were trained with 2
    device: str = "cpu"  # the recipe is sized for CPU; "cuda" only speeds up experiments with it
    # tokenizer and model (Llama, untied embeddings)
    vocab_size: int = 320
    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 512
    max_positions: int = 256
    # policy SFT on reference solutions, each problem seen once (sft_steps * sft_batch_size)
    sft_problems: int = 144_000
    sft_steps: int = 4_500
    sft_batch_size: int = 32
    sft_lr: float = 1e-3
    warmup_steps: int = 100
    # reward data: the policy's samples on train problems (disjoint from the SFT problems)
    reward_problems: int = 800
    samples_per_temperature: int = 2
    temperatures: list = field(default_factory=lambda: [0.6, 0.8, 1.0])
    top_p: float = 0.95
    max_new_tokens: int = 128
    rollout_batch_size: int = 64
    # reward model training (toy_reward.py)
    reward_layers: int = 5  # the policy's width, two layers deeper: the checks need depth
    reward_synthetic_problems: int = 40_000  # train problems after the SFT and sample ones
    reward_steps: int = 2_500
    reward_batch_size: int = 32
    reward_sample_share: float = 0.25  # of each batch: the policy's own samples
    reward_aux_weight: float = 1.0
    reward_lr: float = 1e-3
    # held-out evaluation (test split, data seed 0: the problems of configs/toy.yaml)
    eval_problems: int = 200
    eval_samples: int = 4
    eval_temperature: float = 0.6

    def __post_init__(self):
        for name in ("sft_steps", "sft_batch_size", "reward_problems", "reward_steps", "reward_batch_size",
                     "reward_layers", "eval_problems", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.reward_aux_weight and self.reward_layers < 3:
            raise ValueError(f"reward_layers={self.reward_layers}: the auxiliary checks read three layers below the "
                             "last; use >= 3, or reward_aux_weight=0")


# -- 1. tokenizer ---------------------------------------------------------------------
def chat_text(question: str, solution: str | None = None) -> str:
    """ChatML conversation text; without a solution, up to the generation prompt."""
    text = f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    return text if solution is None else f"{text}{solution}<|im_end|>\n"


def build_tokenizer(problems: list[ToyProblem], vocab_size: int) -> PreTrainedTokenizerFast:
    pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    corpus = [chat_text(p.question, p.solution).replace("<|im_start|>", "").replace("<|im_end|>", "")
              for p in problems] + ["system\n"]
    tokenizer = bpe_chat_tokenizer(corpus, vocab_size, pre_tokenizer)
    sample = problems[0]
    if tokenizer.apply_chat_template([{"role": "user", "content": sample.question}], add_generation_prompt=True,
                                     tokenize=False) != chat_text(sample.question):
        raise RuntimeError("the ChatML template and chat_text disagree; keep them identical")
    return tokenizer


def model_config(tokenizer, cfg: ToyTrainConfig, **extra) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **extra,
    )


# -- 2. policy SFT --------------------------------------------------------------------
def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of indices of similar length (less padding), in shuffled order."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    group = 16 * batch_size
    for start in range(0, len(order), group):
        chunk = sorted(order[start : start + group], key=lengths.__getitem__)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def warmup_cosine(optimizer, warmup: int, total: int, floor: float = 0.1):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def fit(model, batch_losses, steps: int, lr: float, warmup: int, desc: str) -> list[float]:
    """AdamW with warmup + cosine and gradient clipping over `steps` batches, whose losses
    `batch_losses` yields one at a time (each computed when asked for); returns the losses."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    schedule = warmup_cosine(optimizer, warmup, steps)
    model.train()
    losses = []
    progress = tqdm(zip(range(steps), batch_losses), total=steps, desc=desc, unit="step", disable=None)
    for step, loss in progress:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{losses[-1]:.3f}")
        if (step + 1) % max(1, steps // 10) == 0:
            log.info("%s step %d/%d loss %.3f", desc, step + 1, steps, sum(losses[-50:]) / len(losses[-50:]))
    model.eval()
    return losses


def train_policy(model, tokenizer, problems: list[ToyProblem], cfg: ToyTrainConfig) -> list[float]:
    """SFT on reference solutions; returns the loss of every step."""
    prompts = tokenizer([chat_text(p.question) for p in problems], add_special_tokens=False)["input_ids"]
    responses = tokenizer([p.solution for p in problems], add_special_tokens=False)["input_ids"]
    examples = [(prompt + response + [tokenizer.eos_token_id], len(prompt))
                for prompt, response in zip(prompts, responses)]
    rng = random.Random(cfg.seed)
    lengths = [len(ids) for ids, _ in examples]

    def batch_losses():
        while True:  # shuffled passes over the examples, as many as the steps need
            for indices in reversed(length_grouped_batches(lengths, cfg.sft_batch_size, rng)):
                batch = [examples[i] for i in indices]
                width = max(len(ids) for ids, _ in batch)
                ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)  # [B, T] right padded
                labels = torch.full((len(batch), width), -100, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for b, (row, n_prompt) in enumerate(batch):
                    ids[b, : len(row)] = torch.tensor(row)
                    labels[b, n_prompt : len(row)] = torch.tensor(row[n_prompt:])
                    mask[b, : len(row)] = 1
                ids, mask, labels = ids.to(model.device), mask.to(model.device), labels.to(model.device)
                yield model(input_ids=ids, attention_mask=mask, labels=labels).loss

    return fit(model, batch_losses(), cfg.sft_steps, cfg.sft_lr, cfg.warmup_steps, "policy SFT")


# -- 3. the policy's own samples, graded ------------------------------------------------
@dataclass
class Sample:
    problem: ToyProblem
    tokens: list[int]  # generated ids, EOS included when the rollout stopped
    text: str
    correct: bool
    temperature: float


def sample_responses(engine: PolicyEngine, problems: list[ToyProblem], temperatures: list[float],
                     per_temperature: int, cfg: ToyTrainConfig, seed: int, desc: str) -> list[Sample]:
    """`per_temperature` rollouts per problem and temperature (0 = greedy, once), graded."""
    jobs = [(p, t, k) for p in problems for t in temperatures for k in range(1 if t == 0 else per_temperature)]
    samples = []
    for start in tqdm(range(0, len(jobs), cfg.rollout_batch_size), desc=desc, unit="batch", disable=None):
        chunk = jobs[start : start + cfg.rollout_batch_size]
        requests = [
            Rollout(engine.prompts.encode(p.question).ids, cfg.max_new_tokens,
                    SamplingParams(t, 1.0 if t == 0 else cfg.top_p), seed + 7919 * (start + j))
            for j, (p, t, _) in enumerate(chunk)
        ]
        for (p, t, _), result in zip(chunk, engine.rollout(requests)):
            text = engine.tokenizer.decode(result.tokens, skip_special_tokens=True)
            samples.append(Sample(p, result.tokens, text, grade(text, p.answer).correct, t))
    return samples


# -- 4. reward model ----------------------------------------------------------------------
def reward_input_ids(tokenizer, question: str, response_ids: list[int]) -> list[int]:
    """prefix(question) ‖ response ‖ postfix, the reward model's view (as RewardEngine builds it)."""
    prefix, postfix = split_template(tokenizer, classifier_conversation(tokenizer, question))
    return prefix + list(response_ids) + postfix


def reward_scores(model, rows: list[list[int]], pad_id: int) -> torch.Tensor:
    """Scores [batch] of token rows, left padded and pooled at the last position like RewardEngine."""
    ids, mask = pad_rows(rows, pad_id, left=True, device=model.device)  # [B, T]
    hidden = model.base_model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask))
    return model.score(hidden.last_hidden_state[:, -1])[:, 0].float()


def new_reward_model(tokenizer, cfg: ToyTrainConfig):
    """A sequence classifier of the policy's width, `reward_layers` deep, from random weights."""
    config = model_config(tokenizer, replace(cfg, num_layers=cfg.reward_layers), num_labels=1)
    return AutoModelForSequenceClassification.from_config(config)


def train_reward(model, tokenizer, samples: list[Sample], problems: list[ToyProblem], cfg: ToyTrainConfig) -> list[float]:
    """Fit the reward on the policy's `samples` and on `problems`' reference solutions and
    near misses (`toy_reward.py`); returns per-step losses."""
    rng = random.Random(cfg.seed + 1)
    eos = [tokenizer.eos_token_id]
    own = [reward_example(tokenizer, s.problem, s.tokens, s.correct) for s in samples]
    made = []
    for p in tqdm(problems, desc="reward data", unit="problem", disable=None):
        made.append(reward_example(tokenizer, p, tokenizer(p.solution, add_special_tokens=False)["input_ids"] + eos, True))
        text = near_miss(p, rng)
        if text is not None:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] + eos
            made.append(reward_example(tokenizer, p, ids, grade(text, p.answer).correct))
    heads = AuxiliaryHeads(cfg.hidden_size).to(model.device)
    from_samples = round(cfg.reward_batch_size * cfg.reward_sample_share) if own else 0

    def batch_losses():
        while True:
            batch = rng.sample(made, cfg.reward_batch_size - from_samples) + rng.sample(own, from_samples)
            yield reward_loss(model, heads, batch, tokenizer.pad_token_id, cfg.reward_aux_weight)

    trained = torch.nn.ModuleList([model, heads])  # the heads train with it and are then dropped
    return fit(trained, batch_losses(), cfg.reward_steps, cfg.reward_lr, cfg.warmup_steps, "reward model")


@torch.no_grad()
def score_samples(model, tokenizer, samples: list[Sample], batch_size: int = 64) -> list[float]:
    rows = [reward_input_ids(tokenizer, s.problem.question, s.tokens) for s in samples]
    return [float(v) for i in range(0, len(rows), batch_size)
            for v in reward_scores(model, rows[i : i + batch_size], tokenizer.pad_token_id)]


def auc(scores: list[float], labels: list[bool]) -> float | None:
    """Probability that a random right answer outscores a random wrong one (ties count half)."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def group_indices(keys: list[str]) -> list[list[int]]:
    """Indices of equal keys (the samples of each problem), groups in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def within_problem_auc(scores: list[float], labels: list[bool], groups: list[str]) -> tuple[float | None, int]:
    """Mean AUC over the groups (problems) that have both right and wrong samples, and how
    many do: how well the score ranks the samples of one problem, which is what Best-of-N
    and rejection sampling ask of a reward (`auc` over all samples also rewards ranking
    problems by difficulty)."""
    aucs = [auc([scores[i] for i in idx], [labels[i] for i in idx]) for idx in group_indices(groups)]
    aucs = [a for a in aucs if a is not None]
    return (sum(aucs) / len(aucs) if aucs else None), len(aucs)


# -- 5. evaluation ---------------------------------------------------------------------------
def evaluate(policy, reward, tokenizer, cfg: ToyTrainConfig) -> dict:
    """Held-out numbers: greedy / sampled accuracy, reward AUC and accuracy, reward-ranked pick."""
    problems = generate(cfg.eval_problems, seed=0, split="test")
    engine = PolicyEngine(policy, tokenizer, device=cfg.device)
    greedy = sample_responses(engine, problems, [0.0], 1, cfg, cfg.seed + 101, "eval greedy")
    sampled = sample_responses(engine, problems, [cfg.eval_temperature], cfg.eval_samples, cfg,
                               cfg.seed + 202, "eval samples")
    scores = score_samples(reward, tokenizer, sampled)
    labels = [s.correct for s in sampled]
    by_problem = group_indices([s.problem.id for s in sampled])
    best = [max(idx, key=scores.__getitem__) for idx in by_problem]
    within_auc, mixed = within_problem_auc(scores, labels, [s.problem.id for s in sampled])
    lengths = [len(s.tokens) for s in greedy]
    return {
        "eval_problems": len(problems),
        "greedy_accuracy": sum(s.correct for s in greedy) / len(greedy),
        "greedy_stopped": sum(bool(s.tokens) and s.tokens[-1] == tokenizer.eos_token_id for s in greedy) / len(greedy),
        "greedy_response_tokens": {"min": min(lengths), "mean": sum(lengths) / len(lengths), "max": max(lengths)},
        "sample_temperature": cfg.eval_temperature,
        "sample_accuracy": sum(labels) / len(labels),
        "pass_at_samples": sum(any(labels[i] for i in idx) for idx in by_problem) / len(by_problem),
        "reward_pick_accuracy": sum(labels[i] for i in best) / len(best),
        "reward_auc": auc(scores, labels),
        "reward_auc_within_problem": within_auc,
        "problems_with_right_and_wrong_samples": mixed,
        "reward_accuracy": sum((s > 0) == y for s, y in zip(scores, labels)) / len(labels),
        "eval_samples": len(sampled),
    }


# -- 6. the whole recipe -------------------------------------------------------------------
def save_fp16(model, tokenizer, path: Path) -> None:
    model.to(torch.float16).save_pretrained(path)
    tokenizer.save_pretrained(path)
    model.float()


def train_toy(cfg: ToyTrainConfig = ToyTrainConfig(), out: str | Path = TOY_DIR) -> dict:
    """Build tokenizer, policy and reward model under `out`; returns (and writes) the report."""
    start = time.time()
    out = Path(out)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    timings = {}

    train = generate(cfg.sft_problems + cfg.reward_problems + cfg.reward_synthetic_problems, seed=cfg.seed, split="train")
    sft_problems = train[: cfg.sft_problems]
    reward_problems = train[cfg.sft_problems : cfg.sft_problems + cfg.reward_problems]
    synthetic_problems = train[cfg.sft_problems + cfg.reward_problems :]
    tokenizer = build_tokenizer(sft_problems[:5000], cfg.vocab_size)
    policy = AutoModelForCausalLM.from_config(model_config(tokenizer, cfg)).to(cfg.device)
    sft_losses = train_policy(policy, tokenizer, sft_problems, cfg)
    save_fp16(policy, tokenizer, out / "policy")
    policy = AutoModelForCausalLM.from_pretrained(out / "policy", dtype=torch.float32).to(cfg.device).eval()
    timings["policy_s"] = time.time() - start

    log.info("policy trained in %.0fs (final loss %.3f)", timings["policy_s"], sft_losses[-1])
    engine = PolicyEngine(policy, tokenizer, device=cfg.device)
    samples = sample_responses(engine, reward_problems, list(cfg.temperatures), cfg.samples_per_temperature,
                               cfg, cfg.seed + 303, "reward data")
    by_temperature = {
        str(t): sum(s.correct for s in samples if s.temperature == t) / max(1, sum(s.temperature == t for s in samples))
        for t in cfg.temperatures
    }
    unique = {(s.problem.id, tuple(s.tokens)): s for s in samples}  # duplicates would only reweight
    samples = list(unique.values())
    timings["sampling_s"] = time.time() - start - timings["policy_s"]

    torch.manual_seed(cfg.seed + 1)
    reward = new_reward_model(tokenizer, cfg).to(cfg.device)
    reward_losses = train_reward(reward, tokenizer, samples, synthetic_problems, cfg)
    save_fp16(reward, tokenizer, out / "reward")
    reward = AutoModelForSequenceClassification.from_pretrained(out / "reward", dtype=torch.float32)
    reward = reward.to(cfg.device).eval()
    timings["reward_s"] = time.time() - start - timings["policy_s"] - timings["sampling_s"]

    log.info("reward model trained on %d samples in %.0fs", len(samples), timings["reward_s"])
    report = evaluate(policy, reward, tokenizer, cfg)
    report.update(
        policy_parameters=sum(p.numel() for p in policy.parameters()),
        reward_parameters=sum(p.numel() for p in reward.parameters()),
        vocab_size=len(tokenizer),
        sft_final_loss=sum(sft_losses[-20:]) / len(sft_losses[-20:]),
        reward_train_samples=len(samples),
        reward_train_positive_share=sum(s.correct for s in samples) / len(samples),
        reward_sample_accuracy_by_temperature=by_temperature,  # before removing duplicates
        reward_final_loss=sum(reward_losses[-20:]) / len(reward_losses[-20:]),
        timings_s={k: round(v, 1) for k, v in timings.items()},
        wall_s=round(time.time() - start, 1),
        machine={"threads": cfg.threads, "cpu_count": os.cpu_count(), "torch": torch.__version__,
                 "python": platform.python_version()},
        config=asdict(cfg),
    )
    for name in TOY_MODELS:
        (out / name / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
