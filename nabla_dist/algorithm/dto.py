"""Differentiable Textual Optimization of one ahead position (ALGORITHM.md, inner loop).

The objective's gradient with respect to the straight-through one-hot, G = ∂L/∂y_0, comes
from the engines (a `PolicyGrad` request). Here it is chained through the softmax
Jacobian (and, for the `latents` parametrization, through the LM head) and fed to Adam
with the reference implementation's cosine schedule. The straight-through forward is the
one-hot of argmax z at every step, step 0 included (Alg. 2). Gradient caching: G depends
only on which token sits at position 0, so it is reused while argmax z is unchanged and
recomputed when the argmax moves.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Generator

import torch

from nabla_dist.algorithm.checks import check


@dataclass(frozen=True)
class DTOConfig:
    max_iters: int = 20  # Adam steps per optimized position (the paper's MATH-500 script)
    lr: float = 0.01
    min_lr_ratio: float = 0.1  # floor of the cosine schedule
    st_temperature: float = 1.0  # τ of the straight-through softmax
    grad_caching: bool = True  # reuse G while argmax z is unchanged (exact; off for ablations)
    # Speed: the inner loop's [V] arithmetic treats subnormal numbers (below ~1e-38) as 0. At a
    # peaked position most of softmax(z) and of Adam's state is subnormal, and x86 CPUs take
    # several times longer on those; z moves by less than 1e-30 either way.
    flush_denormals: bool = True

    def __post_init__(self):
        check(self.max_iters >= 1, "max_iters", self.max_iters, "use ≥ 1")
        check(self.lr > 0, "lr", self.lr, "use > 0")
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", self.min_lr_ratio, "use a value in [0, 1]")
        check(self.st_temperature > 0, "st_temperature", self.st_temperature, "use > 0")


@dataclass
class DTOOutcome:
    logits: torch.Tensor  # [V] optimized logits at position 0
    grad_evaluations: int  # how many times G was computed (each = 4 model calls)
    cache_hits: int  # steps after the first served from the gradient cache
    tokens_visited: list[int]  # argmax token at each step, for the event log
    used_known: bool  # step 0 took the gradient passed in as `known`


def chain_to_latent(
    grad_onehot: torch.Tensor, z: torch.Tensor, head: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    """∂L/∂z from G = ∂L/∂y through y = softmax(logits(z)/τ): Jᵀ G, then W_headᵀ for latents.

    grad_onehot: [V]; z: [V] (logits) or [H] (latents, with head: [V, H]). Returned in z's dtype.
    The [V] vector is formed in fp64: at a peaked position y·G nearly cancels G's entry at the
    argmax, and fp32 loses up to 10% of the result there.
    """
    logits = z if head is None else head @ z  # [V]
    y = torch.softmax(logits.double() / temperature, dim=-1)
    g = grad_onehot.double()
    grad_logits = (y * (g - torch.dot(y, g)) / temperature).to(z.dtype)  # [V]
    return grad_logits if head is None else head.T @ grad_logits


@contextlib.contextmanager
def _subnormals_as_zero(on: bool):
    """CPU arithmetic flushes subnormals while inside (restored to torch's default after)."""
    if not on:
        yield
        return
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def lr_factor(step: int, max_iters: int, min_lr_ratio: float) -> float:
    """The reference implementation's schedule: cosine from 1, clipped below at the floor."""
    return max(min_lr_ratio, 0.5 * (1.0 + math.cos(math.pi * step / max_iters)))


def optimize_position(
    z0: torch.Tensor,
    known: tuple[int, torch.Tensor] | None,
    grad_for_token: Callable[[int], Generator[Any, Any, torch.Tensor]],
    cfg: DTOConfig,
    head: torch.Tensor | None = None,
) -> Generator[Any, Any, DTOOutcome]:
    """Run the inner loop from z0 ([V] logits or [H] latent) and return optimized logits.

    `known`: (token, G) already computed for that token at position 0 (by the selector's
    probe); it serves step 0 when argmax z0 is that token. `grad_for_token(t)` is a
    sub-program (it yields model requests) returning G with token t at position 0. Use as
    `outcome = yield from optimize_position(...)`.
    """
    z = z0.detach().float().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=cfg.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.max_iters, cfg.min_lr_ratio)
    )
    cached_token, cached_grad = (known[0], known[1].float()) if known is not None else (None, None)
    evaluations, hits, visited, used_known = 0, 0, [], False
    for step in range(cfg.max_iters):
        with torch.no_grad(), _subnormals_as_zero(cfg.flush_denormals):
            token = int((z if head is None else head @ z).argmax())  # the straight-through forward
        visited.append(token)
        if token == cached_token and (cfg.grad_caching or step == 0):
            hits += step > 0
            used_known |= step == 0
        else:
            cached_token, cached_grad = token, (yield from grad_for_token(token)).float()
            evaluations += 1
        with torch.no_grad(), _subnormals_as_zero(cfg.flush_denormals):  # not around the yield: engines run there
            z.grad = chain_to_latent(cached_grad, z.detach(), head, cfg.st_temperature)
            optimizer.step()
            schedule.step()
    with torch.no_grad():
        final = z.detach() if head is None else head @ z.detach()
    return DTOOutcome(final, evaluations, hits, visited, used_known)
