"""Prefix KV for gradient passes: the fixed part of a sequence is run once, without grad.

While one position is optimized, prompt ‖ committed is fixed; its keys/values (and the
hidden state at its last position, which predicts the first ahead token) are computed
once and reused for every forward+backward over the ahead tokens. Exact: the prefix does
not depend on the ahead one-hots. A batch of rows with different prefix lengths is laid
out as [left pad | prefix | suffix | right pad] with the matching attention mask.

Keys are tuples whose prefixes are the keys of the prefixes' prefixes (token ids, after a
prompt text for the reward model). A new prefix that extends a cached one by the tokens
committed since runs only those tokens on the cached keys/values: committing one token at
a time, a full rebuild per position cost a forward over the whole prompt ‖ committed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from transformers import DynamicCache

from nabla_dist.engines.batch import pad_rows
from nabla_dist.engines.lru import LRUStore


@dataclass
class Prefix:
    keys_values: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: [1, kv_heads, P, d] each
    last_hidden: torch.Tensor  # [H] hidden state at the prefix's last position
    length: int


class PrefixCache(LRUStore):
    """LRU cache of prefixes of one model, keyed by whatever identifies the prefix."""

    def __init__(self, base_model, capacity: int = 64):
        super().__init__(capacity)
        self.base_model = base_model

    def peek(self, key) -> Prefix | None:
        """The prefix for `key` if it is cached (counted as a hit), else None."""
        entry = self._lookup(key)
        self.hits += entry is not None
        return entry

    def _longest_cached_prefix(self, key: tuple) -> Prefix | None:
        best, size = None, 0
        for cached, entry in self._entries.items():
            if size < len(cached) < len(key) and key[: len(cached)] == cached:
                best, size = entry, len(cached)
        return best

    @torch.no_grad()
    def get_many(self, keys: list[tuple], embed: Callable[[int], torch.Tensor]) -> tuple[list[Prefix], list[int]]:
        """The prefixes for `keys`, and the tokens this call ran to build each (charged to the
        first request of a missing key, 0 for the others); `embed(i)` gives key i's input
        embeddings [P, H].

        Missing prefixes run together: those extending a cached prefix as one batch of their
        new tokens on the cached keys/values, the others as one right-padded batch.
        """
        found = {key: self.peek(key) for key in dict.fromkeys(keys)}
        missing = [key for key, entry in found.items() if entry is None]
        first = {key: keys.index(key) for key in missing}
        tokens = [0] * len(keys)
        if missing:
            self.misses += len(missing)
            rows = {key: embed(first[key]) for key in missing}  # [P_b, H] each
            parents = {key: self._longest_cached_prefix(key) for key in missing}
            extend = [key for key in missing if parents[key] is not None and parents[key].length < len(rows[key])]
            fresh = [key for key in missing if key not in extend]
            built = {}
            if fresh:
                built.update(zip(fresh, self._build([rows[key] for key in fresh])))
            if extend:
                built.update(zip(extend, self._extend([parents[key] for key in extend], [rows[key] for key in extend])))
            for key, (prefix, ran) in built.items():
                found[key] = prefix
                self._store(key, prefix)
                tokens[first[key]] = ran
        return [found[key] for key in keys], tokens

    def _build(self, rows: list[torch.Tensor]) -> list[tuple[Prefix, int]]:
        lengths = [row.shape[0] for row in rows]
        inputs, mask = pad_rows(rows, 0.0, left=False)
        out = self.base_model(inputs_embeds=inputs, attention_mask=mask, use_cache=True)
        # copies, so that an entry does not keep the whole padded batch alive
        return [(Prefix([(layer.keys[b : b + 1, :, :n].clone(), layer.values[b : b + 1, :, :n].clone())
                         for layer in out.cache.layers], out.last_hidden_state[b, n - 1], n), n)
                for b, n in enumerate(lengths)]

    def _extend(self, parents: list[Prefix], rows: list[torch.Tensor]) -> list[tuple[Prefix, int]]:
        """Each row's tokens after its parent prefix, run on the parent's keys/values."""
        new = [row[parent.length :] for parent, row in zip(parents, rows)]
        lengths = [row.shape[0] for row in new]
        hidden, cache = run_after_prefixes(self.base_model, parents, pad_rows(new, 0.0, left=False)[0], lengths)
        longest = max(p.length for p in parents)  # the stacked layout: [left pad | parent | new | right pad]
        return [(Prefix([(layer.keys[b : b + 1, :, longest - p.length : longest + n].clone(),
                          layer.values[b : b + 1, :, longest - p.length : longest + n].clone())
                         for layer in cache.layers], hidden[b, n - 1], p.length + n), n)
                for b, (p, n) in enumerate(zip(parents, lengths))]



def stack_prefixes(prefixes: list[Prefix | None], config) -> tuple[DynamicCache, torch.Tensor]:
    """Rows' prefix KV left-padded into one cache, and the mask of its columns [B, longest].

    A row without a prefix (None) gets only padding. At least one row must have a prefix.
    """
    template = next(p for p in prefixes if p is not None)
    longest = max(p.length for p in prefixes if p is not None)
    layers = []
    for layer in range(len(template.keys_values)):
        keys, values = [], []
        for p in prefixes:
            k, v = (template if p is None else p).keys_values[layer]
            if p is None:
                k, v = k[:, :, :0], v[:, :, :0]
            pad = (0, 0, longest - k.shape[2], 0)  # left-pad the sequence dimension
            keys.append(torch.nn.functional.pad(k, pad))
            values.append(torch.nn.functional.pad(v, pad))
        layers.append((torch.cat(keys), torch.cat(values)))
    mask = torch.zeros((len(prefixes), longest), dtype=torch.long, device=template.last_hidden.device)
    for b, p in enumerate(prefixes):
        if p is not None:
            mask[b, longest - p.length :] = 1
    return DynamicCache(ddp_cache_data=layers, config=config), mask


def forward_after_prefixes(base_model, prefixes: list[Prefix], suffix: torch.Tensor, lengths: list[int]):
    """Hidden states of the suffix rows given their cached prefixes.

    suffix: [B, S, H] input embeddings, right-padded; lengths: real suffix length per row.
    Returns [B, S, H].
    """
    return run_after_prefixes(base_model, prefixes, suffix, lengths)[0]


def run_after_prefixes(base_model, prefixes: list[Prefix], suffix: torch.Tensor, lengths: list[int]):
    """(hidden states [B, S, H], the cache of prefix and suffix keys/values) of forward_after_prefixes."""
    cache, prefix_mask = stack_prefixes(prefixes, base_model.config)
    batch, steps = suffix.shape[:2]
    suffix_mask = torch.zeros((batch, steps), dtype=torch.long, device=suffix.device)
    positions = torch.zeros((batch, steps), dtype=torch.long, device=suffix.device)
    for b, (p, n) in enumerate(zip(prefixes, lengths)):
        suffix_mask[b, :n] = 1
        positions[b] = p.length + torch.arange(steps)
    mask = torch.cat([prefix_mask, suffix_mask], dim=1)
    out = base_model(inputs_embeds=suffix, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
    return out.last_hidden_state, out.cache
