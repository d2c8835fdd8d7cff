"""Each account's AWS clients act as that account: its role (assumed with botocore's machinery and renewed before it
expires), its profile, or the process's own identity; on moto, where an assumed role's calls land in its account."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Stack
from stsproxy import StsProxy

from ninkik_tasks import clients, local
from ninkik_tasks.accounts import Account
from ninkik_tasks.errors import IdentityUnavailable

ROLE_ACCOUNT = "111111111111"
ROLE = f"arn:aws:iam::{ROLE_ACCOUNT}:role/ninkik-tasks"


@pytest.fixture
def sts(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[StsProxy]:
    """This process's AWS calls go to moto, its STS through the proxy; no client made before is reused."""
    proxy = StsProxy(stack.moto_url).start()
    for name, value in {**local.aws_env(stack.moto_url), "AWS_ENDPOINT_URL_STS": proxy.url}.items():
        monkeypatch.setenv(name, value)
    clients._cache.clear()
    yield proxy
    clients._cache.clear()
    proxy.stop()


def role_account(role: str = ROLE) -> Account:
    return Account(
        id=ROLE_ACCOUNT, regions=(local.REGION,), role_arn=role, external_id="ninkik-test", session_name="test"
    )


def test_a_role_accounts_calls_act_in_its_account_and_its_session_is_renewed_before_it_expires(
    stack: Stack, sts: StsProxy
) -> None:
    role = f"{ROLE}-{uuid.uuid4().hex[:6]}"
    account = role_account(role)
    repository = f"r-{uuid.uuid4().hex[:8]}/shop"
    ecr = clients.ecr(account, local.REGION)
    made = ecr.create_repository(repositoryName=repository)["repository"]
    assert made["registryId"] == ROLE_ACCOUNT  # moto: what the assumed role creates is in the role's account
    assert repository not in {r["repositoryName"] for r in stack.ecr.describe_repositories()["repositories"]}
    assert clients.sts(account, local.REGION).get_caller_identity()["Account"] == ROLE_ACCOUNT
    assert sts.count(role) == 1  # one session for the account's ECR and STS clients alike
    # Sessions of 4 s (the proxy shortens them; botocore renews a quarter of an hour before the end of an hour's
    # session, so a quarter of these): renewed in time, not for every call.
    sts.lifetime = 4.0
    clients._cache.clear()
    ecr = clients.ecr(account, local.REGION)
    calls, until = 0, time.monotonic() + 6
    while time.monotonic() < until:
        ecr.describe_repositories(registryId=ROLE_ACCOUNT, repositoryNames=[repository])
        calls += 1
        time.sleep(0.05)
    renewals = sts.count(role) - 1
    assert 2 <= renewals <= 4, (renewals, calls)


def test_a_role_that_refuses_is_the_accounts_error_with_its_fix(stack: Stack, sts: StsProxy) -> None:
    account = role_account()
    sts.refused.add(ROLE)
    with pytest.raises(IdentityUnavailable) as raised:
        clients.ecr(account, local.REGION).describe_repositories(registryId=ROLE_ACCOUNT)
    assert raised.value.permanent and raised.value.account == ROLE_ACCOUNT
    assert str(raised.value).startswith(f"account {ROLE_ACCOUNT}: role {ROLE} cannot be assumed (AccessDenied: ")
    assert "trust policy" in str(raised.value)
    sts.refused.clear()  # trusted again: the next call assumes it
    clients.ecr(account, local.REGION).describe_repositories(registryId=ROLE_ACCOUNT)


def test_a_profile_account_reads_its_profile(stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "credentials").write_text("[docker-user]\naws_access_key_id = profiled\naws_secret_access_key = x\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    clients._cache.clear()
    try:
        account = Account(id="123456789012", regions=(local.REGION,), profile="docker-user")
        assert clients.session(account).get_credentials().access_key == "profiled"  # type: ignore[union-attr]
        with pytest.raises(Exception, match="profile nobody is not in the AWS config or credentials files"):
            clients.session(Account(id="123456789012", profile="nobody"))
    finally:
        clients._cache.clear()
