"""Settings: the only place that reads the environment."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, NonNegativeInt, PositiveInt, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import ConfigError

_QUEUE_REGION = re.compile(r"^https?://sqs[.-]([a-z0-9-]+)\.amazonaws\.com", re.IGNORECASE)

CsvList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    """Every setting of ninkik-tasks, from `NINKIK_*` variables (AWS uses boto3's own)."""

    model_config = SettingsConfigDict(env_prefix="NINKIK_", extra="ignore", env_ignore_empty=True)

    broker_url: str = "redis://127.0.0.1:6379/0"
    result_backend: str = "redis://127.0.0.1:6379/1"
    redis_url: str = "redis://127.0.0.1:6379/2"
    redis_namespace: str = "ninkik"
    # RabbitMQ's management API, for `check` (default: the broker's host, port 15672, its credentials)
    broker_management_url: str | None = None

    sqs_queue_url: str | None = None
    aws_account_ids: CsvList = Field(default_factory=list)
    aws_regions: CsvList = Field(default_factory=list)

    api_url: str | None = None
    api_token: SecretStr | None = None
    tenants_file: Path | None = None
    tenant_cache_seconds: int = 300
    http_timeout_seconds: float = 10.0

    # Ingest
    max_message_bytes: int = 256 * 1024
    event_dedupe_seconds: int = 4 * 24 * 3600
    delete_retry_seconds: int = 900

    # Chain
    scan_wait_seconds: int = 900
    result_expires_seconds: int = 7 * 24 * 3600
    sent_record_seconds: int = 90 * 24 * 3600
    broker_visibility_timeout: int = 240  # Redis broker only: see brokers/redis.py
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

    metrics_port: int = 9300  # ingest's Prometheus /metrics; 0 turns it off
    metrics_address: str = "0.0.0.0"

    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"

    @field_validator("aws_account_ids", "aws_regions", mode="before")
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

    def allowed_regions(self) -> list[str]:
        """The configured regions, else the queue's region, else boto3's default region."""
        if self.aws_regions:
            return self.aws_regions
        if self.sqs_queue_url and (match := _QUEUE_REGION.match(self.sqs_queue_url)):
            return [match.group(1)]
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        return [region] if region else []

    def queue_region(self) -> str | None:
        """The region to reach the queue in: the one in its URL, else boto3's default."""
        if self.sqs_queue_url and (match := _QUEUE_REGION.match(self.sqs_queue_url)):
            return match.group(1)
        return None

    def require_ingest(self) -> None:
        """Raise ConfigError naming the first setting ingest cannot run without."""
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


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read once; a bad value becomes a one-line ConfigError."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "NINKIK_" + str(first["loc"][0]).upper() if first["loc"] else "a NINKIK_ setting"
        raise ConfigError(f"{name} is invalid: {first['msg']}") from None
