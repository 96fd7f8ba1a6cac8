"""Tiny random models with real tokenizers, built offline in seconds (tests, CI, debugging).

`build_tiny_suite(root)` writes, under `root`, with `save_pretrained`:
  tokenizer/        byte-level BPE (ChatML template, EOS `<|im_end|>`, pad `<|endoftext|>`)
  policy/           Llama causal LM, untied embeddings
  policy_tied/      Qwen2 causal LM, tied input/output embeddings
  reward/           Llama sequence classifier (num_labels=1), same tokenizer
  reward_other/     Llama sequence classifier with a *different* BPE (vocabulary alignment)
Everything is seeded, so two builds are identical.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
log = logging.getLogger(__name__)
SUITE_VERSION = "1"
SUITE = ("tokenizer", "policy", "policy_tied", "reward", "reward_other")


def _corpus(seed: int, n: int = 3000) -> list[str]:
    rng = random.Random(seed)
    words = "the answer is compute step then so we get total sum product of and a number".split()
    lines = []
    for _ in range(n):
        a, b = rng.randint(0, 999), rng.randint(1, 99)
        op = rng.choice("+-*/")
        lines.append(f"{a} {op} {b} = {rng.randint(0, 9999)}. " + " ".join(rng.choices(words, k=6)))
        lines.append(f"The answer is \\boxed{{{a}}}. user assistant system")
    return lines


def bpe_chat_tokenizer(corpus, vocab_size: int, pre_tokenizer) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on `corpus` (strings), with our special tokens and ChatML."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizer
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHATML,
    )


def build_tokenizer(vocab_size: int, seed: int) -> PreTrainedTokenizerFast:
    return bpe_chat_tokenizer(_corpus(seed), vocab_size, pre_tokenizers.ByteLevel(add_prefix_space=False))


def _llama_config(tokenizer, tied: bool = False, **extra) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tied,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **extra,
    )


def build_tiny_suite(root: str | Path) -> dict[str, Path]:
    """Build (or reuse, if already complete) the tiny models under `root`.

    Safe when several processes start on a fresh cache at once (a parallel sweep, two test
    runs): one builds, holding a file lock next to `root`, in a private directory that is
    renamed into place complete (marker included); the others wait for the lock and find it
    built. A reader that sees the marker sees the whole suite.
    """
    root = Path(root)
    paths = {name: root / name for name in SUITE}
    marker = root / f".complete-v{SUITE_VERSION}"
    if marker.exists():
        return paths
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        if marker.exists():  # another process built it while this one waited
            return paths
        staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.building-"))
        log.info("building the tiny model suite for %s in %s", root, staging)
        try:
            _build_into(staging)
            (staging / marker.name).touch()
            if root.exists():  # an older version, or a build of a version that did not rename
                stale = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.stale-"))
                os.rename(root, stale / root.name)
                shutil.rmtree(stale, ignore_errors=True)
            os.rename(staging, root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return paths


def _build_into(root: Path) -> None:
    paths = {name: root / name for name in SUITE}
    tokenizer = build_tokenizer(vocab_size=400, seed=0)
    other = build_tokenizer(vocab_size=330, seed=1)
    tokenizer.save_pretrained(paths["tokenizer"])

    def save(model, tok, name):
        model.save_pretrained(paths[name])
        tok.save_pretrained(paths[name])

    torch.manual_seed(0)
    save(AutoModelForCausalLM.from_config(_llama_config(tokenizer)), tokenizer, "policy")
    torch.manual_seed(1)
    qwen = Qwen2Config(**{**_llama_config(tokenizer, tied=True).to_dict(), "model_type": "qwen2"})
    save(AutoModelForCausalLM.from_config(qwen), tokenizer, "policy_tied")
    torch.manual_seed(2)
    reward = AutoModelForSequenceClassification.from_config(_llama_config(tokenizer, num_labels=1))
    save(reward, tokenizer, "reward")
    torch.manual_seed(3)
    reward_other = AutoModelForSequenceClassification.from_config(_llama_config(other, num_labels=1))
    save(reward_other, other, "reward_other")


# Shapes of real models, for benchmarks with random weights (no download needed).
SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    "mid": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=4),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}


def random_model(shape: str, tokenizer, reward: bool = False, seed: int = 0, dtype=torch.float32):
    """A randomly initialized Llama-architecture model of a named shape (see SHAPES).

    The vocabulary is the shape's (padded beyond the tokenizer when larger), so compute
    per token matches the real model; `reward` gives a one-output sequence classifier.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {sorted(SHAPES)}")
    spec = {"vocab_size": len(tokenizer), "tie_word_embeddings": False, **SHAPES[shape]}
    config = LlamaConfig(
        **spec,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **({"num_labels": 1} if reward else {}),
    )
    torch.manual_seed(seed)
    cls = AutoModelForSequenceClassification if reward else AutoModelForCausalLM
    return cls.from_config(config, dtype=dtype)
