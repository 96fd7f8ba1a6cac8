"""The DTO inner loop: the chain to z, the schedule, and gradient caching."""

from __future__ import annotations

import pytest
import torch

import math

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
    outcomes = {}
    for caching in (True, False):
        grad_for_token, calls = _token_gradients(vocab)
        cfg = DTOConfig(max_iters=25, lr=lr, grad_caching=caching)
        outcomes[caching] = (run(optimize_position(z0, None, grad_for_token, cfg)), calls)
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


def test_step_zero_differentiates_at_argmax_z0_and_reuses_a_known_gradient_only_there():
    vocab = 7
    z0 = torch.randn(vocab, generator=torch.Generator().manual_seed(2))
    top = int(z0.argmax())
    fresh_fn, fresh_calls = _token_gradients(vocab)
    fresh = run(optimize_position(z0, None, fresh_fn, DTOConfig(max_iters=10)))
    assert fresh_calls[0] == top  # the straight-through forward at step 0 is argmax z0 (Alg. 2)
    eye = torch.eye(vocab)
    table = eye - eye.roll(1, dims=1) + 0.1 * torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0))
    reuse_fn, reuse_calls = _token_gradients(vocab)
    reused = run(optimize_position(z0, (top, table[top]), reuse_fn, DTOConfig(max_iters=10)))
    assert torch.equal(reused.logits, fresh.logits) and reused.used_known
    assert reuse_calls == fresh_calls[1:]
    other = (top + 1) % vocab  # a gradient for another token (a sampled a_0 ≠ argmax) is not used
    stale_fn, stale_calls = _token_gradients(vocab)
    stale = run(optimize_position(z0, (other, table[other]), stale_fn, DTOConfig(max_iters=10)))
    assert torch.equal(stale.logits, fresh.logits) and not stale.used_known and stale_calls == fresh_calls


def test_schedule_is_the_reference_cosine_clipped_at_the_floor():
    vocab, steps, lr, floor = 5, 10, 0.1, 0.1
    seen = []
    grad_for_token, _ = _token_gradients(vocab)
    original = torch.optim.Adam.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *a, **k)

    torch.optim.Adam.step = spy
    try:
        run(optimize_position(torch.zeros(vocab), None, grad_for_token, DTOConfig(steps, lr, floor)))
    finally:
        torch.optim.Adam.step = original
    # max(floor, cosine), not floor + (1 - floor)·cosine: the last steps sit on the floor
    expected = [lr * max(floor, 0.5 * (1 + math.cos(math.pi * t / steps))) for t in range(steps)]
    assert seen == pytest.approx(expected, rel=1e-12)
    assert seen[-1] == pytest.approx(lr * floor)


def test_chain_vector_at_a_peaked_position_is_exact_in_fp32():
    """fp32 y·(G − y·G) cancels at the argmax of a peaked softmax; the vector is formed in fp64."""
    vocab = 50_000
    generator = torch.Generator().manual_seed(3)
    z = torch.randn(vocab, generator=generator) * 2
    z[7] = 40.0  # confidence ≈ 1
    grad = torch.randn(vocab, generator=generator) * 30
    exact = chain_to_latent(grad.double(), z.double(), None, 1.0)
    ours = chain_to_latent(grad, z, None, 1.0)
    assert ours.dtype == torch.float32
    y = torch.softmax(z, -1)
    fp32 = y * (grad - torch.dot(y, grad))  # what an all-fp32 chain computes
    error = lambda v: float((v.double() - exact).norm() / exact.norm())  # noqa: E731
    assert error(ours) < 1e-6 < error(fp32)


def test_flushing_subnormals_moves_z_by_nothing_that_matters():
    """At a peaked position most of softmax(z) is subnormal; treating it as 0 is a speed switch."""
    vocab = 3000  # _token_gradients holds a [vocab, vocab] table
    generator = torch.Generator().manual_seed(4)
    z0 = torch.randn(vocab, generator=generator) * 30  # confidence ≈ 1, like a confident random model
    outcomes = {}
    for flush in (True, False):
        grad_for_token, calls = _token_gradients(vocab, seed=5)
        outcomes[flush] = run(optimize_position(z0, None, grad_for_token, DTOConfig(max_iters=12, lr=0.5,
                                                                                  flush_denormals=flush))), calls
    (on, on_calls), (off, off_calls) = outcomes[True], outcomes[False]
    assert on.tokens_visited == off.tokens_visited and on_calls == off_calls
    assert torch.allclose(on.logits, off.logits, rtol=0, atol=1e-30)
    assert float(torch.tensor(1e-40) * 1) != 0.0  # the flag is restored after the loop
