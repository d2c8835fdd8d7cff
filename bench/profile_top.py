"""The top entries of a py-spy profile (`py-spy record --format raw`, collapsed stacks), by own and total time.

bench/pipeline.py --profile DIR records ingest and the worker during scenario 4a's measured phase with py-spy
(`pip install py-spy`), and Celery alone's worker (bench/celery_floor.py) into DIR/celery.txt, and prints these
tables and the two workers' samples by category side by side (`compare`); on its own:

    python bench/profile_top.py DIR/worker.txt [--top 25]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

# "name (path/to/module.py:12)" -> "name (module.py)": entries of one function, whatever its line.
_FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^():]+)(?::\d+)?\)$")


def frame(text: str) -> str:
    """A frame without its line number and directories."""
    m = _FRAME.match(text)
    return f"{m['name']} ({Path(m['file']).name})" if m else text


def read(path: Path) -> tuple[Counter[str], Counter[str], int]:
    """(own samples by function, samples with the function anywhere on the stack, all samples)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [frame(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    return own, total, samples


# Where a worker's samples go, by the first of these that a sample's stack contains (task events before publishing:
# a publish's task-sent event counts as an event).
CATEGORIES = (
    ("task events (sent, received, started, succeeded)", ("celery/events/", "Request.send_event")),
    ("publishing the next step", ("Signature.apply_async", "Celery.send_task", "Task.apply_async")),
    ("storing a result", ("celery/backends/",)),
    ("the chain's steps (ours; Celery alone's no-op tasks)", ("ninkik_tasks/pipeline.py", "noop_chain.py")),
    ("receiving (BRPOP, decoding, QoS, acks)", ("kombu/transport/", "Message.ack", "kombu/messaging.py")),
    ("strategy and request", ("celery/worker/strategy.py", "celery/worker/request.py", "on_task_received")),
    ("logging", ("logging/",)),
    ("running a task (trace)", ("celery/app/trace.py",)),
)
OTHER = "other (event loop, threads)"


def categories(path: Path) -> tuple[Counter[str], int]:
    """(samples by CATEGORIES label, all samples)."""
    out: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        out[next((label for label, keys in CATEGORIES if any(k in stack for k in keys)), OTHER)] += n
    return out, samples


def compare(profiles: list[tuple[str, Path, int]], rate: int = 200) -> str:
    """A markdown table: each profile's samples by category as ms per event (samples / `rate` per s / events)."""
    counted = [(name, *categories(path), events) for name, path, events in profiles]
    lines = ["| GIL ms per event | " + " | ".join(name for name, *_ in counted) + " |"]
    lines.append("|---|" + "---:|" * len(counted))
    for label in [*(label for label, _ in CATEGORIES), OTHER, "all"]:
        cells = [(samples if label == "all" else c[label]) * 1000 / rate / events for _, c, samples, events in counted]
        lines.append(f"| {label} | " + " | ".join(f"{v:.2f}" for v in cells) + " |")
    return "\n".join(lines)


def top(path: Path, n: int = 25) -> str:
    """Two markdown tables: the functions with the most own time, and the most total time (share of samples)."""
    own, total, samples = read(path)
    lines = [f"{path.name}: {samples} samples", "", "| own % | function | | total % | function |"]
    lines.append("|---:|---|---|---:|---|")
    for (f1, c1), (f2, c2) in zip(own.most_common(n), total.most_common(n), strict=False):
        lines.append(f"| {100 * c1 / samples:.1f} | `{f1}` | | {100 * c2 / samples:.1f} | `{f2}` |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    for path in args.profiles:
        print(top(path, args.top), end="\n\n")


if __name__ == "__main__":
    main()
