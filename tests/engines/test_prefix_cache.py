"""A prefix that extends a cached one runs only the new tokens, and gives what a full pass gives."""

from __future__ import annotations

import pytest

from tests.engines.test_grad_memory import engines, gradients, sequence  # noqa: F401 (fixture)
from tests.engines.test_gradients import relative_error


@pytest.mark.parametrize("extend_by", [1, 5])
def test_committing_tokens_extends_the_cached_prefix_and_changes_no_gradient(tiny_paths, sequence, extend_by):
    prompt, response = sequence
    ids, start = prompt + response, len(prompt)
    cached = engines(tiny_paths, prefix_cache=8, grad_memory=0)
    plain = engines(tiny_paths, prefix_cache=0, grad_memory=0)
    first, first_reward = gradients(*cached, ids, start + 2, start)
    assert first.prefix_tokens == start + 2  # built whole: nothing cached yet
    later, later_reward = gradients(*cached, ids, start + 2 + extend_by, start)
    assert later.prefix_tokens == extend_by  # only the newly committed tokens ran
    assert 0 < later_reward.prefix_tokens < first_reward.prefix_tokens
    reference, reference_reward = gradients(*plain, ids, start + 2 + extend_by, start)
    assert relative_error(later.grads, reference.grads) < 1e-5
    assert relative_error(later_reward.embedding_grad, reference_reward.embedding_grad) < 1e-5
    assert later_reward.reward == pytest.approx(reference_reward.reward, abs=1e-5)
    assert later.logprob == pytest.approx(reference.logprob, abs=1e-4)
