"""A generative-verifier reward: a causal LM judges the solution; R = log p("yes").

For users with no trained reward model: the policy itself (or any instruct LM) reads the
question and the proposed solution, is asked whether the solution is correct, and the
reward is the log-probability of its answering "yes". It is differentiable in the
response embeddings like any other reward, so it serves `RewardGrad` unchanged.
"""

from __future__ import annotations

import torch

from nabla_dist.engines.reward import PLACEHOLDER, RewardEngine

PROMPT = (
    "Question: {question}\n\nProposed solution: {solution}\n\n"
    "Is the proposed solution correct? Answer with yes or no."
)


def verdict_token_id(tokenizer, verdict: str) -> int:
    """The one token of `verdict`; refuses a word the tokenizer splits."""
    ids = tokenizer(verdict, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(
            f"reward.verdict={verdict!r} is {len(ids)} tokens for {tokenizer.name_or_path!r} — "
            "choose a verdict word that is a single token (e.g. 'yes' or 'Yes')"
        )
    return ids[0]


class GenerativeVerifierEngine(RewardEngine):
    """A RewardEngine whose model is a causal LM; the verdict word is `spec.verdict`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.verdict_id = verdict_token_id(self.tokenizer, self.spec.verdict)

    def check_model(self, model) -> None:
        if model.get_output_embeddings() is None:
            raise ValueError(
                f"verifier {model.name_or_path!r} ({type(model).__name__}) has no LM head; "
                "load it with AutoModelForCausalLM"
            )

    def conversation(self, question: str) -> str:
        prompt = PROMPT.format(question=question, solution=PLACEHOLDER)
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )

    def readout(self, last_hidden: torch.Tensor) -> torch.Tensor:
        logits = self.model.get_output_embeddings()(last_hidden).float()  # [batch, V]
        return torch.log_softmax(logits, dim=-1)[:, self.verdict_id]
