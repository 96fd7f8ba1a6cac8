"""Vocabulary-space gradients from embedding gradients: where the DTO objective's policy
and reward terms meet (ALGORITHM.md, "DTO objective").

    ∂L/∂y_i = −λ_nll · (ℓ_i + E_π g^π_i) − λ_R · E_R g^R_i

Each product reads a whole [V, H] embedding matrix, so the positions asked by every request
of a batch go through it together, not one request at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass
class AheadGrads:
    """One request's pieces, on the engine's device."""

    hidden: torch.Tensor  # [m, H] the hidden states predicting the ahead tokens (ℓ_i = log-softmax of their logits)
    policy: torch.Tensor  # [m, H] ∂(Σ log π)/∂(policy input embedding)
    reward: torch.Tensor | None  # [m, H_R] ∂R/∂(reward input embedding), aligned to the policy
    lambda_nll: float
    lambda_reward: float


class VocabProjection:
    """∂L/∂y at chosen ahead positions of many requests, `max_rows` positions per product.

    `ell(hidden [k, H]) -> [k, V]` is the policy's log-softmax head: ℓ is formed only at the
    positions asked, so a request keeps [m, H] rows, not [m, V].
    """

    def __init__(self, policy_embeddings: torch.Tensor, reward_embeddings: torch.Tensor | None, max_rows: int,
                 ell: Callable[[torch.Tensor], torch.Tensor]):
        self.policy_t = policy_embeddings.float().T  # [H, V]
        self.reward_t = None if reward_embeddings is None else reward_embeddings.T  # [H_R, V]
        self.max_rows = max_rows
        self.ell = ell

    def __call__(self, asks: list[tuple[AheadGrads, list[int]]]) -> list[torch.Tensor]:
        """[k, V] for each (request, its k positions)."""
        out, group, rows = [], [], 0
        for ask in asks:
            if group and rows + len(ask[1]) > self.max_rows:
                out += self._product(group)
                group, rows = [], 0
            group.append(ask)
            rows += len(ask[1])
        return out + (self._product(group) if group else [])

    def _product(self, asks: list[tuple[AheadGrads, list[int]]]) -> list[torch.Tensor]:
        sizes = [len(positions) for _, positions in asks]
        lam_nll = torch.cat([torch.full((n, 1), a.lambda_nll) for (a, _), n in zip(asks, sizes)]).to(self.policy_t)
        ell = self.ell(torch.cat([a.hidden[p] for a, p in asks]))  # [K, V]
        out = -lam_nll * (ell + torch.cat([a.policy[p] for a, p in asks]) @ self.policy_t)
        with_reward = [i for i, (a, _) in enumerate(asks) if a.reward is not None]
        if with_reward:
            starts = [0, *torch.tensor(sizes).cumsum(0).tolist()]
            rows = torch.cat([torch.arange(starts[i], starts[i + 1]) for i in with_reward])
            lam_r = torch.cat([torch.full((sizes[i], 1), asks[i][0].lambda_reward) for i in with_reward])
            reward = torch.cat([asks[i][0].reward[asks[i][1]] for i in with_reward])  # [K_R, H_R]
            out[rows.to(out.device)] -= lam_r.to(out) * (reward @ self.reward_t)
        return list(out.split(sizes))

    def first_reaching(self, asks: list[tuple[AheadGrads, list[int], float]], lazy: bool = True):
        """For each (request, candidate positions, threshold): the first candidate whose
        ‖∂L/∂y‖ reaches the threshold and its gradient [1, V], or ([], None).

        Lazy: candidates are projected in windows of 1, 2, 4, … (at most `max_rows`), all
        requests in step, and a request stops at its first window that holds one: a probe
        usually passes at its first candidate and should not pay for the whole ahead ×
        vocabulary product. Not lazy: every ahead position is projected first, as the
        reference implementation does (the naive path of the benchmarks).
        """
        if not lazy:
            return [self._first_of_all(a, positions, threshold) for a, positions, threshold in asks]
        found: list = [([], None)] * len(asks)
        state = {i: (0, 1) for i, (_, positions, _) in enumerate(asks) if positions}  # window start, size
        while state:
            order = list(state)
            windows = [asks[i][1][state[i][0] : sum(state[i])] for i in order]
            for i, window, grads in zip(order, windows, self([(asks[i][0], w) for i, w in zip(order, windows)])):
                reaching = (grads.norm(dim=-1) >= asks[i][2]).nonzero().flatten().tolist()
                start, size = state.pop(i)
                if reaching:
                    k = reaching[0]
                    found[i] = ([window[k]], grads[k : k + 1])
                elif start + size < len(asks[i][1]):
                    state[i] = (start + size, min(2 * size, self.max_rows))
        return found

    def norms(self, ahead: AheadGrads) -> torch.Tensor:
        """‖∂L/∂y_i‖ at every ahead position [m], `max_rows` positions at a time."""
        everything = list(range(ahead.hidden.shape[0]))
        chunks = [(ahead, everything[s : s + self.max_rows]) for s in range(0, len(everything), self.max_rows)]
        return torch.cat([self([chunk])[0].norm(dim=-1) for chunk in chunks])

    def _first_of_all(self, ahead: AheadGrads, positions: list[int], threshold: float):
        norms = self.norms(ahead)
        first = next((p for p in positions if norms[p] >= threshold), None)
        return ([], None) if first is None else ([first], self([(ahead, [first])])[0])
