"""The errors the domain raises; tasks map them to retries or recorded failures."""

from __future__ import annotations


class ConfigError(Exception):
    """A setting is missing or wrong; the message says which and how to fix it."""


class TransientError(Exception):
    """Worth retrying later: throttling, 5xx, timeouts, a dependency that is down."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ScanNotReady(TransientError):
    """The image's scan has not finished (not found, PENDING or IN_PROGRESS)."""

    def __init__(self, message: str, remaining: float | None = None, next_read: float | None = None) -> None:
        super().__init__(message)
        self.remaining = remaining  # seconds left of NINKIK_SCAN_WAIT_SECONDS
        self.next_read = next_read  # when to read the status again (ScanWaits)


class PermanentError(Exception):
    """Retrying cannot help; the chain ends and the reason is recorded."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class InvalidEvent(Exception):
    """A queue message that is not an event ninkik-tasks accepts."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class InvalidFilter(ValueError):
    """A backfill filter that cannot be used (not a UUID, not a date, unknown tenant); the message says which."""
