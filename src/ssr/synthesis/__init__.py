"""Self-synthesized rehearsal data: ICL prompts, parsing, filtering, selection and refinement."""

from ssr.synthesis.parser import ParsedInstance, parse_continuation
from ssr.synthesis.prompts import IclPrompt, build_icl_prompts

__all__ = ["IclPrompt", "build_icl_prompts", "ParsedInstance", "parse_continuation"]
