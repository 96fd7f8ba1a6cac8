"""A driver without the model encodes prompts exactly as the policy engine that holds it."""

from __future__ import annotations

import pytest

from nabla_dist.engines.build import build_policy_engine
from nabla_dist.engines.prompt import PromptEncoder
from nabla_dist.engines.spec import PolicySpec


@pytest.mark.parametrize("path", ["tiny:policy", "tiny:policy_tied", "toy:policy"])
def test_prompt_encoder_from_files_equals_the_engines(tiny_paths, path):
    spec = PolicySpec(path)
    engine = build_policy_engine(spec)
    driver = PromptEncoder.from_files(spec)
    assert driver.stop_token_ids == engine.prompts.stop_token_ids and driver.stop_token_ids
    assert driver.context == engine.prompts.context
    question = "Compute ((17 + 25) * 3 - 48) / 6."
    assert driver.encode(question) == engine.prompts.encode(question)


def test_a_prompt_longer_than_the_context_is_refused_with_its_length(tiny_paths):
    encoder = PromptEncoder.from_files(PolicySpec("tiny:policy"))
    short = PromptEncoder(encoder.tokenizer, 8, encoder.stop_token_ids)
    with pytest.raises(ValueError, match=r"prompt of \d+ tokens does not fit the policy context of 8 tokens"):
        short.encode("Compute ((17 + 25) * 3 - 48) / 6.")
