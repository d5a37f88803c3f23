"""Prompt templates: how (definition, input) becomes the model's prompt and output its target.

The same template is used to train, to evaluate and to refine synthetic outputs, so a
rehearsed instance looks exactly like a real one to the model.

`vanilla`, `llama2` and `alpaca` reproduce the training templates of the paper's release (an
old LLaMA-Factory) token for token: the query is definition + blank line + input, each text
piece is tokenized on its own without special tokens, BOS comes first when the tokenizer has
one, and the response is tokenized on its own
and followed by EOS. The release's refinement prompts had defects (a leftover "generate a
title" line in the Alpaca one, a doubled BOS in the chat one); they are not copied: refinement
uses these same training templates.
"""

from __future__ import annotations

from dataclasses import dataclass

from ssr.errors import ConfigError

TEMPLATES = ("vanilla", "raw", "chat", "alpaca", "llama2")

# The Llama-2 chat model's default system prompt, as in the release (note the two spaces
# after "safe.").
LLAMA2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. "
    "Always answer as helpfully as possible, while being safe.  "
    "Your answers should not include any harmful, unethical, "
    "racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, "
    "explain why instead of answering something not correct. "
    "If you don't know the answer to a question, please don't share false information."
)
# The no-input Alpaca header (the release's `alpaca` template); the input goes into the query.
ALPACA_SYSTEM = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request."
)


def query_text(definition: str, input: str) -> str:
    """The release's query: the SuperNI `full_prompt` (definition, blank line, input); an
    instruction with no input (open-domain rows) is the query on its own."""
    return f"{definition}\n\n{input}" if input else definition


@dataclass(frozen=True)
class PromptTemplate:
    """Formats instances for one model family. `name` is one of `TEMPLATES`."""

    name: str
    tokenizer: object

    def prompt_pieces(self, definition: str, input: str) -> list[str]:
        """The prompt as the text pieces that are tokenized one by one (after the BOS)."""
        query = query_text(definition, input)
        if self.name == "vanilla":
            return [query]
        if self.name == "llama2":
            return [f"[INST] <<SYS>>\n{LLAMA2_SYSTEM}\n<</SYS>>\n\n{query} [/INST] "]
        if self.name == "alpaca":  # prefix, separator, prompt: three pieces in the release
            return [ALPACA_SYSTEM, "\n\n", f"### Instruction:\n{query}\n\n### Response:\n"]
        if self.name == "chat":
            messages = [{"role": "user", "content": query}]
            return [self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)]
        return [f"{definition}\n\nInput: {input}\nOutput:" if input else f"{definition}\n\nOutput:"]  # raw

    def prompt_text(self, definition: str, input: str) -> str:
        return "".join(self.prompt_pieces(definition, input))

    def bos_ids(self) -> list[int]:
        """[BOS] for the release's templates when the tokenizer has a BOS token. Put here
        explicitly: whether `add_special_tokens` adds it depends on the tokenizer (SmolLM2's
        and transformers 5's plain fast tokenizers add none)."""
        bos = self.tokenizer.bos_token_id
        return [bos] if self.name in ("vanilla", "llama2", "alpaca") and bos is not None else []

    def prompt_ids(self, definition: str, input: str, max_length: int | None = None) -> list[int]:
        """Prompt tokens; over `max_length` the *start* is cut so the answer cue survives."""
        if self.name == "raw":
            ids = self.tokenizer(self.prompt_text(definition, input), add_special_tokens=True)["input_ids"]
        else:
            # A chat template writes its own special tokens (BOS included): adding them again
            # would double the BOS, a defect of the original release.
            ids = self.bos_ids()
            for piece in self.prompt_pieces(definition, input):
                ids = ids + self.tokenizer(piece, add_special_tokens=False)["input_ids"]
        return ids[-max_length:] if max_length else ids

    def target_ids(self, output: str, max_length: int | None = None) -> list[int]:
        """The response tokens, cut to `max_length` with EOS last (the model must learn to stop).

        The response is tokenized on its own and follows the prompt directly; only `raw`,
        whose prompt ends in `Output:`, puts a space before it."""
        text = f" {output}" if self.name == "raw" else output
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if max_length:
            ids = ids[: max_length - 1]
        return ids + [self.tokenizer.eos_token_id]


def get_template(name: str, tokenizer) -> PromptTemplate:
    """Resolve `model.template`; `auto` picks the tokenizer's chat template when it has one,
    else `vanilla` (the release's template for base models)."""
    if name == "auto":
        name = "chat" if getattr(tokenizer, "chat_template", None) else "vanilla"
    if name == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ConfigError("model.template: 'chat' but the tokenizer has no chat template")
    if name not in TEMPLATES:
        raise ConfigError(f"model.template: unknown template {name!r}")
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no EOS token; training needs one to teach the model to stop")
    return PromptTemplate(name, tokenizer)
