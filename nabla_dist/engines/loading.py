"""Loading models and tokenizers: from local directories, named suites, or the hub if asked.

A model location is one of:
- an existing local directory (save_pretrained output: config.json, tokenizer files);
- `tiny:<name>`: a model of the offline tiny suite (engines/tiny.py), built on first use
  under the cache directory ($NABLA_DIST_CACHE, default ~/.cache/nabla_dist);
- `toy:policy` / `toy:reward`: the trained toy pair shipped in the package (`nabla-dist
  train-toy` rebuilds it); `smollm2:policy` / `smollm2:reward`: engines/smollm.py;
- `hf:<org>/<name>`: a Hugging Face hub id. The prefix is the user allowing the hub for
  that model; a bare `org/name` that is not a directory is "no such model directory",
  never a download.

Loading runs no code from the model's files: `trust_remote_code` is always off (a model
that needs its own Python code is refused), and weights come from safetensors. Pickle
weights (`pytorch_model.bin`) can run code when unpickled; they are loaded only when the
model's spec says `allow_pickle: true`.
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
HUB_PREFIX = "hf:"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
transformers.utils.logging.disable_progress_bar()


class ModelPathError(ValueError):
    """A model or tokenizer location that cannot be loaded as given (a user error)."""


def cache_dir() -> Path:
    return Path(os.environ.get("NABLA_DIST_CACHE", Path.home() / ".cache" / "nabla_dist"))


def toy_model_path(name: str) -> Path:
    """The shipped toy model `name` ("policy" or "reward"), a save_pretrained directory."""
    if name not in TOY_MODELS:
        raise ModelPathError(f"unknown toy model {'toy:' + name!r} — choose one of "
                             f"{', '.join('toy:' + m for m in TOY_MODELS)}")
    path = TOY_DIR / name
    if not (path / "config.json").exists():
        raise ModelPathError(f"toy model {name!r} is missing at {path} — rebuild it with `nabla-dist train-toy`")
    return path


def is_hub_id(path: str) -> bool:
    return path.startswith(HUB_PREFIX)


def resolve_path(path: str) -> str:
    """A loadable location for `path` (see the module docstring): a directory, or a hub id
    for an `hf:` path."""
    if path.startswith("smollm2:"):
        from nabla_dist.engines.smollm import smollm2_checkpoint

        try:
            return str(smollm2_checkpoint(cache_dir()))
        except FileNotFoundError as error:
            raise ModelPathError(f"{path!r} is not available: {error}") from None
    if path.startswith("toy:"):
        return str(toy_model_path(path.split(":", 1)[1]))
    if path.startswith("tiny:"):
        suite = build_tiny_suite(cache_dir() / "tiny")
        name = path.split(":", 1)[1]
        if name not in suite:
            raise ModelPathError(f"unknown tiny model {path!r} — choose one of "
                                 f"{', '.join(sorted('tiny:' + k for k in suite))}")
        return str(suite[name])
    if is_hub_id(path):
        hub_id = path[len(HUB_PREFIX):]
        if not hub_id or hub_id.count("/") > 1 or hub_id.startswith(("/", ".", "~")):
            raise ModelPathError(f"{path!r} is not a hub id — write hf:<org>/<name>, "
                                 "e.g. hf:Qwen/Qwen2.5-0.5B-Instruct")
        return hub_id
    local = Path(path).expanduser()
    if not local.exists():
        hint = f", or hf:{path} to download it from the Hugging Face hub" if path.count("/") == 1 and \
            not path.startswith((".", "/", "~")) else ""
        raise ModelPathError(f"no such model directory: {path!r} — pass a directory saved with save_pretrained, "
                             f"a tiny:, toy: or smollm2: model{hint}")
    if not local.is_dir():
        raise ModelPathError(f"{path!r} is a file, not a model directory — pass the directory that holds its "
                             "config.json")
    return str(local)


def _check_directory(location: str, path: str, what: str) -> None:
    """The files `what` needs are in the local directory `location` (given as `path`)."""
    folder = Path(location)
    if not folder.is_dir():
        return  # a hub id
    if what == "tokenizer":
        if not any((folder / name).exists() for name in TOKENIZER_FILES + ("config.json",)):
            raise ModelPathError(f"{path!r} is not a model directory (no config.json, no tokenizer files) — pass a "
                                 "directory saved with save_pretrained")
        if not any((folder / name).exists() for name in TOKENIZER_FILES):
            raise ModelPathError(f"{path!r} is not a tokenizer directory (none of {', '.join(TOKENIZER_FILES)}) — "
                                 "pass a directory saved with save_pretrained, or set the model's tokenizer key")
    elif not (folder / "config.json").exists():
        raise ModelPathError(f"{path!r} is not a model directory (no config.json) — pass a directory saved with "
                             "save_pretrained")


def _check_weights(location: str, path: str, allow_pickle: bool, role: str) -> None:
    folder = Path(location)
    if allow_pickle or not folder.is_dir() or any((folder / name).exists() for name in SAFE_WEIGHTS):
        return
    pickled = [name for name in PICKLE_WEIGHTS if (folder / name).exists()]
    if pickled:
        raise ModelPathError(
            f"{path!r} holds its weights only as pickle ({pickled[0]}), which can run code when loaded — convert "
            f"them to safetensors, or set {role}.allow_pickle=true if you trust the file"
        )
    raise ModelPathError(f"{path!r} has no weights ({SAFE_WEIGHTS[0]}) — pass a directory saved with save_pretrained")


def _load(loader, path: str, what: str, **kwargs):
    location = resolve_path(path)
    _check_directory(location, path, what)
    try:
        return loader.from_pretrained(location, trust_remote_code=False, **kwargs)
    except (OSError, ValueError) as error:
        text = " ".join(str(error).split())
        if "trust_remote_code" in text:
            raise ModelPathError(f"{path!r} needs its own Python code to load (trust_remote_code) — nabla-dist never "
                                 "runs code from a model's files; use a model transformers supports natively") from None
        where = "a model in the Hugging Face cache, or a network connection" if is_hub_id(path) else \
            "a directory saved with save_pretrained"
        raise ModelPathError(f"could not load {what} {path!r} ({text[:300]}) — it needs {where}") from error


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
    except (OSError, ValueError):
        return GenerationConfig.from_model_config(model_config(path))


def _torch_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {list(DTYPES)}")
    return getattr(torch, dtype)


def check_weights(path: str, allow_pickle: bool = False, role: str = "policy") -> None:
    """The model directory holds weights that may be loaded (no model is read): safetensors,
    or pickle with `allow_pickle` (`role`: the config section a message names)."""
    location = resolve_path(path)
    _check_directory(location, path, f"{role} model")
    _check_weights(location, path, allow_pickle, role)


def _load_weights(loader, path: str, what: str, allow_pickle: bool, role: str, **kwargs):
    """A model from safetensors; from pickle only with `allow_pickle`."""
    _check_weights(resolve_path(path), path, allow_pickle, role)
    return _load(loader, path, what, use_safetensors=None if allow_pickle else True, **kwargs)


def load_causal_lm(path: str, dtype: str = "float32", *, allow_pickle: bool = False, role: str = "policy"):
    return _load_weights(AutoModelForCausalLM, path, f"{role} model", allow_pickle, role, dtype=_torch_dtype(dtype))


def load_reward_model(path: str, dtype: str = "float32", *, allow_pickle: bool = False):
    """A one-output sequence classifier. A head missing from the checkpoint (a reward head
    on a plain LM backbone) is initialized from a fixed seed, so runs stay reproducible."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _load_weights(AutoModelForSequenceClassification, path, "reward model", allow_pickle, "reward",
                              dtype=_torch_dtype(dtype), num_labels=1)


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
