"""The policy engine: one causal LM, parameters frozen, serving `Rollout` and `PolicyGrad`.

Rollouts are batched (left padding, explicit position ids, KV cache) and sample each row
with its own generator; a prompt that extends a prefix held by the gradient passes' prefix
cache by one token prefills only that token. Gradients are one batched forward+backward
to the input embeddings (right padding); the embedding gradient is projected into
vocabulary space here (projection.py), together with the reward model's, using the
aligned reward embedding matrix.
"""

from __future__ import annotations

import contextlib

import torch

from nabla_dist.algorithm.requests import PolicyGrad, PolicyGradResult, Rollout, RolloutResult
from nabla_dist.algorithm.sampling import make_generator, sample_tokens
from nabla_dist.engines.batch import pad_rows, positions_from_mask
from nabla_dist.engines.grad_memory import GradMemory, Remembered, serve_or_run
from nabla_dist.engines.prefix_cache import PrefixCache, forward_after_prefixes, stack_prefixes
from nabla_dist.engines.projection import AheadGrads, VocabProjection
from nabla_dist.engines.prompt import PromptEncoder
from nabla_dist.engines.spec import PolicySpec


class PolicyEngine:
    def __init__(
        self,
        model,
        tokenizer,
        spec: PolicySpec = PolicySpec(),
        device: str = "cpu",
        stop_strings=(),
        *,
        whole_embeddings: torch.Tensor | None = None,
        whole_head: torch.Tensor | None = None,
        sync_logits: bool = False,
    ):
        """`model` may be a sharded module (engines/sharding.py); then the caller passes what
        sharding splits and the engine reads whole: `whole_embeddings` [V, H] (ZeRO-3 leaves
        each rank a slice), `whole_head` [V, H] (for the `latents` parametrization), and
        `sync_logits`: every rank samples from rank 0's logits, so all ranks take the same
        tokens and stop at the same step (the same collectives follow)."""
        if tokenizer.pad_token_id is None:
            raise ValueError(
                f"policy tokenizer {tokenizer.name_or_path!r} has no pad token; set one "
                "(e.g. tokenizer.pad_token = tokenizer.eos_token) before building the engine"
            )
        self.model = model.to(device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.spec = spec
        self.device = torch.device(device)
        self.stop_strings = tuple(stop_strings)
        self.prompts = PromptEncoder.for_model(tokenizer, model.config, model.generation_config)
        self.stop_token_ids, self.context = self.prompts.stop_token_ids, self.prompts.context
        self._whole_embeddings, self._whole_head, self._sync_logits = whole_embeddings, whole_head, sync_logits
        self.reward_embeddings: torch.Tensor | None = None  # [V, H_R], see set_reward_embeddings
        self.prefix_cache = PrefixCache(self.model.base_model, spec.prefix_cache) if spec.prefix_cache > 0 else None
        self.memory = GradMemory(spec.grad_memory) if spec.grad_memory > 0 else None

    # -- shapes and shared matrices ---------------------------------------------------
    @property
    def embeddings(self) -> torch.Tensor:
        if self._whole_embeddings is not None:
            return self._whole_embeddings
        return self.model.get_input_embeddings().weight  # [V, H]

    def head_matrix(self) -> torch.Tensor:
        """W_head [V, H] (fp32, CPU) for the `latents` parametrization."""
        head = self._whole_head if self._whole_head is not None else self.model.get_output_embeddings().weight
        return head.detach().float().cpu()

    def set_reward_embeddings(self, aligned: torch.Tensor) -> None:
        """The reward model's input embeddings re-indexed by policy token id: [V, H_R]."""
        if aligned.shape[0] != self.embeddings.shape[0]:
            raise ValueError(
                f"aligned reward embeddings have {aligned.shape[0]} rows but the policy vocabulary "
                f"has {self.embeddings.shape[0]}; build them with RewardEngine.aligned_embeddings"
            )
        self.reward_embeddings = aligned.to(self.device, torch.float32)

    # -- forward pieces -------------------------------------------------------------
    def _autocast(self):
        if not self.spec.autocast_bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _hidden(self, **inputs):
        out = self.model.base_model(**inputs)
        return out.last_hidden_state, out.cache

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.model.get_output_embeddings()(hidden).float()
        if self._sync_logits and not torch.is_grad_enabled():  # rollouts run under no_grad
            logits = logits.contiguous()
            torch.distributed.broadcast(logits, src=0)
        return logits

    # -- Rollout ----------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self, requests: list[Rollout]) -> list[RolloutResult]:
        results: list[RolloutResult | None] = [None] * len(requests)
        live = [i for i, r in enumerate(requests) if r.max_new_tokens > 0]
        for i in set(range(len(requests))) - set(live):
            results[i] = RolloutResult([], False, torch.zeros(0), torch.zeros(0), [])
        if live:
            for i, result in zip(live, self._rollout_batch([requests[i] for i in live])):
                results[i] = result
        return results

    def _prefill(self, requests: list[Rollout]):
        """Run the rollouts' prompts (left padding): last hidden [B, H], cache, mask, positions.

        With the prefix cache on, a prompt that extends a cached prefix by one token runs
        only that token on the cached keys/values: ∇-Reasoner regenerates from P ‖ C ‖ t
        right after its gradient passes on the prefix P ‖ C.
        """
        cached = [None] * len(requests)
        if self.prefix_cache is not None:
            cached = [self.prefix_cache.peek(tuple(r.prompt_ids[:-1])) for r in requests]
        suffixes = [r.prompt_ids[0 if p is None else p.length :] for r, p in zip(requests, cached)]
        ids, mask = pad_rows(suffixes, self.tokenizer.pad_token_id, left=True, device=self.device)
        width, cache = ids.shape[1], None
        if any(p is not None for p in cached):
            cache, prefix_mask = stack_prefixes(cached, self.model.base_model.config)
            mask = torch.cat([prefix_mask, mask], dim=1)  # [B, cached + width]
        positions = positions_from_mask(mask)[:, -width:]
        with self._autocast():
            hidden, cache = self._hidden(
                input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
            )
        return hidden[:, -1], cache, mask, positions

    def _rollout_batch(self, requests: list[Rollout]) -> list[RolloutResult]:
        """Decode every request of the batch together; a row that stops leaves the batch (its
        keys/values are dropped), so the others do not carry it to the longest row's end."""
        generators = [make_generator(r.seed) for r in requests]
        tokens = [[] for _ in requests]
        stats = [([], [], [], [], []) for _ in requests]  # confidence, entropy, argmax, latent pos, latents
        stopped = [False] * len(requests)
        # the whole prompt is counted even where its KV was cached: counts must not depend on
        # which replica served the rollout or what its cache held
        forward = [len(r.prompt_ids) for r in requests]
        rows = list(range(len(requests)))  # the request of each batch row
        hidden, cache, mask, positions = self._prefill(requests)  # hidden: [rows, H]
        while True:
            logits = self._head(hidden)  # [rows, V]
            log_probs = torch.log_softmax(logits, dim=-1)  # [rows, V]
            probs = log_probs.exp()
            confidence = probs.max(-1).values.tolist()
            argmax = logits.argmax(-1).tolist()  # the straight-through forward's token (ALGORITHM.md)
            entropy = (-(probs * log_probs).sum(-1)).tolist()
            drawn = sample_tokens(logits, [requests[b].sampling for b in rows], [generators[b] for b in rows])
            keep = []
            for i, (b, token) in enumerate(zip(rows, drawn)):
                r = requests[b]
                conf, ent, top, lat_pos, lat = stats[b]
                conf.append(confidence[i])
                ent.append(entropy[i])
                top.append(argmax[i])
                if r.latents != "none" and (r.latents_max_confidence is None or conf[-1] <= r.latents_max_confidence):
                    lat_pos.append(len(tokens[b]))
                    lat.append((logits[i] if r.latents == "logits" else hidden[i].float()).cpu())
                tokens[b].append(token)
                if token in self.stop_token_ids or self._ends_with_stop_string(tokens[b]):
                    stopped[b] = True
                elif len(tokens[b]) < r.max_new_tokens and len(r.prompt_ids) + len(tokens[b]) < self.context:
                    forward[b] += 1
                    keep.append(i)
            if not keep:
                break
            if len(keep) < len(rows):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                mask, positions = mask[index], positions[index]
                rows = [rows[i] for i in keep]
            next_ids = torch.tensor([[tokens[b][-1]] for b in rows], device=self.device)  # [rows, 1]
            mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=torch.long, device=self.device)], dim=1)
            positions = positions[:, -1:] + 1
            with self._autocast():
                hidden, cache = self._hidden(
                    input_ids=next_ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
                )
            hidden = hidden[:, -1]
        results = []
        for b in range(len(requests)):
            conf, ent, top, lat_pos, lat = stats[b]
            results.append(
                RolloutResult(
                    tokens=tokens[b],
                    stopped=stopped[b],
                    confidence=torch.tensor(conf),
                    entropy=torch.tensor(ent),
                    argmax=top,
                    latent_positions=lat_pos,
                    latents=torch.stack(lat) if lat else None,
                    forward_tokens=forward[b],
                )
            )
        return results

    def _ends_with_stop_string(self, tokens: list[int]) -> bool:
        if not self.stop_strings:
            return False
        tail = self.tokenizer.decode(tokens[-16:])
        return any(s in tail for s in self.stop_strings)

    # -- PolicyGrad -------------------------------------------------------------------
    def grad(self, requests: list[PolicyGrad]) -> list[PolicyGradResult]:
        """One forward+backward for the batch's requests that the gradient memory cannot
        serve (grad_memory.py); see PolicyGrad for what comes back."""
        for r in requests:
            if r.lambda_reward != 0 and r.reward_embedding_grad is not None and self.reward_embeddings is None:
                raise RuntimeError("PolicyGrad carries a reward gradient but no aligned reward embeddings were set")
        passes = self._ahead_pass_with_prefix if self.prefix_cache is not None else self._ahead_pass
        served = serve_or_run(self.memory, [tuple(r.ids) for r in requests], [r.ahead_start for r in requests],
                              lambda missing: passes([requests[b] for b in missing]))
        pieces, logprobs = [], []
        for r, s in zip(requests, served):
            rows = s.entry.suffix(r.ahead_start)
            logprobs.append(float(rows["logprob"].sum()))
            with_reward = r.lambda_reward != 0 and r.reward_embedding_grad is not None
            pieces.append(AheadGrads(
                hidden=rows["hidden"],  # [m, H]
                policy=rows["grad"],  # [m, H]
                reward=r.reward_embedding_grad.to(self.device, torch.float32) if with_reward else None,  # [m, H_R]
                lambda_nll=r.lambda_nll,
                lambda_reward=r.lambda_reward,
            ))
        embeddings = self.embeddings
        project = VocabProjection(embeddings, self.reward_embeddings, self.spec.norm_chunk, self._log_softmax_head)
        # (positions, [k, V]) per request: fixed positions, or the first reaching the threshold
        answers = {b: (list(r.positions), None) for b, r in enumerate(requests)}
        fixed = [b for b, r in enumerate(requests) if r.norm_threshold is None and r.positions]
        for b, grads in zip(fixed, project([(pieces[b], list(requests[b].positions)) for b in fixed])):
            answers[b] = (list(requests[b].positions), grads)
        probed = [b for b, r in enumerate(requests) if r.norm_threshold is not None]
        found = project.first_reaching([(pieces[b], list(requests[b].positions), requests[b].norm_threshold)
                                        for b in probed], lazy=self.spec.lazy_probe)
        answers.update(zip(probed, found))
        results = []
        for b, r in enumerate(requests):
            positions, grads = answers[b]
            results.append(
                PolicyGradResult(
                    positions=positions,
                    grads=(torch.zeros(0, embeddings.shape[0]) if grads is None else grads).cpu(),
                    norms=project.norms(pieces[b]).cpu() if r.want_norms else None,  # diagnostics and tests
                    logprob=logprobs[b],
                    forward_tokens=served[b].tokens,
                    passes=int(served[b].ran),
                    prefix_tokens=served[b].prefix_tokens,
                )
            )
        return results

    @torch.no_grad()
    def _log_softmax_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """ℓ = log-softmax of the logits of hidden states [k, H] -> [k, V] (as in the pass)."""
        with self._autocast():
            return torch.log_softmax(self.model.get_output_embeddings()(hidden).float(), dim=-1)

    def _ahead_pass(self, requests: list[PolicyGrad]) -> list[tuple[Remembered, int, int]]:
        """Forward+backward over whole sequences (right padding). Per request: its rows
        (hidden states predicting each ahead token [m, H], ∂S/∂(embedding) there [m, H],
        token log-probs [m]), tokens run, prefix tokens built (none here)."""
        ids, mask = pad_rows([r.ids for r in requests], self.tokenizer.pad_token_id, left=False, device=self.device)
        inputs = self.embeddings[ids].detach().requires_grad_(True)  # [batch, T, H]
        # Row b's ahead token i (sequence position s_b + i) is predicted at s_b + i - 1.
        rows = torch.cat([torch.full((len(r.ids) - r.ahead_start,), b) for b, r in enumerate(requests)])
        at = torch.cat([torch.arange(r.ahead_start, len(r.ids)) for r in requests])
        with self._autocast():
            hidden, _ = self._hidden(inputs_embeds=inputs, attention_mask=mask, use_cache=False)
            predicting = hidden[rows, at - 1]  # [N, H]
            log_probs = torch.log_softmax(self._head(predicting), dim=-1)  # [N, V]
        token_logprob = log_probs.gather(1, ids[rows, at][:, None]).squeeze(1)  # [N]
        (grad_inputs,) = torch.autograd.grad(token_logprob.sum(), inputs)  # [batch, T, H]
        grads = [grad_inputs[b, r.ahead_start : len(r.ids)].float() for b, r in enumerate(requests)]
        return self._remembered(requests, predicting, token_logprob, grads, [len(r.ids) for r in requests],
                                [0] * len(requests))

    def _ahead_pass_with_prefix(self, requests: list[PolicyGrad]) -> list[tuple[Remembered, int, int]]:
        """Same rows as `_ahead_pass`, running only the ahead tokens on cached prefix KV."""
        embeddings = self.embeddings
        keys = [tuple(r.ids[: r.ahead_start]) for r in requests]
        with self._autocast():
            prefixes, built = self.prefix_cache.get_many(
                keys, lambda i: embeddings[torch.tensor(keys[i], device=self.device)])
        lengths = [len(r.ids) - r.ahead_start for r in requests]
        ahead_ids, _ = pad_rows([r.ids[r.ahead_start :] for r in requests], self.tokenizer.pad_token_id,
                                left=False, device=self.device)
        inputs = embeddings[ahead_ids].detach().requires_grad_(True)  # [batch, A, H]
        with self._autocast():
            hidden = forward_after_prefixes(self.model.base_model, prefixes, inputs, lengths)  # [batch, A, H]
            # ahead token i is predicted by the hidden state before it: the prefix's last for i = 0
            predicting = torch.cat(
                [torch.cat([p.last_hidden[None].to(hidden.dtype), hidden[b, : n - 1]]) for b, (p, n) in
                 enumerate(zip(prefixes, lengths))]
            )  # [N, H]
            log_probs = torch.log_softmax(self._head(predicting), dim=-1)  # [N, V]
        targets = torch.cat([ahead_ids[b, :n] for b, n in enumerate(lengths)])
        token_logprob = log_probs.gather(1, targets[:, None]).squeeze(1)  # [N]
        (grad_inputs,) = torch.autograd.grad(token_logprob.sum(), inputs)  # [batch, A, H]
        grads = [grad_inputs[b, :n].float() for b, n in enumerate(lengths)]
        return self._remembered(requests, predicting, token_logprob, grads, lengths, built)

    @staticmethod
    def _remembered(requests, predicting, token_logprob, grads, tokens, prefix_tokens):
        sizes = [len(r.ids) - r.ahead_start for r in requests]
        hidden, logprob = predicting.detach().split(sizes), token_logprob.detach().split(sizes)
        return [
            (Remembered(r.ahead_start, {"hidden": h, "grad": g, "logprob": lp}), n, built)
            for r, h, g, lp, n, built in zip(requests, hidden, grads, logprob, tokens, prefix_tokens)
        ]
