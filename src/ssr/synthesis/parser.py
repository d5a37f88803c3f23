"""Parse ICL continuations into (input, output) candidates.

The continuation follows a prompt that ends in `Input:`, so its first chunk is an input.
Split on `Input:`, then each chunk at its `Output:`. Every returned string is a stripped
substring of the continuation: the parser cuts, it never writes.

Two kinds of chunk are returned with a verdict, so they are recorded but never kept:
- `multiple_outputs`: a chunk with more than one `Output:` is not an instance (the release
  drops it too);
- `truncated`: the last chunk of a continuation that ended by length, not EOS, was cut
  mid-way (`complete=False`).

Open-domain continuations (after a prompt ending in `Instruction:`) split on `Instruction:`;
a chunk is an instance only with exactly one `Input:` followed by exactly one `Output:`
(verdict `malformed` otherwise, as the release's Alpaca parser drops it); `<noinput>` reads
as an empty input. With `instruction_only=True`, a complete chunk with neither marker (an
instruction the model wrote and then stopped) is an instruction-only candidate instead: no
input, no output (the open-domain counterpart of an input-only candidate, whose output the
latest model writes when refining).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParsedInstance:
    input: str
    output: str | None
    """None when the chunk had no `Output:` marker (an input-only candidate)."""
    verdict: str | None = None
    """None for a candidate; `multiple_outputs`, `malformed` or `truncated` for a chunk that is not one."""
    instruction: str | None = None
    """Open-domain candidates: the instruction written before `Input:`."""


def parse_continuation(text: str, complete: bool = True) -> list[ParsedInstance]:
    """Candidates of one continuation; `complete=False` when it ended by length (cut)."""
    chunks = text.split("Input:")
    out = []
    for k, chunk in enumerate(chunks):
        if not chunk.strip():
            continue
        x, marker, rest = chunk.partition("Output:")
        y = rest.split("Output:", 1)[0].strip() if marker else None
        if not complete and k == len(chunks) - 1:
            verdict = "truncated"
        elif chunk.count("Output:") > 1:
            verdict = "multiple_outputs"
        else:
            verdict = None
        out.append(ParsedInstance(x.strip(), y, verdict))
    return out


def parse_open_domain(text: str, complete: bool = True, instruction_only: bool = False) -> list[ParsedInstance]:
    """Candidates of one open-domain continuation; `complete=False` when it ended by length;
    `instruction_only`: a chunk without `Input:` or `Output:` is a candidate with no input or output."""
    from ssr.synthesis.prompts import NO_INPUT

    chunks = text.split("Instruction:")
    out = []
    for k, chunk in enumerate(chunks):
        if not chunk.strip():
            continue
        head, _, rest = chunk.partition("Input:")
        x, _, y = rest.partition("Output:")
        well_formed = chunk.count("Input:") == 1 and chunk.count("Output:") == 1 and "Output:" not in head
        alone = instruction_only and "Input:" not in chunk and "Output:" not in chunk
        if not complete and k == len(chunks) - 1:
            verdict = "truncated"
        elif not well_formed and not alone:
            verdict = "malformed"
        else:
            verdict = None
        x = x.strip()
        out.append(ParsedInstance("" if x == NO_INPUT else x, y.strip() if well_formed else None, verdict, head.strip()))
    return out
