"""The DTO inner loop: the chain to z, the schedule, and gradient caching."""

from __future__ import annotations

import pytest
import torch

from nabla_dist.algorithm.dto import DTOConfig, chain_to_latent, optimize_position


def run(program):
    """Drive a sub-program whose requests are plain callables (test stand-in for engines)."""
    try:
        request = next(program)
        while True:
            request = program.send(request())
    except StopIteration as stop:
        return stop.value


@pytest.mark.parametrize("parametrization", ["logits", "latents"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chain_to_latent_matches_finite_differences(parametrization, temperature):
    torch.manual_seed(0)
    vocab, hidden = 11, 5
    grad_onehot = torch.randn(vocab, dtype=torch.float64)
    head = torch.randn(vocab, hidden, dtype=torch.float64) if parametrization == "latents" else None
    z = torch.randn(hidden if head is not None else vocab, dtype=torch.float64)

    def objective(z):  # the linearization the inner loop follows: ⟨G, softmax(logits(z)/τ)⟩
        logits = z if head is None else head @ z
        return torch.dot(grad_onehot, torch.softmax(logits / temperature, -1))

    analytic = chain_to_latent(grad_onehot, z, head, temperature)
    eps = 1e-6
    numeric = torch.stack([
        (objective(z + eps * e) - objective(z - eps * e)) / (2 * eps) for e in torch.eye(len(z), dtype=torch.float64)
    ])
    assert torch.allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


def _token_gradients(vocab, seed=0):
    """A fixed G per token, like the engines return (G depends only on the token at position 0)."""
    # G_t penalizes token t and favours t + 1, so descent moves the argmax along
    eye = torch.eye(vocab)
    table = eye - eye.roll(1, dims=1) + 0.1 * torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed))
    calls = []

    def grad_for_token(token):
        def evaluate():
            calls.append(token)
            return table[token]

        return (yield evaluate)

    return grad_for_token, calls


@pytest.mark.parametrize("lr", [0.01, 0.3])
def test_gradient_caching_changes_nothing_and_counts_recomputations(lr):
    vocab = 7
    z0 = torch.randn(vocab, generator=torch.Generator().manual_seed(1))
    first = int(z0.argmax())
    outcomes = {}
    for caching in (True, False):
        grad_for_token, calls = _token_gradients(vocab)
        cfg = DTOConfig(max_iters=25, lr=lr, grad_caching=caching)
        outcomes[caching] = (run(optimize_position(z0, first, None, grad_for_token, cfg)), calls)
    (cached, cached_calls), (plain, plain_calls) = outcomes[True], outcomes[False]
    assert torch.equal(cached.logits, plain.logits)
    assert cached.tokens_visited == plain.tokens_visited
    visited = cached.tokens_visited
    changes = sum(a != b for a, b in zip(visited, visited[1:]))
    assert cached.grad_evaluations == len(cached_calls) == 1 + changes
    assert cached.cache_hits == 25 - 1 - changes
    assert plain.grad_evaluations == len(plain_calls) == 25
    if lr == 0.3:
        assert changes > 0, "the large step must move the argmax to exercise recomputation"


def test_reused_first_gradient_is_not_recomputed():
    vocab, token = 7, 3  # the rollout's own token need not be argmax z0
    z0 = torch.randn(vocab, generator=torch.Generator().manual_seed(2))
    fresh_fn, fresh_calls = _token_gradients(vocab)
    fresh = run(optimize_position(z0, token, None, fresh_fn, DTOConfig(max_iters=10)))
    assert fresh_calls[0] == token  # step 0 differentiates at the rollout's token
    reuse_fn, reuse_calls = _token_gradients(vocab)
    eye = torch.eye(vocab)
    probe_grad = (eye - eye.roll(1, dims=1) + 0.1 * torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0)))[token]
    reused = run(optimize_position(z0, token, probe_grad, reuse_fn, DTOConfig(max_iters=10)))
    assert torch.equal(reused.logits, fresh.logits)
    assert reuse_calls == fresh_calls[1:]


def test_cosine_schedule_decays_to_the_floor():
    vocab = 5
    seen = []
    grad_for_token, _ = _token_gradients(vocab)
    cfg = DTOConfig(max_iters=10, lr=0.1, min_lr_ratio=0.1)
    z0 = torch.zeros(vocab)
    original = torch.optim.Adam.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *a, **k)

    torch.optim.Adam.step = spy
    try:
        run(optimize_position(z0, 0, None, grad_for_token, cfg))
    finally:
        torch.optim.Adam.step = original
    assert seen[0] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(seen, seen[1:]))
    assert seen[-1] > 0.01 and seen[-1] < 0.02  # approaching the floor 0.1 · lr
