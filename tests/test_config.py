"""Settings: the region every AWS client gets (botocore alone reads AWS_DEFAULT_REGION only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ninkik_tasks.config import Settings

EMULATOR = "http://moto:5000/123456789012/ecr-docker-push"


@pytest.fixture(autouse=True)
def _no_region(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "NINKIK_AWS_REGIONS", "NINKIK_SQS_QUEUE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))


@pytest.mark.parametrize(
    ("url", "region"),
    [
        ("https://sqs.eu-central-1.amazonaws.com/166666666666/ecr-docker-push", "eu-central-1"),
        ("https://eu-west-1.queue.amazonaws.com/166666666666/ecr-docker-push", "eu-west-1"),
        ("https://sqs-fips.us-gov-west-1.amazonaws.com/166666666666/q", "us-gov-west-1"),
        ("https://vpce-0a1b-2c3d.sqs.us-east-2.vpce.amazonaws.com/166666666666/q", "us-east-2"),
        ("https://sqs.cn-north-1.amazonaws.com.cn/166666666666/q", "cn-north-1"),
        (EMULATOR, None),
    ],
)
def test_the_queue_url_names_the_region(url: str, region: str | None) -> None:
    assert Settings(sqs_queue_url=url).queue_region() == region


def test_aws_region_then_aws_default_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NINKIK_SQS_QUEUE_URL", EMULATOR)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    assert Settings().queue_region() == "us-west-2"
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    settings = Settings()
    assert settings.queue_region() == "eu-central-1" and settings.allowed_regions() == ["eu-central-1"]
    # A region in the URL wins: that is where the queue is.
    monkeypatch.setenv("NINKIK_SQS_QUEUE_URL", "https://sqs.ap-south-1.amazonaws.com/166666666666/q")
    assert Settings().queue_region() == "ap-south-1"


def test_the_profile_region_when_no_variable_names_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("[profile ninkik]\nregion = eu-north-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "ninkik")
    assert Settings(sqs_queue_url=EMULATOR).queue_region() == "eu-north-1"
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")  # boto3 says so when a client is made
    assert Settings(sqs_queue_url=EMULATOR).queue_region() is None


def test_the_sqs_read_timeout_follows_the_long_poll() -> None:
    from pydantic import ValidationError

    from ninkik_tasks.clients import sqs_config

    assert sqs_config(Settings()).read_timeout == 25
    assert sqs_config(Settings(sqs_wait_seconds=2)).read_timeout == 7
    with pytest.raises(ValidationError, match="less than or equal to 20"):
        Settings(sqs_wait_seconds=21)  # SQS's own limit on WaitTimeSeconds
