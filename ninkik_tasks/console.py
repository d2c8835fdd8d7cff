"""The rich Console that everything ninkik-tasks prints with rich goes through: never wrapped off a terminal."""

from __future__ import annotations

from rich.console import Console

# Where output is not a terminal (a log file, `| tee`, CI) rich wraps at 80 columns, and a URL or path copied from
# the output is broken: there a line is as long as it needs to be.
UNWRAPPED_WIDTH = 100_000


def console(stderr: bool = False) -> Console:
    """A Console on stdout (or stderr): on a terminal, wrapped to its width; elsewhere, never wrapped."""
    made = Console(stderr=stderr)
    if not made.is_terminal:
        made.soft_wrap = True
        made.width = UNWRAPPED_WIDTH
    return made
