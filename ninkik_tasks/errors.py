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


class IdentityUnavailable(TransientError):
    """An account's identity cannot be had (its role refused, no credentials to assume it with): its chains are
    retried with the usual backoff, then recorded under IDENTITY_UNAVAILABLE with the account in the message."""

    def __init__(self, account: str, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.account = account
        self.permanent = permanent  # refused (trust policy, ExternalId): not a passing outage of STS


class PermanentError(Exception):
    """Retrying cannot help; the chain ends and the reason is recorded."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SweepStopped(Exception):
    """The worker is stopping: the sweep stopped between two images, its chains started so far recorded."""


class InvalidEvent(Exception):
    """A queue message that is not an event ninkik-tasks accepts."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class InvalidFilter(ValueError):
    """A backfill filter that cannot be used (not a UUID, not a date, unknown tenant); the message says which."""


class IgnoredEvent(Exception):
    """A well-formed AWS event that is simply not a push: counted and dropped, never quarantined."""

    def __init__(self, reason: str, message: str, event: object = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.event = event  # the parsed event (ImageScanned, Inspector2Scanned) where there is a model for it


IMAGE_GONE = "image_gone"  # DescribeImages (or BatchGetImage) found no such image: removed from ninkik (lifecycle.py)
IDENTITY_UNAVAILABLE = "identity_unavailable"  # the failure reason of chains whose account's role was refused

# Reasons for IgnoredEvent: the label of ninkik_ingest_ignored_total{reason}.
IGNORED_PUSH_FAILED = "push_failed"  # "ECR Image Action" (PUSH, DELETE, ...) whose result is not SUCCESS
IGNORED_IMAGE_SCAN = "image_scan"  # "ECR Image Scan": a basic scan finished
IGNORED_INSPECTOR_SCAN = "inspector2_scan"  # "Inspector2 Scan": Amazon Inspector's initial scan finished
IGNORED_INSPECTOR_FINDING = "inspector2_finding"  # "Inspector2 Finding": one finding created, updated or closed
IGNORED_OTHER_EVENT = "other_aws_event"  # any other ECR or Inspector event: replication, referrer, pull through cache
IGNORED_REASONS = (
    IGNORED_PUSH_FAILED,
    IGNORED_IMAGE_SCAN,
    IGNORED_INSPECTOR_SCAN,
    IGNORED_INSPECTOR_FINDING,
    IGNORED_OTHER_EVENT,
)
