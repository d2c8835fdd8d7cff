"""Settings: the only place that reads the environment."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlparse

from pydantic import (
    AliasChoices,
    Field,
    NonNegativeInt,
    PositiveInt,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import ConfigError
from .health import DEFAULT_DIR, DEFAULT_MAX_AGE_SECONDS

CsvList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Every setting of ninkik-tasks, from `NINKIK_*` variables (AWS credentials use boto3's own chain)."""

    model_config = SettingsConfigDict(env_prefix="NINKIK_", extra="ignore", env_ignore_empty=True)

    broker_url: str = "redis://127.0.0.1:6379/0"
    result_backend: str = "redis://127.0.0.1:6379/1"
    redis_url: str = "redis://127.0.0.1:6379/2"
    redis_namespace: str = "ninkik"
    # RabbitMQ's management API, for `check` (default: the broker's host, port 15672, its credentials)
    broker_management_url: str | None = None

    # boto3's default region; botocore itself reads only AWS_DEFAULT_REGION, so every client gets it from here.
    aws_region: str | None = Field(default=None, validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"))

    # The accounts, their queues and identities (accounts.py); without it the three settings below are one account.
    accounts_file: Path | None = None
    sqs_queue_url: str | None = None
    aws_account_ids: CsvList = Field(default_factory=list)
    aws_regions: CsvList = Field(default_factory=list)

    api_url: str | None = None
    api_token: SecretStr | None = None
    tenants_file: Path | None = None
    # Sweeps under a policy that cannot list the registry: the tenants and repositories to name (besides the
    # tenants file's and those seen in events).
    tenant_uuids: CsvList = Field(default_factory=list)
    repositories: CsvList = Field(default_factory=list)
    tenant_cache_seconds: int = 300
    http_timeout_seconds: float = 10.0
    # ninkik's certificate is verified against this CA file instead of httpx's bundle (certifi): a private CA.
    # Apart from NINKIK_TLS_CA_FILE, which replaces the trust store of the broker and Redis (public CAs on AWS).
    api_ca_file: Path | None = None

    # Ingest
    # SQS's long poll (0-20 s): how long one ReceiveMessage waits for messages; the call's read timeout is 5 s more.
    sqs_wait_seconds: int = Field(default=20, ge=0, le=20)
    max_message_bytes: int = 256 * 1024
    event_dedupe_seconds: int = 4 * 24 * 3600
    delete_retry_seconds: int = 900

    # Chain
    scan_wait_seconds: int = 900
    scan_poll_seconds: float = Field(default=5.0, gt=0)  # a waiting scan's status is read this often (at least)
    # While scan-complete events arrive for the image's account and region (one seen in the last hour), a waiting
    # scan is read again only this often, a safety net for a lost event (0: always the poll).
    scan_safety_poll_seconds: float = Field(default=180.0, ge=0)
    # A push's scan takes seconds at least: its first read waits this long (0: read at once).
    scan_first_read_seconds: float = Field(default=5.0, ge=0)
    # Enhanced scanning says ACTIVE before Inspector's first scan of the image is done: an ACTIVE scan with no
    # findings is waited for this long after the push (within NINKIK_SCAN_WAIT_SECONDS) before it is reported.
    enhanced_settle_seconds: NonNegativeInt = 300
    # An untagged image (a platform manifest of a multi-platform build, pushed just before its index) is reported
    # on its own only if no index listed it within this many seconds after its push (0: at once).
    untagged_hold_seconds: float = Field(default=30.0, ge=0)
    # "Inspector2 Finding" events (one per finding, many per image within seconds): an image's report is read
    # this long after the first event of a burst, once for all of them (freshness.py).
    finding_refresh_seconds: float = Field(default=10.0, gt=0)
    result_expires_seconds: int = 7 * 24 * 3600
    sent_record_seconds: int = 90 * 24 * 3600
    broker_visibility_timeout: int = 240  # Redis broker only: see brokers/redis.py
    # RabbitMQ: a peer silent this long (a worker host gone, a NAT dropping the connection) is dead and its
    # unacknowledged tasks go back to their queue (the broker sends a heartbeat every half of it).
    broker_heartbeat_seconds: PositiveInt = 30
    aws_give_up_seconds: int = 3600
    notify_give_up_seconds: int = 24 * 3600
    retry_backoff_max_seconds: int = 300
    ecr_calls_per_second: float = 20.0  # shared by all workers, per region; 0 turns the limit off

    # Backfill, reconciliation (catches pushes whose events were lost) and findings refresh
    reconcile_interval_seconds: PositiveInt = 300
    reconcile_overlap_seconds: NonNegativeInt = 600
    reconcile_first_lookback_seconds: PositiveInt = 24 * 3600
    rescan_interval_seconds: PositiveInt = 24 * 3600
    rescan_days: PositiveInt = 30
    # The lifecycle sweep (lifecycle.py): images ninkik has against the registry, at the rescan's pace.
    lifecycle_interval_seconds: PositiveInt = 24 * 3600
    # The coverage gauge (coverage/gauge.py): how often beat counts the Holdings, and the tenants named per registry
    coverage_interval_seconds: PositiveInt = 600
    coverage_top_tenants: PositiveInt = 20

    metrics_port: int = 9300  # ingest's Prometheus /metrics; 0 turns it off
    metrics_address: str = "0.0.0.0"

    # Liveness and readiness files each process's loop keeps fresh (docs/health.md; `ninkik-tasks health` reads
    # these two variables itself, with the same defaults), and the age past which a loop is stuck.
    health_dir: Path = Path(DEFAULT_DIR)
    health_max_age_seconds: float = Field(default=DEFAULT_MAX_AGE_SECONDS, gt=0)

    # TLS (amqps://, rediss://): certificates are verified against this CA file, else the system's trust store.
    tls_ca_file: Path | None = None

    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _region_from_profile(self) -> Settings:
        # Neither variable set: the region of AWS_PROFILE's section of ~/.aws/config, as boto3 would use.
        if self.aws_region is None:
            import botocore.exceptions
            import botocore.session

            try:
                self.aws_region = botocore.session.Session().get_config_variable("region") or None
            except botocore.exceptions.BotoCoreError:  # e.g. no such profile: boto3 says so when used
                self.aws_region = None
        return self

    @field_validator("aws_account_ids", "aws_regions", "tenant_uuids", "repositories", mode="before")
    @classmethod
    def _split_csv(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("aws_account_ids")
    @classmethod
    def _accounts_are_ids(cls, value: list[str]) -> list[str]:
        for account in value:
            if not re.fullmatch(r"\d{12}", account):
                raise ValueError(f"{account!r} is not a 12-digit AWS account ID")
        return value

    @field_validator("tenant_uuids")
    @classmethod
    def _tenants_are_uuids(cls, value: list[str]) -> list[str]:
        for tenant in value:
            if not re.fullmatch(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", tenant):
                raise ValueError(f"{tenant!r} is not a tenant UUID")
        return [t.lower() for t in value]

    def allowed_regions(self) -> list[str]:
        """The configured regions, else the queue's region (its URL's, else AWS_REGION)."""
        if self.aws_regions:
            return self.aws_regions
        region = self.queue_region()
        return [region] if region else []

    def queue_region(self) -> str | None:
        """The region to reach NINKIK_SQS_QUEUE_URL in: the one in its URL, else AWS_REGION / AWS_DEFAULT_REGION."""
        from .accounts import queue_region

        return queue_region(self.sqs_queue_url, self.aws_region) if self.sqs_queue_url else self.aws_region

    def require_ingest(self) -> None:
        """Raise ConfigError naming the first setting ingest cannot run without."""
        from . import accounts

        if self.accounts_file is not None:
            listed = accounts.of(self)  # ConfigError for a file that cannot be used
            if not accounts.queues(self):
                raise ConfigError(
                    f"NINKIK_ACCOUNTS_FILE {self.accounts_file} lists no queue: give an account the queue that "
                    "carries its events (queues: [URL])"
                )
            for account in listed:
                for url in account.queues:
                    if not accounts.queue_region(url, self.aws_region or account.regions[0]):
                        raise ConfigError(f"the queue URL {url} names no region: set AWS_REGION to its region")
            return
        if not self.sqs_queue_url:
            raise ConfigError(
                "NINKIK_SQS_QUEUE_URL is not set: set it to the URL of the ecr-docker-push queue "
                "(aws sqs get-queue-url --queue-name ecr-docker-push)"
            )
        if not self.aws_account_ids:
            raise ConfigError(
                "NINKIK_AWS_ACCOUNT_IDS is not set: set it to the comma-separated AWS account IDs "
                "whose pushes ninkik should receive"
            )
        if not self.queue_region():
            raise ConfigError(
                f"the queue URL {self.sqs_queue_url} names no region: set AWS_REGION to the queue's region"
            )
        if not self.allowed_regions():
            raise ConfigError(
                "no AWS region known: set NINKIK_AWS_REGIONS or AWS_REGION to the region of your registries"
            )

    def require_tenant_directory(self) -> None:
        """Raise ConfigError unless tenants can be looked up (API or file)."""
        if not self.tenants_file and not self.api_url:
            raise ConfigError(
                "neither NINKIK_API_URL nor NINKIK_TENANTS_FILE is set: set NINKIK_API_URL "
                "(and NINKIK_API_TOKEN) to your ninkik instance"
            )


# Variables the project's own scripts read (workers/entrypoint.sh), not Settings: known all the same.
SCRIPT_VARIABLES = ("NINKIK_WORKER_POOL", "NINKIK_WORKER_CONCURRENCY", "NINKIK_WORKER_QUEUES")


def known_variables() -> frozenset[str]:
    """Every NINKIK_* variable ninkik-tasks reads: the Settings fields and the scripts' own."""
    fields = Settings.model_fields.items()
    return frozenset({"NINKIK_" + name.upper() for name, f in fields if f.validation_alias is None}) | frozenset(
        SCRIPT_VARIABLES
    )


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One line per NINKIK_* variable that nothing reads (a misspelt setting), with the closest known name."""
    import difflib

    known = known_variables()
    lines = []
    for name in sorted(environ):
        if name.startswith("NINKIK_") and name not in known:
            # Compared without the prefix, which every name shares.
            close = difflib.get_close_matches(name[7:], [k[7:] for k in known], n=1, cutoff=0.7)
            hint = f": did you mean NINKIK_{close[0]}?" if close else ": docs/configuration.md lists the known ones"
            lines.append(f"{name} is not a setting of ninkik-tasks and is ignored{hint}")
    return lines


def safe_url(url: str) -> str:
    """The URL with its password (if any) replaced by ***, fit for logs and messages."""
    parsed = urlparse(url)
    return url.replace(f":{parsed.password}@", ":***@") if parsed.password else url


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read once; a bad value becomes a one-line ConfigError."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        name = field if field.startswith("AWS_") else "NINKIK_" + field.upper() if field else "a NINKIK_ setting"
        raise ConfigError(f"{name} is invalid: {first['msg']}") from None
