"""One line of `check`'s report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Level = Literal["OK", "INFO", "WARN", "FAIL"]  # INFO: a fact to read, neither good nor bad


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    level: Level
    what: str
    message: str
    setting: bool = False  # a FAIL whose fix is a setting's value (a URL, a file): `check` exits 2 then

    def line(self) -> str:
        """The line as printed."""
        return f"{self.level:<4} {self.what}: {self.message}"
