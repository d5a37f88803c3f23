"""Prompt templates: how (definition, input) becomes the model's prompt and output its target.

The same template is used to train, to evaluate and to refine synthetic outputs, so a
rehearsed instance looks exactly like a real one to the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from ssr.errors import ConfigError

ALPACA_HEADER = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
)


@dataclass(frozen=True)
class PromptTemplate:
    """Formats instances for one model family. `name` is one of raw, chat, alpaca, llama2."""

    name: str
    tokenizer: object

    def prompt_text(self, definition: str, input: str) -> str:
        if self.name == "chat":
            messages = [{"role": "user", "content": f"{definition}\n\n{input}"}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if self.name == "alpaca":
            return f"{ALPACA_HEADER}### Instruction:\n{definition}\n\n### Input:\n{input}\n\n### Response:\n"
        if self.name == "llama2":
            return f"[INST] {definition}\n\n{input} [/INST]"
        return f"{definition}\n\nInput: {input}\nOutput:"  # raw

    def prompt_ids(self, definition: str, input: str, max_length: int | None = None) -> list[int]:
        """Prompt tokens; over `max_length` the *start* is cut so the answer cue survives."""
        # A chat template writes its own special tokens (BOS included): adding them again
        # would double the BOS, a defect of the original release.
        add_special = self.name != "chat"
        ids = self.tokenizer(self.prompt_text(definition, input), add_special_tokens=add_special)["input_ids"]
        return ids[-max_length:] if max_length else ids

    def target_ids(self, output: str, max_length: int | None = None) -> list[int]:
        """The response tokens, cut to `max_length` with EOS last (the model must learn to stop)."""
        text = output if self.name in ("chat", "alpaca") else f" {output}"
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if max_length:
            ids = ids[: max_length - 1]
        return ids + [self.tokenizer.eos_token_id]


def get_template(name: str, tokenizer) -> PromptTemplate:
    """Resolve `model.template`; `auto` picks the tokenizer's chat template when it has one."""
    if name == "auto":
        name = "chat" if getattr(tokenizer, "chat_template", None) else "raw"
    if name == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ConfigError("model.template: 'chat' but the tokenizer has no chat template")
    if name not in ("raw", "chat", "alpaca", "llama2"):
        raise ConfigError(f"model.template: unknown template {name!r}")
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no EOS token; training needs one to teach the model to stop")
    return PromptTemplate(name, tokenizer)
