"""Accounts: NINKIK_ACCOUNTS_FILE, and the one-account settings read as one account, unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ninkik_tasks import accounts
from ninkik_tasks.config import Settings
from ninkik_tasks.errors import ConfigError
from ninkik_tasks.inventory import Registry, registries

A, B, C = "111111111111", "222222222222", "333333333333"
QUEUE_A = f"https://sqs.eu-central-1.amazonaws.com/{A}/ecr-docker-push"
QUEUE_B = f"https://sqs.eu-west-1.amazonaws.com/{B}/ecr-docker-push"


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in list(os.environ):
        if var.startswith(("NINKIK_", "AWS_")):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))


def settings_with(tmp_path: Path, data: Any, **overrides: Any) -> Settings:
    path = tmp_path / "accounts.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return Settings(accounts_file=path, **overrides)


def test_the_one_account_settings_are_one_account_with_the_process_identity() -> None:
    s = Settings(sqs_queue_url=QUEUE_A, aws_account_ids=[A, B])
    listed = accounts.of(s)
    assert [(a.id, a.regions, a.queues, a.identity) for a in listed] == [
        (A, ("eu-central-1",), (QUEUE_A,), "default"),
        (B, ("eu-central-1",), (), "default"),
    ]
    assert registries(s) == [Registry(A, "eu-central-1"), Registry(B, "eu-central-1")]
    # A queue of an account not listed (a central one) is still polled, as before accounts: with the first one.
    central = Settings(sqs_queue_url=QUEUE_B, aws_account_ids=[A], aws_regions=["eu-central-1"])
    assert accounts.queues(central) == [(accounts.of(central)[0], QUEUE_B)]


def test_a_file_gives_each_account_its_regions_queues_and_identity(tmp_path: Path) -> None:
    s = settings_with(
        tmp_path,
        {
            "accounts": [
                {
                    "id": A,
                    "queues": [QUEUE_A],
                    "role_arn": f"arn:aws:iam::{A}:role/ninkik-tasks",
                    "external_id": "ninkik-4f1c",
                },
                {"id": B, "regions": ["eu-west-1", "us-east-1"], "queues": [QUEUE_B], "profile": "docker-user"},
                {"id": C},  # its events come through another account's queue; the process's own identity
            ]
        },
        aws_regions=["eu-central-1"],
    )
    a, b, c = accounts.of(s)
    assert (a.identity, a.regions, a.duration_seconds, a.session_name) == (
        "role",
        ("eu-central-1",),
        3600,
        "ninkik-tasks",
    )
    assert (b.identity, b.profile, c.identity, c.queues) == ("profile", "docker-user", "default", ())
    assert accounts.queues(s) == [(a, QUEUE_A), (b, QUEUE_B)]
    assert registries(s, account=B) == [Registry(B, "eu-west-1"), Registry(B, "us-east-1")]
    assert accounts.accepted(s) == (
        {A, B, C},
        {A: {"eu-central-1"}, B: {"eu-west-1", "us-east-1"}, C: {"eu-central-1"}},
    )
    s.require_ingest()
    with pytest.raises(ConfigError, match=f"account 444444444444 is not configured: name one of {A}, {B}, {C}"):
        registries(s, account="444444444444")


@pytest.mark.parametrize(
    ("data", "line"),
    [
        ([{"id": A, "regions": ["eu-central-1"]}, {"id": A}], f"account {A} is listed twice"),
        (
            [{"id": A, "regions": ["eu-central-1"], "queues": [QUEUE_B]}],
            f"queue {QUEUE_B} of account {A} is in account {B}, which is not listed",
        ),
        (
            [{"id": A, "regions": ["eu-central-1"], "queues": [QUEUE_B]}, {"id": B, "regions": ["eu-west-1"]}],
            f"queue {QUEUE_B} is listed under account {A} but is in account {B}",
        ),
        ([{"id": "1234"}], "account 0 (id): String should match pattern"),
        (
            [{"id": A, "role_arn": f"arn:aws:iam::{B}:role/x"}],
            f"account 0: role arn:aws:iam::{B}:role/x is not in account {A}",
        ),
        ([{"id": A, "role_arn": f"arn:aws:iam::{A}:role/x", "profile": "p"}], "give role_arn or profile, not both"),
        ([{"id": A, "external_id": "abc"}], "external_id only go with role_arn"),
        ([{"id": A, "role": "x"}], "account 0 (role): Extra inputs are not permitted"),
        ([{"id": A, "queues": ["ecr-docker-push"]}], "is not an SQS queue URL"),
        ([{"id": A}], f"account {A} names no region: give it regions, or set NINKIK_AWS_REGIONS"),
        ("{", "is not valid JSON"),
        ({"accounts": []}, "accounts: List should have at least 1 item"),
    ],
)
def test_a_file_that_cannot_be_used_is_one_line(tmp_path: Path, data: Any, line: str) -> None:
    with pytest.raises(ConfigError) as raised:
        accounts.of(settings_with(tmp_path, data))
    assert line in str(raised.value) and "\n" not in str(raised.value)


def test_the_file_and_the_one_account_settings_do_not_mix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="NINKIK_SQS_QUEUE_URL / NINKIK_AWS_ACCOUNT_IDS are both set"):
        accounts.of(settings_with(tmp_path, [{"id": A, "regions": ["eu-central-1"]}], sqs_queue_url=QUEUE_A))


def test_ingest_refuses_a_bad_accounts_file_in_one_line_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "accounts.json"
    path.write_text(json.dumps([{"id": A, "regions": ["eu-central-1"]}, {"id": A, "regions": ["eu-west-1"]}]))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NINKIK_", "AWS_"))}
    env |= {"NINKIK_ACCOUNTS_FILE": str(path), "NINKIK_METRICS_PORT": "0", "NINKIK_HEALTH_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "ninkik_tasks.cli", "ingest"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"ninkik-tasks: NINKIK_ACCOUNTS_FILE {path}: account {A} is listed twice: list each account once"
    ]
