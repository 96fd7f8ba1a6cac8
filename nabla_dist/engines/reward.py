"""The reward engine: a sequence classifier with one output, serving `Reward` and `RewardGrad`.

The model reads prefix(question) ‖ response ‖ postfix in its own chat template, split
around a placeholder answer. The response arrives as *policy* token ids and is embedded
through the aligned matrix (row v = the reward model's embedding of policy token v's
string; tokens it lacks map to its pad token), so its gradient lives in the policy's
vocabulary space. Batches are left-padded: the classifier pools the last position.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import torch

from nabla_dist.algorithm.requests import Reward, RewardGrad, RewardGradResult, RewardResult
from nabla_dist.engines.batch import pad_rows, positions_from_mask
from nabla_dist.engines.grad_memory import GradMemory, Remembered, serve_or_run
from nabla_dist.engines.prefix_cache import PrefixCache, forward_after_prefixes
from nabla_dist.engines.spec import RewardSpec

log = logging.getLogger(__name__)
PLACEHOLDER = "<<nabla-dist-answer>>"
MIN_ALIGNED_SHARE = 0.5  # below this share of policy tokens found, alignment is refused


def classifier_conversation(tokenizer, question: str) -> str:
    """A reward classifier's input text: user question, assistant PLACEHOLDER, its chat template."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}, {"role": "assistant", "content": PLACEHOLDER}], tokenize=False
    )


def split_template(tokenizer, conversation: str) -> tuple[list[int], list[int]]:
    """Token ids before and after the response in `conversation` (which holds PLACEHOLDER once)."""
    if conversation.count(PLACEHOLDER) != 1:
        raise ValueError(f"reward chat template does not place the answer exactly once ({conversation!r}) — "
                         "fix the reward tokenizer's chat_template")
    prefix, postfix = conversation.split(PLACEHOLDER)
    encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    return encode(prefix), encode(postfix)


def check_chat_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"reward tokenizer {tokenizer.name_or_path!r} has no chat template — set "
            "tokenizer.chat_template so the response can be placed in its conversation format"
        )


def alignment_index(reward_tokenizer, policy_tokenizer, size: int | None = None,
                    reward_rows: int | None = None) -> torch.Tensor:
    """[size] reward token id of each policy token id, by token string; tokens the reward
    tokenizer lacks map to its pad token. `size`: rows of the policy's embedding matrix when
    it exceeds its tokenizer (padded vocabularies); `reward_rows`: rows of the reward's
    (default: its tokenizer's length). Refuses tokenizers that share too little: the check
    runs on tokenizers alone, before any model loads."""
    policy_vocab, reward_vocab = policy_tokenizer.get_vocab(), reward_tokenizer.get_vocab()
    size = max(len(policy_tokenizer), max(policy_vocab.values()) + 1, size or 0)
    pad = reward_tokenizer.pad_token_id
    if pad is None:
        pad = reward_tokenizer.eos_token_id if policy_vocab == reward_vocab else None
    if pad is None:
        raise ValueError(
            f"reward tokenizer {reward_tokenizer.name_or_path!r} has no pad token to map tokens it "
            "lacks to — set its pad_token"
        )
    index = torch.full((size,), pad, dtype=torch.long)
    if policy_vocab == reward_vocab:
        rows = min(size, reward_rows or len(reward_tokenizer))
        index[:rows] = torch.arange(rows)
        return index
    found = 0
    for token, policy_id in policy_vocab.items():
        reward_id = reward_vocab.get(token)
        if reward_id is not None:
            index[policy_id] = reward_id
            found += 1
    share = found / len(policy_vocab)
    if share < MIN_ALIGNED_SHARE:
        raise ValueError(
            f"reward tokenizer {reward_tokenizer.name_or_path!r} shares only {share:.0%} of the policy's "
            f"token strings (need ≥ {MIN_ALIGNED_SHARE:.0%}) — use a reward model from the policy's "
            "tokenizer family"
        )
    log.warning(
        "reward tokenizer differs from the policy's: aligned %d of %d policy tokens by string, "
        "the other %d map to the reward pad token",
        found, len(policy_vocab), len(policy_vocab) - found,
    )
    return index


class RewardEngine:
    def __init__(
        self,
        model,
        tokenizer,
        policy_tokenizer,
        spec: RewardSpec = RewardSpec(),
        device: str = "cpu",
        policy_vocab_size: int | None = None,
        *,
        whole_embeddings: torch.Tensor | None = None,
    ):
        """`policy_vocab_size`: rows of the policy's embedding matrix when it exceeds its
        tokenizer (padded vocabularies); the extra rows map to the reward pad token.
        `model` may be a sharded module; `whole_embeddings` [V_R, H_R] is then its input
        embedding table taken before sharding (ZeRO-3 leaves each rank a slice)."""
        self.check_model(model)
        check_chat_template(tokenizer)
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.spec = spec
        self.device = torch.device(device)
        self._whole_embeddings = whole_embeddings
        self.aligned = self.aligned_embeddings(policy_tokenizer, policy_vocab_size).to(self.device)  # [V_policy, H_R]
        self._split = lru_cache(maxsize=4096)(self._split_template)
        self.prefix_cache = PrefixCache(self.model.base_model, spec.prefix_cache) if spec.prefix_cache > 0 else None
        self.memory = GradMemory(spec.grad_memory) if spec.grad_memory > 0 else None

    # -- what a kind of reward model defines (see verifier.py for another) ----------------
    def check_model(self, model) -> None:
        if not hasattr(model, "score") or getattr(model.config, "num_labels", 1) != 1:
            raise ValueError(
                f"reward model {model.name_or_path!r} ({type(model).__name__}, num_labels="
                f"{model.config.num_labels}) is not a sequence classifier with one output and a `score` "
                "head; load it with AutoModelForSequenceClassification(num_labels=1)"
            )

    def conversation(self, question: str) -> str:
        """The model's input text with PLACEHOLDER where the response goes."""
        return classifier_conversation(self.tokenizer, question)

    def readout(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """Reward from the last position's hidden state: [batch, H] -> [batch]."""
        return self.model.score(last_hidden)[:, 0].float()

    @property
    def embeddings(self) -> torch.Tensor:
        if self._whole_embeddings is not None:
            return self._whole_embeddings
        return self.model.get_input_embeddings().weight  # [V_R, H_R]

    def aligned_embeddings(self, policy_tokenizer, policy_vocab_size: int | None = None) -> torch.Tensor:
        """[V_policy, H_R]: the reward embedding of each policy token's string."""
        embeddings = self.embeddings.detach()
        index = alignment_index(self.tokenizer, policy_tokenizer, policy_vocab_size, embeddings.shape[0])
        return embeddings[index.to(embeddings.device)].clone()

    def _split_template(self, question: str) -> tuple[list[int], list[int]]:
        return split_template(self.tokenizer, self.conversation(question))

    def _embed(self, question: str, response_ids: list[int]) -> torch.Tensor:
        prefix, postfix = self._split(question)
        table = self.embeddings
        return torch.cat(
            [
                table[torch.tensor(prefix, dtype=torch.long, device=self.device)],
                self.aligned[torch.tensor(response_ids, dtype=torch.long, device=self.device)].to(table.dtype),
                table[torch.tensor(postfix, dtype=torch.long, device=self.device)],
            ]
        )  # [T, H_R]

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.spec.autocast_bf16)

    def _score(self, sequences: list[torch.Tensor]) -> torch.Tensor:
        """Left-pad embedded sequences and score them: [batch]."""
        inputs, mask = pad_rows(sequences, 0.0, left=True)
        with self._autocast():
            hidden = self.model.base_model(
                inputs_embeds=inputs, attention_mask=mask, position_ids=positions_from_mask(mask)
            ).last_hidden_state
            return self.readout(hidden[:, -1])  # left padding: the last position is real

    @torch.no_grad()
    def score(self, requests: list[Reward]) -> list[RewardResult]:
        sequences = [self._embed(r.prompt_text, r.response_ids) for r in requests]
        rewards = self._score(sequences)
        return [RewardResult(float(v), len(s)) for v, s in zip(rewards, sequences)]

    def grad(self, requests: list[RewardGrad]) -> list[RewardGradResult]:
        """Reward and ∂R/∂(response embeddings) at positions ahead_start: ([m, H_R] each).
        Requests on a sequence the gradient memory holds run no pass (grad_memory.py)."""
        passes = self._pass_with_prefix if self.prefix_cache is not None else self._pass
        served = serve_or_run(self.memory, [(r.prompt_text, tuple(r.response_ids)) for r in requests],
                              [r.ahead_start for r in requests], lambda missing: passes([requests[b] for b in missing]))
        return [
            RewardGradResult(s.entry.value, s.entry.suffix(r.ahead_start)["grad"].float().cpu(), s.tokens,
                             passes=int(s.ran), prefix_tokens=s.prefix_tokens)
            for r, s in zip(requests, served)
        ]

    def _pass(self, requests: list[RewardGrad]) -> list[tuple[Remembered, int, int]]:
        """Forward+backward over whole sequences: (rows, tokens run, prefix tokens built) each."""
        leaves = [self._embed(r.prompt_text, r.response_ids).detach().requires_grad_(True) for r in requests]
        with torch.enable_grad():
            rewards = self._score(leaves)
            grads = torch.autograd.grad(rewards.sum(), leaves)
        out = []
        for r, leaf, grad, reward in zip(requests, leaves, grads, rewards):
            start = len(self._split(r.prompt_text)[0]) + r.ahead_start
            end = start + len(r.response_ids) - r.ahead_start
            out.append((Remembered(r.ahead_start, {"grad": grad[start:end]}, float(reward.detach())), leaf.shape[0], 0))
        return out

    def _pass_with_prefix(self, requests: list[RewardGrad]) -> list[tuple[Remembered, int, int]]:
        """As `_pass`, running only ahead ‖ postfix on the cached KV of template prefix ‖ committed."""
        sequences = [self._embed(r.prompt_text, r.response_ids) for r in requests]  # [T, H_R] each
        splits = [len(self._split(r.prompt_text)[0]) + r.ahead_start for r in requests]
        keys = [(r.prompt_text, *r.response_ids[: r.ahead_start]) for r in requests]
        with self._autocast():
            prefixes, built = self.prefix_cache.get_many(keys, lambda i: sequences[i][: splits[i]])
        suffixes = [sequence[split:] for sequence, split in zip(sequences, splits)]
        lengths = [len(x) for x in suffixes]
        inputs = pad_rows(suffixes, 0.0, left=False)[0].detach().requires_grad_(True)
        with torch.enable_grad(), self._autocast():
            hidden = forward_after_prefixes(self.model.base_model, prefixes, inputs, lengths)
            last = hidden[torch.arange(len(requests)), torch.tensor(lengths) - 1]  # right padding
            rewards = self.readout(last)
            (grads,) = torch.autograd.grad(rewards.sum(), inputs)
        return [
            (Remembered(r.ahead_start, {"grad": grad[: len(r.response_ids) - r.ahead_start]}, float(reward.detach())),
             n, ran)
            for r, grad, reward, n, ran in zip(requests, grads, rewards, lengths, built)
        ]
