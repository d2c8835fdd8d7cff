"""events.parse against what AWS really sends (tests/aws/) and against every kind of bad body; the samples replayed."""

from __future__ import annotations

import copy
import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import TENANT_A, TENANT_B, Pipeline
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ninkik_tasks.errors import IGNORED_REASONS, IgnoredEvent, InvalidEvent
from ninkik_tasks.events import FindingChanged, ImagePushed, ImageScanned, Inspector2Scanned, parse

EVENTS = Path(__file__).parent / "aws" / "events"
ACCOUNTS = {"123456789012"}
REGIONS = {"us-west-2", "us-east-1", "us-east-2", "eu-central-1"}  # those of the samples
BASE = "ecr-image-push.json"  # AWS's own sample push, the one the bad bodies below are made from


def recorded(name: str) -> dict[str, Any]:
    """A payload AWS published or delivered, from tests/aws/events/."""
    data: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return data


def accept(body: str | bytes, **overrides: Any) -> ImagePushed:
    return parse(body, **{"accounts": ACCOUNTS, "regions": REGIONS, **overrides})


def reason(body: str | bytes, **overrides: Any) -> str:
    """The reason code parse gives for refusing `body` (to quarantine it)."""
    with pytest.raises(InvalidEvent) as caught:
        accept(body, **overrides)
    return caught.value.reason


def ignored(body: str | bytes, **overrides: Any) -> IgnoredEvent:
    """What parse says when it drops `body` as a well-formed AWS event that is not a push."""
    with pytest.raises(IgnoredEvent) as caught:
        accept(body, **overrides)
    return caught.value


DELETE = object()


def changed(path: str, value: Any) -> str:
    """AWS's sample push with the field at dotted `path` set to `value` (or removed, for DELETE)."""
    event = copy.deepcopy(recorded(BASE))
    *parents, last = path.split(".")
    node = event
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return json.dumps(event, ensure_ascii=False)


# What AWS sends

D64 = "sha256:7f5b2640fe6fb4f46592dfd3410c4a79dac4f89e4782432e0378abcd12345678"


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
def test_aws_sample_push(as_bytes: bool) -> None:
    text = (EVENTS / BASE).read_text()
    pushed = accept(text.encode() if as_bytes else text)
    assert pushed == ImagePushed(
        event_id="13cde686-328b-6117-af20-0e5566167482",
        account="123456789012",
        region="us-west-2",
        repository="my-repository-name",
        digest=D64,
        tag="latest",
        time=datetime(2019, 11, 16, 1, 54, 34, tzinfo=UTC),
        source="push",
    )


def test_real_untagged_push_has_an_empty_tag_and_media_types() -> None:
    # Delivered by ECR in 2025 (awslabs/cfn-ecr-aws-soci-index-builder#137): "image-tag": "" is an untagged push.
    pushed = accept((EVENTS / "soci-pr137-untagged-push.json").read_text())
    assert pushed.tag is None
    assert pushed.digest == "sha256:2c2c0c11d801b86cfd661f214721d7a40c5368dc3c5777dd7c5f3f37860d4f4d"
    assert pushed.manifest_media_type == "application/vnd.oci.image.manifest.v1+json"
    assert pushed.artifact_media_type == "application/vnd.oci.image.config.v1+json"


def test_real_index_push_keeps_its_tag_and_has_no_artifact_type() -> None:
    pushed = accept((EVENTS / "soci-pr137-index-push.json").read_text())
    assert pushed.tag == "v4-soci"
    assert pushed.manifest_media_type == "application/vnd.oci.image.index.v1+json"
    assert pushed.artifact_media_type is None


def test_a_pushed_image_fits_in_a_task_message() -> None:
    pushed = accept((EVENTS / "soci-pr137-untagged-push.json").read_text())
    assert ImagePushed.model_validate(pushed.model_dump(mode="json")) == pushed


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ecr-image-scan.json", "image_scan"),
        ("ecr-scan-resource-change.json", "other_aws_event"),
        ("inspector2-scan.json", "inspector2_scan"),
        ("inspector2-finding.json", "inspector2_finding"),
        ("inspector2-finding-2024.json", "inspector2_finding"),
    ],
)
def test_other_aws_events_are_ignored_not_quarantined(name: str, expected: str) -> None:
    assert ignored((EVENTS / name).read_text()).reason == expected


@pytest.mark.parametrize(
    ("name", "change", "tag"),
    [
        ("ecr-image-delete.json", "deleted", "latest"),
        ("ecr-image-archive.json", "archived", None),
        ("ecr-image-restore.json", "restored", None),
    ],
)
def test_deletions_and_storage_class_changes_start_a_lifecycle_chain(name: str, change: str, tag: str | None) -> None:
    # AWS's own samples (tests/aws/SOURCES): the chain describes the image and tells ninkik what is true now.
    event = accept((EVENTS / name).read_text(), regions={"us-west-2", "us-east-1"})
    assert (event.source, event.change, event.tag) == ("lifecycle", change, tag)
    assert event.digest.startswith("sha256:") and event.repository in ("my-repository-name", "ubuntu")


def test_a_failed_deletion_is_dropped() -> None:
    body = json.loads((EVENTS / "ecr-image-delete.json").read_text())
    body["detail"]["result"] = "FAILURE"
    assert ignored(json.dumps(body), regions={"us-west-2"}).reason == "push_failed"


def test_every_sample_is_a_push_or_ignored() -> None:
    names = sorted(p.name for p in EVENTS.glob("*.json"))
    assert len(names) >= 8
    for name in names:
        try:
            accept((EVENTS / name).read_text())
        except IgnoredEvent as exc:
            assert exc.reason in IGNORED_REASONS, name


def test_basic_scan_event_is_parsed_for_later_use() -> None:
    event = ignored((EVENTS / "ecr-image-scan.json").read_text()).event
    assert isinstance(event, ImageScanned) and not isinstance(event, Inspector2Scanned)
    assert (event.repository, event.digest, event.status) == ("my-repository-name", D64, "COMPLETE")
    assert event.severity_counts == {"CRITICAL": 10, "MEDIUM": 9} and event.tags == []


def test_inspector_scan_event_names_the_repository_by_arn() -> None:
    event = ignored((EVENTS / "inspector2-scan.json").read_text()).event
    assert isinstance(event, Inspector2Scanned)
    assert event.repository == "amazon/amazon-ecs-sample"
    assert event.status == "INITIAL_SCAN_COMPLETE" and event.tags == ["latest"]
    assert event.digest == "sha256:36c7b282abd0186e01419f2e58743e1bf635808231049bbc9d77e50123456789"


FINDING = "inspector2-finding.json"
FINDING_DIGEST = "sha256:36c7b282abd0186e01419f2e58743e1bf635808231049bbc9d77e50123456789"


def finding(**changes: Any) -> dict[str, Any]:
    """AWS's 2021 "Inspector2 Finding" sample (console-style timestamps), with envelope or detail fields changed."""
    event = recorded(FINDING)
    detail = changes.pop("detail", {})
    event.update(changes)
    event["detail"].update(detail)
    return event


def test_inspector_finding_event_names_the_image_it_refreshes() -> None:
    event = ignored((EVENTS / FINDING).read_text()).event
    assert isinstance(event, FindingChanged)
    assert (event.account, event.region, event.repository) == ("123456789012", "us-east-2", "amazon/amazon-ecs-sample")
    assert event.digest == FINDING_DIGEST and event.status == "ACTIVE"


def test_the_current_docs_finding_event_names_its_image() -> None:
    """The Inspector guide's current ECR sample (2024): ISO time, `provider*` fields, an `image` object beside
    `awsEcrContainerImage`, and a stray top-level key, none of which change what is read."""
    event = ignored((EVENTS / "inspector2-finding-2024.json").read_text()).event
    assert isinstance(event, FindingChanged)
    assert (event.account, event.region, event.repository) == ("123456789012", "eu-central-1", "inspector2")
    assert event.digest == "sha256:84f507df33c6864d49c296fb734192696e4cb6f78166ac51ac8b9b118181085d"
    assert event.status == "ACTIVE"


@pytest.mark.parametrize("status", ["ACTIVE", "SUPPRESSED", "CLOSED"])
def test_every_finding_status_refreshes(status: str) -> None:
    event = ignored(json.dumps(finding(detail={"status": status}))).event
    assert isinstance(event, FindingChanged) and event.status == status


def test_a_delegated_administrators_finding_is_allowed_and_read_by_the_images_registry() -> None:
    # With an Inspector delegated administrator the event arrives in the administrator's account.
    event = ignored(json.dumps(finding(account="210987654321"))).event
    assert isinstance(event, FindingChanged)
    assert (event.account, event.event_account) == ("123456789012", "210987654321")
    # The envelope's account allowed, the image's registry not: refused as any event of another account.
    assert reason(json.dumps(finding(account="210987654321")), accounts={"210987654321"}) == "account_not_allowed"


def test_a_finding_names_its_image_by_arn_when_the_detail_does_not() -> None:
    event = finding()
    del event["detail"]["resources"][0]["details"]["awsEcrContainerImage"]
    parsed = ignored(json.dumps(event)).event
    assert isinstance(parsed, FindingChanged)
    assert (parsed.repository, parsed.digest) == ("amazon/amazon-ecs-sample", FINDING_DIGEST)


def test_a_finding_of_another_resource_is_dropped_and_a_malformed_image_quarantined() -> None:
    ec2 = finding(resources=["arn:aws:ec2:us-east-2:123456789012:instance/i-0123456789abcdef0"])
    ec2["detail"]["resources"] = [{"details": {"awsEc2Instance": {}}, "type": "AWS_EC2_INSTANCE"}]
    assert ignored(json.dumps(ec2)).reason == "other_aws_event"
    bad = finding()
    bad["detail"]["resources"][0]["details"]["awsEcrContainerImage"]["imageHash"] = "sha256:nothex"
    assert reason(json.dumps(bad)) == "wrong_shape"


# Variations of AWS's samples (AWS publishes no sample of these; each changes one field of one)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("detail.result", "FAILURE", "push_failed"),
        ("detail-type", "ECR Replication Action", "other_aws_event"),
        ("detail-type", "ECR Referrer Action", "other_aws_event"),
        ("detail-type", "ECR Pull Through Cache Action", "other_aws_event"),
        ("detail-type", "AWS API Call via CloudTrail", "other_aws_event"),
    ],
)
def test_variations_that_are_not_pushes_are_ignored(path: str, value: str, expected: str) -> None:
    assert ignored(changed(path, value)).reason == expected


def test_a_malformed_scan_event_is_quarantined() -> None:
    # Right type and source, wrong body: not what AWS sends, so an operator should see it.
    assert reason(changed("detail-type", "ECR Image Scan")) == "wrong_shape"


def test_an_ignored_event_from_another_account_is_still_quarantined() -> None:
    assert reason((EVENTS / "ecr-image-delete.json").read_text(), accounts={"210987654321"}) == "account_not_allowed"


def test_odd_media_types_do_not_lose_the_push() -> None:
    assert accept(changed("detail.manifest-media-type", "not a media type")).manifest_media_type is None
    assert accept(changed("detail.artifact-media-type", 42)).artifact_media_type is None


def test_account_not_allowed() -> None:
    body = (EVENTS / BASE).read_text()
    assert reason(body, accounts={"210987654321"}) == "account_not_allowed"
    assert reason(body, accounts=set()) == "account_not_allowed"


def test_region_not_allowed() -> None:
    body = (EVENTS / BASE).read_text()
    assert reason(body, regions={"eu-west-1"}) == "region_not_allowed"
    assert reason(changed("region", "eu-west-1")) == "region_not_allowed"


def test_a_region_is_allowed_only_for_the_accounts_that_list_it() -> None:
    body = (EVENTS / BASE).read_text()  # account 123456789012, us-west-2
    others = {"210987654321": {"us-west-2"}}
    assert accept(body, accounts={"123456789012", "210987654321"}, regions={"123456789012": {"us-west-2"}}).tag
    with pytest.raises(InvalidEvent, match="region us-west-2 is not listed for account 123456789012") as caught:
        accept(body, accounts={"123456789012", "210987654321"}, regions={"123456789012": {"eu-west-1"}, **others})
    assert caught.value.reason == "region_not_allowed"
    assert reason(body, accounts={"123456789012", "210987654321"}, regions=others) == "region_not_allowed"


def test_allow_lists_may_be_any_collection() -> None:
    body = (EVENTS / BASE).read_text()
    assert accept(body, accounts=["210987654321", "123456789012"], regions=("us-west-2",)).tag == "latest"


# Bad bodies


@pytest.mark.parametrize(
    "body",
    ["", "   ", "not json", "{", '{"id": }', "NaN-ish", b"\xff\xfe\xfa", b"\x00", "1" * 5000],
    ids=["empty", "blank", "text", "open-brace", "bad-value", "word", "bad-utf8", "nul", "huge-int"],
)
def test_not_json(body: str | bytes) -> None:
    assert reason(body) == "not_json"


@pytest.mark.parametrize("body", ["[]", json.dumps([recorded(BASE)]), '"a string"', "42", "null"])
def test_json_that_is_not_an_object(body: str) -> None:
    assert reason(body) == "wrong_shape"


@pytest.mark.parametrize(
    "path",
    [
        "id",
        "account",
        "time",
        "region",
        "detail",
        "detail.result",
        "detail.action-type",
        "detail.repository-name",
        "detail.image-digest",
    ],
)
def test_missing_field(path: str) -> None:
    assert reason(changed(path, DELETE)) == "wrong_shape"


@pytest.mark.parametrize("path", ["detail-type", "source"])
def test_missing_envelope_type(path: str) -> None:
    assert reason(changed(path, DELETE)) == "not_an_image_action"


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("id", 12345),
        ("id", ""),
        ("account", 123456789012),
        ("account", "12345678901"),
        ("time", "yesterday"),
        ("time", ["2026-11-27T10:00:00Z"]),
        ("region", "eu_central_1"),
        ("detail", []),
        ("detail", "PUSH"),
        ("detail.result", True),
        ("detail.action-type", None),
        ("detail.repository-name", ["a/b"]),
        ("detail.repository-name", "a"),
        ("detail.image-tag", 123),
    ],
)
def test_wrong_types(path: str, value: Any) -> None:
    assert reason(changed(path, value)) == "wrong_shape"


@pytest.mark.parametrize(
    "digest",
    [
        "sha512:" + "a" * 128,
        "sha256:" + "A" * 64,
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha256:" + "g" * 64,
        "a" * 64,
        "sha256:" + "a" * 64 + "\n",
        "sha256:" + "a" * 63 + "\u0661",
    ],
    ids=["sha512", "uppercase", "short", "long", "not-hex", "no-algorithm", "trailing-newline", "arabic-digit"],
)
def test_digest_must_be_sha256_hex(digest: str) -> None:
    assert reason(changed("detail.image-digest", digest)) == "wrong_shape"


def test_empty_tag_is_an_untagged_push() -> None:
    assert accept(changed("detail.image-tag", "")).tag is None
    assert accept(changed("detail.image-tag", DELETE)).tag is None


@pytest.mark.parametrize("tag", ["v1/2", "../latest", ".hidden", "-rc", " ", "a b", "latest\n", "x" * 301, "é"])
def test_bad_tag(tag: str) -> None:
    assert reason(changed("detail.image-tag", tag)) == "wrong_shape"


@pytest.mark.parametrize("tag", ["latest", "1.2.3", "_build-42", "v1.0.0-rc.1", "x" * 300])
def test_good_tag(tag: str) -> None:
    assert accept(changed("detail.image-tag", tag)).tag == tag


def test_oversized_body() -> None:
    body = (EVENTS / BASE).read_text()
    size = len(body.encode())
    assert accept(body, max_bytes=size).tag == "latest"
    assert reason(body, max_bytes=size - 1) == "too_large"
    assert reason(body.encode(), max_bytes=size - 1) == "too_large"


def test_size_is_counted_in_utf8_bytes() -> None:
    body = changed("resources", ["é" * 1000])
    assert len(body) < 2000 < len(body.encode())
    assert reason(body, max_bytes=2000) == "too_large"


def test_default_limit_is_sqs_maximum() -> None:
    assert reason(changed("resources", ["x" * 256 * 1024])) == "too_large"


def test_json_schema_looking_body() -> None:
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {
            "detail-type": {"const": "ECR Image Action"},
            "source": {"const": "aws.ecr"},
            "detail": {"type": "object", "properties": {"image-digest": {"type": "string"}}},
        },
        "required": ["detail-type", "source", "detail"],
    }
    assert reason(json.dumps(schema)) == "not_an_image_action"
    # The same with the two type fields at the top: still no event in it.
    schema.update({"detail-type": "ECR Image Action", "source": "aws.ecr"})
    assert reason(json.dumps(schema)) == "wrong_shape"


def test_unknown_top_level_fields_are_ignored() -> None:
    assert accept(changed("properties", {"detail": {"image-tag": "evil"}})).tag == "latest"


@pytest.mark.parametrize("depth", [100, 900, 100_000])
@pytest.mark.parametrize("opener,closer", [("[", "]"), ('{"a":', "}")], ids=["lists", "objects"])
def test_deep_nesting(depth: int, opener: str, closer: str) -> None:
    # A size limit far above the bodies, so that the parser itself meets the depth.
    nested = opener * depth + "0" + closer * depth
    bodies = [
        nested,
        f'{{"detail-type": {nested}, "source": "aws.ecr"}}',
        changed("detail", "PLACEHOLDER").replace('"PLACEHOLDER"', nested),
    ]
    for body in bodies:
        with pytest.raises(InvalidEvent) as caught:
            accept(body, max_bytes=10 * len(body))
        if depth == 100_000:
            assert caught.value.reason == "not_json"


def test_lone_surrogate_in_a_text_body() -> None:
    assert reason("\ud800") == "not_json"


# Property


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
near_events = st.builds(
    lambda detail, top: json.dumps({**recorded(BASE), **top, "detail": {**recorded(BASE)["detail"], **detail}}),
    st.dictionaries(
        st.sampled_from(["result", "action-type", "repository-name", "image-digest", "image-tag"]), json_values
    ),
    st.dictionaries(st.sampled_from(["id", "account", "time", "region", "detail-type", "source"]), json_values),
)
bodies = st.one_of(st.text(), st.binary(), json_values.map(json.dumps), near_events)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies)
def test_parse_returns_a_push_or_raises_invalid_event(body: str | bytes) -> None:
    try:
        result = accept(body)
    except IgnoredEvent as exc:
        assert exc.reason in IGNORED_REASONS
    except InvalidEvent as exc:
        assert exc.reason in {
            "too_large",
            "not_json",
            "wrong_shape",
            "not_an_image_action",
            "not_a_successful_push",
            "account_not_allowed",
            "region_not_allowed",
        }
    else:
        assert isinstance(result, ImagePushed)


# The samples through the running pipeline (ingest, a worker, the stand-in as ninkik)


def live(name: str, repository: str, digest: str) -> dict[str, Any]:
    """A sample as it would arrive for an image in the emulated ECR: its identifiers replaced, the rest verbatim."""
    from ninkik_tasks import local

    event = recorded(name)
    event.update(id=str(uuid.uuid4()), account=local.ACCOUNT, region=local.REGION)
    detail = event["detail"]
    if "image-digest" in detail:
        detail["image-digest"] = digest
    if "repository-name" in detail:
        arn = detail["repository-name"].startswith("arn:")
        detail["repository-name"] = (
            f"arn:aws:ecr:{local.REGION}:{local.ACCOUNT}:repository/{repository}" if arn else repository
        )
    if event["detail-type"] == "Inspector2 Finding":  # the image: in resources[0] and in the detail's resources
        image_arn = f"arn:aws:ecr:{local.REGION}:{local.ACCOUNT}:repository/{repository}/{digest}"
        event["resources"] = [image_arn]
        detail["awsAccountId"] = local.ACCOUNT
        for resource in detail["resources"]:
            resource["id"] = image_arn
            image = resource["details"]["awsEcrContainerImage"]
            image.update(registry=local.ACCOUNT, repositoryName=repository, imageHash=digest)
            if "image" in resource["details"]:  # the provider-agnostic copy of the current samples
                agnostic = resource["details"]["image"]
                agnostic.update(registry=local.ACCOUNT, repositoryName=repository, imageDigest=digest)
            if "providerAccountId" in resource:
                resource.update(providerAccountId=local.ACCOUNT, region=local.REGION)
    return event


def test_every_sample_notifies_or_is_dropped_with_its_reason(pipeline: Pipeline) -> None:
    from ninkik_tasks import local
    from ninkik_tasks.local import wait_for

    stack = pipeline.stack
    pushes = {  # sample -> (repository, the tag the sample carries)
        "ecr-image-push.json": (f"{TENANT_A}/shop", "latest"),
        "soci-pr137-index-push.json": (f"{TENANT_A}/web", "v4-soci"),
        "soci-pr137-untagged-push.json": (f"{TENANT_B}/web/api", None),
    }
    lifecycle = ("ecr-image-delete.json", "ecr-image-archive.json", "ecr-image-restore.json")
    dropped = {
        "ecr-image-scan.json": "image_scan",
        "ecr-scan-resource-change.json": "other_aws_event",
        "inspector2-scan.json": "inspector2_scan",
        "inspector2-finding.json": "inspector2_finding",
        "inspector2-finding-2024.json": "inspector2_finding",
    }
    samples = set(pushes) | set(dropped) | set(lifecycle)
    assert samples == {p.name for p in EVENTS.glob("*.json")}, "a sample without an outcome"
    digests = {name: stack.push(repository, tag) for name, (repository, tag) in pushes.items()}
    # An image deleted since: each lifecycle sample about it ends in one DELETE (ninkik never had it: 404, done).
    gone = stack.push(f"{TENANT_A}/shop", "gone", scan=False)
    stack.ecr.batch_delete_image(repositoryName=f"{TENANT_A}/shop", imageIds=[{"imageDigest": gone}])
    for name in lifecycle:
        stack.send(pipeline.queue_url, live(name, f"{TENANT_A}/shop", gone))
    # The image the other events speak of; no scan result (moto hands injected results to the next image read).
    other = stack.push(f"{TENANT_A}/shop", "other", scan=False)
    for name in dropped:
        # A finding event refreshes a tenant's image (tests/test_freshness.py): here one of no tenant's, dropped.
        repository = "other-team/app" if name.startswith("inspector2-finding") else f"{TENANT_A}/shop"
        stack.send(pipeline.queue_url, live(name, repository, other))
    for name, (repository, _) in pushes.items():
        stack.send(pipeline.queue_url, live(name, repository, digests[name]))

    wait_for(lambda: all(stack.received_for(d) for d in digests.values()), 60, "a notification per push")
    for name, (repository, tag) in pushes.items():
        [received] = stack.received_for(digests[name])
        image = received.body["image"]
        assert (image["repository"], image["tags"]) == (repository, [tag] if tag else []), name
    untagged = stack.received_for(digests["soci-pr137-untagged-push.json"])[0].body["image"]
    # The emulator's DescribeImages gives no artifact media type; the event's is used.
    assert untagged["artifact_media_type"] == "application/vnd.oci.image.config.v1+json"

    def reasons() -> set[str]:
        return set(re.findall(r"ignored message \S+ \((\w+)\)", pipeline.ingest.output()))

    wait_for(lambda: reasons() == set(dropped.values()), 30, "every other event dropped with its reason")
    wait_for(lambda: [r.status for r in stack.standin.removed if r.digest == gone] == [404], 60, "the DELETE")
    assert not stack.received_for(other)
    assert not [q for q in stack.quarantined() if other in q.get("body", "")]
    # Ingest is still running and taking pushes.
    late = stack.push(f"{TENANT_A}/shop", "after")
    stack.send(pipeline.queue_url, local.push_event(f"{TENANT_A}/shop", late, "after"))
    wait_for(lambda: stack.received_for(late), 60, "a push after all of them")
    assert pipeline.ingest.alive() and "Traceback" not in pipeline.ingest.output()


@pytest.mark.parametrize(
    ("path", "value"),
    [("detail-type", "ECR Imge Action"), ("detail.action-type", "PUSh"), ("detail.result", "SUCCES")],
)
def test_what_aws_does_not_send_is_quarantined(path: str, value: str) -> None:
    assert reason(changed(path, value)) in {"not_an_image_action", "not_a_successful_push"}


def test_a_detail_type_of_another_service_is_quarantined() -> None:
    assert reason(changed("detail-type", "Inspector2 Scan")) == "not_an_image_action"
    assert reason(changed("source", "aws.inspector2")) == "not_an_image_action"
    assert reason(changed("source", "aws.s3")) == "not_an_image_action"


@pytest.mark.parametrize("resources", [5, "x", {"a": 1}, [5, None, {"details": 3}], None])
def test_a_finding_with_odd_resources_falls_back_to_its_arn(resources: Any) -> None:
    event = finding()
    event["detail"]["resources"] = resources
    parsed = ignored(json.dumps(event)).event
    assert isinstance(parsed, FindingChanged) and parsed.digest == FINDING_DIGEST
