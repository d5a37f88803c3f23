"""Parse ICL continuations into (input, output) candidates.

The continuation follows a prompt that ends in `Input:`, so its first chunk is an input.
Split on `Input:`, then each chunk at its first `Output:`; the output ends where a further
`Output:` begins. Every returned string is a stripped substring of the continuation: the
parser cuts, it never writes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ParsedInstance:
    input: str
    output: str | None
    """None when the chunk had no `Output:` marker (an input-only candidate)."""


def parse_continuation(text: str) -> list[ParsedInstance]:
    out = []
    for chunk in text.split("Input:"):
        if not chunk.strip():
            continue
        if "Output:" in chunk:
            x, _, rest = chunk.partition("Output:")
            y = rest.split("Output:", 1)[0]
            out.append(ParsedInstance(x.strip(), y.strip()))
        else:
            out.append(ParsedInstance(chunk.strip(), None))
    return out
