"""What to load for a model and how its engine runs it: the one input of engines/build.py.

The experiment config's `policy` and `reward` sections are these dataclasses (YAML keys =
field names), so a setting is defined, defaulted and checked here only. Every engine
option is exact: it changes speed, never an answer (README, "Performance switches").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from nabla_dist.algorithm.checks import check

DTYPES = ("float32", "bfloat16", "float16")
REWARD_KINDS = ("classifier", "verifier")


@dataclass(frozen=True)
class ModelSpec:
    path: str
    tokenizer: Optional[str] = None  # default: the model's own directory
    dtype: str = "float32"
    autocast_bf16: bool = False  # bf16 autocast of forward and backward (GPUs); projections stay fp32
    # Gradient passes: keys/values of the fixed prefix (prompt + committed tokens) computed
    # once and kept for this many prefixes (least recently used dropped); the policy's
    # regenerations prefill only their forced token on them. 0 recomputes the whole
    # sequence every pass (the naive path, for ablations).
    prefix_cache: int = 64
    # Gradient passes: what a pass computed for one exact sequence (embedding-space gradient
    # rows, the reward) is kept for this many sequences and serves later probes and inner
    # gradients on the same sequence without a pass (grad_memory.py). 0 recomputes every pass.
    grad_memory: int = 64
    # Weights from pickle files (pytorch_model.bin) when the model has no safetensors:
    # unpickling can run code, so only for files you trust (engines/loading.py).
    allow_pickle: bool = False

    def __post_init__(self):
        check(bool(self.path), "path", self.path,
              "name a model directory, a tiny:/toy:/smollm2: model, or hf:<org>/<name> for the hub")
        check(self.dtype in DTYPES, "dtype", self.dtype, f"choose one of {', '.join(DTYPES)}")
        check(self.prefix_cache >= 0, "prefix_cache", self.prefix_cache, "use ≥ 0 (0 turns the prefix KV off)")
        check(self.grad_memory >= 0, "grad_memory", self.grad_memory, "use ≥ 0 (0 turns the gradient memory off)")

    @property
    def tokenizer_path(self) -> str:
        return self.tokenizer or self.path


@dataclass(frozen=True)
class PolicySpec(ModelSpec):
    path: str = "tiny:policy"
    # The gradient-norm probe projects its candidates to vocabulary space a window at a time
    # (1, 2, 4, …) and stops at the first reaching the threshold; false projects every ahead
    # position first, as the reference implementation does.
    lazy_probe: bool = True
    norm_chunk: int = 64  # most positions per product with a [V, H] embedding matrix

    def __post_init__(self):
        super().__post_init__()
        check(self.norm_chunk >= 1, "norm_chunk", self.norm_chunk, "use ≥ 1")


@dataclass(frozen=True)
class RewardSpec(ModelSpec):
    """`kind`: a sequence classifier with one output, or a generative verifier (a causal LM
    judging the solution; reward = log p(`verdict`), see verifier.py)."""

    path: str = "tiny:reward"
    kind: str = "classifier"
    verdict: str = "yes"  # verifier only: a word that is one token of the reward tokenizer

    def __post_init__(self):
        super().__post_init__()
        check(self.kind in REWARD_KINDS, "kind", self.kind, f"choose one of {', '.join(REWARD_KINDS)}")
        check(bool(self.verdict.strip()), "verdict", self.verdict, "use a one-token word such as 'yes'")
