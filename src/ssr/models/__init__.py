"""Base model and tokenizer loading, LoRA adapters and prompt templates."""

from ssr.models.loading import load_base_model, load_tokenizer, resolve_model
from ssr.models.templates import PromptTemplate, get_template

__all__ = ["load_base_model", "load_tokenizer", "resolve_model", "PromptTemplate", "get_template"]
