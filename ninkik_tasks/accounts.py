"""The AWS accounts ninkik-tasks reads: each one's id, regions, queues and identity, in one place.

Either NINKIK_ACCOUNTS_FILE (a JSON file, docs/accounts.md) or, without it, the one-account settings of the setup
guide (NINKIK_SQS_QUEUE_URL, NINKIK_AWS_ACCOUNT_IDS, NINKIK_AWS_REGIONS), each listed account read with the
process's own identity. Identities are resolved to AWS sessions by clients.py.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Settings

ACCOUNT_ID = r"^\d{12}$"
# The account of a role ARN (aws, aws-cn, aws-us-gov partitions).
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}):role/[\w+=,.@/-]{1,512}$")
# The account of a queue URL: https://sqs.<region>.amazonaws.com/<account>/<name>, an emulator's too.
_QUEUE_PATH = re.compile(r"^/(\d{12})/[\w-]{1,80}(\.fifo)?/?$")
# The region in an AWS queue URL's host: sqs.eu-central-1.amazonaws.com, sqs-fips.us-east-1..., the legacy
# eu-central-1.queue.amazonaws.com, VPC endpoints (vpce-....sqs.eu-central-1.vpce.amazonaws.com), China.
_REGION_IN_HOST = re.compile(r"(?:^|\.)([a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d+)\.")
FILE_FORM = '{"accounts": [{"id": "111111111111", "regions": ["eu-central-1"], "queues": [...], "role_arn": ...}]}'
DEFAULT_SESSION_NAME = "ninkik-tasks"
Identity = Literal["role", "profile", "default"]


class Account(BaseModel):
    """One AWS account: its registries' regions, the queues that carry events, and how its identity is obtained."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=ACCOUNT_ID)
    regions: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()
    # A role assumed from the process's own identity (IRSA, an instance profile, keys), through botocore's
    # AssumeRole machinery (clients.py), refreshed before it expires.
    role_arn: str | None = None
    external_id: str | None = Field(default=None, min_length=2, max_length=1224)
    session_name: str = Field(default=DEFAULT_SESSION_NAME, pattern=r"^[\w+=,.@-]{2,64}$")
    duration_seconds: int = Field(default=3600, ge=900, le=43200)
    # A named profile of the AWS config and credentials files (the guide stores its keys with --profile).
    profile: str | None = Field(default=None, min_length=1)

    @field_validator("regions")
    @classmethod
    def _regions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for region in value:
            if not re.fullmatch(r"[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d+", region):
                raise ValueError(f"{region!r} is not an AWS region")
        return value

    @field_validator("queues")
    @classmethod
    def _queues(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            if queue_account(url) is None:
                raise ValueError(f"{url!r} is not an SQS queue URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)")
        return value

    @model_validator(mode="after")
    def _one_identity(self) -> Account:
        if self.role_arn is not None and self.profile is not None:
            raise ValueError("give role_arn or profile, not both")
        if self.role_arn is None:
            role_only = {"external_id", "session_name", "duration_seconds"} & self.model_fields_set
            if role_only:
                raise ValueError(f"{', '.join(sorted(role_only))} only go with role_arn")
            return self
        match = _ROLE_ARN.fullmatch(self.role_arn)
        if match is None:
            raise ValueError(f"{self.role_arn!r} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)")
        if match.group(1) != self.id:
            raise ValueError(f"role {self.role_arn} is not in account {self.id}: give a role of the account itself")
        return self

    @property
    def identity(self) -> Identity:
        """How the account's credentials are obtained."""
        return "role" if self.role_arn else "profile" if self.profile else "default"

    def describe_identity(self) -> str:
        """The identity, for logs and `check` (never a secret: there is none in an Account)."""
        if self.role_arn:
            return f"role {self.role_arn}" + (" with an ExternalId" if self.external_id else " without ExternalId")
        if self.profile:
            return f"profile {self.profile}"
        return "the process's own identity"


class AccountsFile(BaseModel):
    """NINKIK_ACCOUNTS_FILE's shape."""

    model_config = ConfigDict(extra="forbid")
    accounts: list[Account] = Field(min_length=1)


def queue_account(url: str) -> str | None:
    """The account in a queue URL's path (None: not a queue URL)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("https", "http") or not parsed.hostname:
        return None
    match = _QUEUE_PATH.fullmatch(parsed.path)
    return match.group(1) if match else None


def queue_region(url: str, default: str | None) -> str | None:
    """The region a queue is reached in: the one in its AWS host, else `default` (an emulator's URL names none)."""
    host = (urlparse(url).hostname or "").lower()
    if host.endswith((".amazonaws.com", ".amazonaws.com.cn")) and (match := _REGION_IN_HOST.search(host)):
        return match.group(1)
    return default


def load(settings: Settings) -> list[Account]:
    """The accounts of these settings: NINKIK_ACCOUNTS_FILE's, else the one-account settings'. ConfigError (one
    line) for a file that cannot be used, an account named twice, or a queue of no listed account."""
    if settings.accounts_file is None:
        return _from_settings(settings)
    where = f"NINKIK_ACCOUNTS_FILE {settings.accounts_file}"
    if settings.sqs_queue_url or settings.aws_account_ids:
        raise ConfigError(
            f"{where} and NINKIK_SQS_QUEUE_URL / NINKIK_AWS_ACCOUNT_IDS are both set: put the queue and the accounts "
            "in the file and unset those two"
        )
    try:
        data = json.loads(settings.accounts_file.read_text())
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read ({exc.strerror or exc}): fix the path or its permissions") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where} is not valid JSON ({exc}): the form is {FILE_FORM}") from None
    if isinstance(data, list):
        data = {"accounts": data}
    default_regions = settings.aws_regions or ([settings.aws_region] if settings.aws_region else [])
    if isinstance(data, dict) and isinstance(data.get("accounts"), list):
        for item in data["accounts"]:
            if isinstance(item, dict) and not item.get("regions") and default_regions:
                item["regions"] = default_regions
    try:
        accounts = AccountsFile.model_validate(data).accounts
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(part) for part in first["loc"]]
        if len(loc) >= 2 and loc[0] == "accounts":
            at = f"account {loc[1]}" + (f" ({'.'.join(loc[2:])})" if loc[2:] else "")
        else:
            at = ".".join(loc) or "the file"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{where}: {at}: {message}: the form is {FILE_FORM}") from None
    _consistent(accounts, where)
    for account in accounts:
        if not account.regions:
            raise ConfigError(
                f"{where}: account {account.id} names no region: give it regions, or set NINKIK_AWS_REGIONS"
            )
    return accounts


def _consistent(accounts: list[Account], where: str) -> None:
    twice = [account for account, n in Counter(a.id for a in accounts).items() if n > 1]
    if twice:
        raise ConfigError(f"{where}: account {twice[0]} is listed twice: list each account once")
    ids = {a.id for a in accounts}
    seen: set[str] = set()
    for account in accounts:
        for url in account.queues:
            owner = queue_account(url)
            if owner not in ids:
                raise ConfigError(
                    f"{where}: queue {url} of account {account.id} is in account {owner}, which is not listed: list "
                    f"account {owner} (the queue is read with its identity), with or without registries of its own"
                )
            if owner != account.id:
                raise ConfigError(
                    f"{where}: queue {url} is listed under account {account.id} but is in account {owner}: list "
                    f"it under {owner} (a queue is read with its own account's identity; it may carry any account's "
                    "events)"
                )
            if url in seen:
                raise ConfigError(f"{where}: queue {url} is listed twice: list each queue once")
            seen.add(url)


def _from_settings(settings: Settings) -> list[Account]:
    """The one-account settings as accounts, all read with the process's own identity (as before accounts)."""
    ids = list(dict.fromkeys(settings.aws_account_ids))
    regions = tuple(settings.allowed_regions())
    queue = settings.sqs_queue_url
    # The queue goes with the account in its URL, else the first one: all share one identity here, so only the
    # label of its metrics depends on it.
    owner = queue_account(queue) if queue else None
    holder = owner if owner in ids else ids[0] if ids else None
    return [Account(id=i, regions=regions, queues=(queue,) if queue and i == holder else ()) for i in ids]


_loaded: dict[int, tuple[Settings, list[Account]]] = {}


def of(settings: Settings) -> list[Account]:
    """The accounts of `settings`, loaded once per Settings object."""
    made = _loaded.get(id(settings))
    if made is None or made[0] is not settings:  # another Settings at a freed one's address
        made = _loaded[id(settings)] = (settings, load(settings))
    return list(made[1])


def by_id(settings: Settings) -> dict[str, Account]:
    """Account id -> Account."""
    return {account.id: account for account in of(settings)}


def account_of(settings: Settings, account_id: str) -> Account:
    """The configured account; an unlisted one (an old failure retried after its account was removed) is read
    with the process's own identity, as every account was before accounts."""
    return by_id(settings).get(account_id) or Account(id=account_id, regions=tuple(settings.allowed_regions()))


def queues(settings: Settings) -> list[tuple[Account, str]]:
    """Every queue to poll, with the account whose identity reads it."""
    return [(account, url) for account in of(settings) for url in account.queues]


def accepted(settings: Settings) -> tuple[set[str], dict[str, set[str]]]:
    """The accounts whose events ingest accepts, and each one's regions (an event of another region is refused)."""
    listed = of(settings)
    return {a.id for a in listed}, {a.id: set(a.regions) for a in listed}
