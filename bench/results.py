"""bench/RESULTS.md: the current figure of every row first, in one table, then every run's details, newest last.

Each benchmark that writes its figures calls `record`: its rows replace theirs in the table, with the date, the
commit measured and the command; the other rows stay as they were; its details are appended below.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
CURRENT = "## Current figures"
COLUMNS = ("row", "figure", "date", "commit", "command")
INTRO = f"""# Benchmark results

How to run each benchmark, and what its rows mean: [README.md](README.md).

{CURRENT}

The latest figure of every row, rewritten by each run that measures it (bench/results.py); the runs' details
follow, newest last. Commit: the one measured (`+`: with changes not committed yet); for runs before
2026-12-05, the commit that recorded the run.
"""
RUNS = "The runs, newest last:"
_CELL = re.compile(r"(?<!\\)\|")


def commit(root: Path = RESULTS.parent.parent) -> str:
    """The checked-out commit, with `+` if tracked files have changes (what a run measures)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
    )
    return (head.stdout.strip() or "?") + ("+" if dirty.stdout.strip() else "")


def relative(command: str, root: Path = RESULTS.parent.parent) -> str:
    """The command as run from the repository's root: its paths inside the repository made relative."""
    return command.replace(f"{root}/", "")


def read(text: str) -> tuple[dict[str, list[str]], str]:
    """(row -> [figure, date, commit, command], the runs' details) from RESULTS.md's text."""
    current: dict[str, list[str]] = {}
    head, found, rest = text.partition(RUNS)
    if not found:  # none yet, or a file from before the table: all of it is details, under its title
        return current, text.partition("\n")[2].replace("Newest sections last.", "", 1).strip()
    for line in head.splitlines():
        if not line.startswith("| ") or line.startswith(("| row |", "|---")):
            continue
        cells = [c.strip().replace("\\|", "|") for c in _CELL.split(line.strip().strip("|"))]
        if len(cells) == len(COLUMNS):
            current[cells[0]] = [cells[1], cells[2], cells[3], cells[4].strip("`")]
    return current, rest.strip()


def render(current: dict[str, list[str]], details: str) -> str:
    """The whole file: the intro, the table of current figures, the runs."""
    lines = [INTRO, "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row, (figure, date, measured, command) in current.items():
        cells = [row, figure, date, measured, f"`{command}`" if command else ""]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n\n" + RUNS + "\n\n" + details.strip() + "\n"


def record(figures: list[tuple[str, str]], command: str, details: str, path: Path = RESULTS) -> None:
    """Put this run's figures (row, figure) in the table, in place of their rows' older ones; append its details."""
    current, runs = read(path.read_text() if path.exists() else "")
    stamp = [dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"), commit(), command]
    for row, figure in figures:
        current[row] = [figure, *stamp]
    path.write_text(render(current, runs + "\n\n" + details.strip()))
