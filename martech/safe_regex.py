"""Regular expressions that staff type in and that run on public input.

Channel rules match every captured UTM source and medium, so a pattern such as
``(a+)+$`` must not be able to stall ingestion. They are compiled with RE2,
whose matching time is linear in the input (no backtracking). RE2 refuses what
it cannot run in linear time (look-around, back-references); the refusal is
reported to the editor as the reason the pattern is not accepted.
"""
from __future__ import annotations

import re2

# RE2 compiles a pattern into an automaton; this bounds its memory per pattern.
MAX_MEMORY = 8 << 20


class PatternError(ValueError):
    """The pattern is not a regular expression RE2 can run."""


def compile_pattern(pattern: str):
    """The compiled RE2 pattern, or PatternError saying why it is refused."""
    options = re2.Options()
    options.log_errors = False
    options.max_mem = MAX_MEMORY
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "invalid pattern"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise PatternError(
            f"{reason} (patterns run with RE2: no look-around or back-references)"
        ) from exc
