"""The policy's view of a question: its chat template, its context length, its stop tokens.

Built from the tokenizer and the model's config files, without weights, so a driver that
serves models on other machines (the Ray runtime) encodes prompts exactly as the policy
engine that holds the model does: both go through `PromptEncoder.for_model`.
"""

from __future__ import annotations

from nabla_dist.algorithm.program import Prompt


class PromptEncoder:
    def __init__(self, tokenizer, context: int, stop_token_ids: tuple[int, ...], top_k: int = 0):
        self.tokenizer = tokenizer
        self.context = context
        self.stop_token_ids = stop_token_ids
        self.top_k = top_k  # the generation config's top-k (0: none), for samplers that leave it unset

    @classmethod
    def for_model(cls, tokenizer, model_config, generation_config) -> "PromptEncoder":
        """Stop tokens: the tokenizer's EOS and the generation config's; context: the model's
        `max_position_embeddings` (unbounded when the config has none); top-k: the generation
        config's."""
        eos = getattr(generation_config, "eos_token_id", None)
        eos = list(eos) if isinstance(eos, (list, tuple)) else [eos]
        stop = tuple(sorted({tokenizer.eos_token_id, *eos} - {None}))
        context = getattr(model_config, "max_position_embeddings", None) or 10**9
        return cls(tokenizer, context, stop, getattr(generation_config, "top_k", None) or 0)

    @classmethod
    def from_files(cls, spec) -> "PromptEncoder":
        """For a `ModelSpec`, reading only its tokenizer and config files."""
        from nabla_dist.engines.loading import generation_config, load_tokenizer, model_config

        return cls.for_model(load_tokenizer(spec.tokenizer_path), model_config(spec.path), generation_config(spec.path))

    def encode(self, question: str) -> Prompt:
        """Apply the chat template (generation prompt added); check the context."""
        if not question or not question.strip():
            raise ValueError("empty problem text: every problem needs a non-empty question")
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"tokenizer {self.tokenizer.name_or_path!r} has no chat template; use an instruct "
                "model or set tokenizer.chat_template (e.g. a ChatML template) in its tokenizer_config.json"
            )
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= self.context:
            raise ValueError(
                f"prompt of {len(ids)} tokens does not fit the policy context of {self.context} tokens; "
                "shorten the problem or use a model with a longer context"
            )
        return Prompt(ids=ids, text=question, stop_token_ids=self.stop_token_ids)
