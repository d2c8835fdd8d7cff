"""events.parse against recorded EventBridge payloads and against every kind of bad body."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ninkik_tasks.errors import InvalidEvent
from ninkik_tasks.events import ImagePushed, parse

EVENTS = Path(__file__).parent / "events"
ACCOUNTS = {"123456789012"}
REGIONS = {"eu-central-1"}
TENANT = "3f2c1a9e-8d4b-4c6e-9a7f-2b1d0e5c4a83"


def recorded(name: str) -> dict[str, Any]:
    """A recorded payload from tests/events/."""
    data: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return data


def accept(body: str | bytes, **overrides: Any) -> ImagePushed:
    return parse(body, **{"accounts": ACCOUNTS, "regions": REGIONS, **overrides})


def reason(body: str | bytes, **overrides: Any) -> str:
    """The reason code parse gives for refusing `body`."""
    with pytest.raises(InvalidEvent) as caught:
        accept(body, **overrides)
    return caught.value.reason


DELETE = object()


def changed(path: str, value: Any) -> str:
    """The tagged push with the field at dotted `path` set to `value` (or removed, for DELETE)."""
    event = copy.deepcopy(recorded("push_tagged.json"))
    *parents, last = path.split(".")
    node = event
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return json.dumps(event, ensure_ascii=False)


# Recorded payloads


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
def test_tagged_push(as_bytes: bool) -> None:
    text = (EVENTS / "push_tagged.json").read_text()
    pushed = accept(text.encode() if as_bytes else text)
    assert pushed == ImagePushed(
        event_id="13cde686-328b-6117-af20-0e5566167482",
        account="123456789012",
        region="eu-central-1",
        repository=f"{TENANT}/web",
        digest="sha256:9b2a1e7c4f0d83a65e2c7b1d4f9e0a3c6b8d2e5f7a1c4b9e3d6f0a2c5e8b1d4f",
        tag="1.2.3",
        time=datetime(2026, 11, 27, 10, 0, tzinfo=UTC),
        source="push",
    )


def test_untagged_push_has_no_tag() -> None:
    pushed = accept((EVENTS / "push_untagged.json").read_text())
    assert pushed.tag is None
    assert pushed.repository == f"{TENANT}/web/api"
    assert pushed.digest == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_a_pushed_image_fits_in_a_task_message() -> None:
    pushed = accept((EVENTS / "push_tagged.json").read_text())
    assert ImagePushed.model_validate(pushed.model_dump(mode="json")) == pushed


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("delete.json", "not_a_successful_push"),
        ("push_failure.json", "not_a_successful_push"),
        ("image_scan.json", "not_an_image_action"),
        ("inspector2_scan.json", "not_an_image_action"),
    ],
)
def test_other_recorded_events_are_refused(name: str, expected: str) -> None:
    assert reason((EVENTS / name).read_text()) == expected


def test_account_not_allowed() -> None:
    body = (EVENTS / "push_tagged.json").read_text()
    assert reason(body, accounts={"210987654321"}) == "account_not_allowed"
    assert reason(body, accounts=set()) == "account_not_allowed"


def test_region_not_allowed() -> None:
    body = (EVENTS / "push_tagged.json").read_text()
    assert reason(body, regions={"us-west-2"}) == "region_not_allowed"
    assert reason(changed("region", "us-west-2")) == "region_not_allowed"


def test_allow_lists_may_be_any_collection() -> None:
    body = (EVENTS / "push_tagged.json").read_text()
    assert accept(body, accounts=["210987654321", "123456789012"], regions=("eu-central-1",)).tag == "1.2.3"


# Bad bodies


@pytest.mark.parametrize(
    "body",
    ["", "   ", "not json", "{", '{"id": }', "NaN-ish", b"\xff\xfe\xfa", b"\x00", "1" * 5000],
    ids=["empty", "blank", "text", "open-brace", "bad-value", "word", "bad-utf8", "nul", "huge-int"],
)
def test_not_json(body: str | bytes) -> None:
    assert reason(body) == "not_json"


@pytest.mark.parametrize("body", ["[]", json.dumps([recorded("push_tagged.json")]), '"a string"', "42", "null"])
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


@pytest.mark.parametrize("tag", ["v1/2", "../latest", ".hidden", "-rc", "", "a b", "latest\n", "x" * 301, "é"])
def test_bad_tag(tag: str) -> None:
    assert reason(changed("detail.image-tag", tag)) == "wrong_shape"


@pytest.mark.parametrize("tag", ["latest", "1.2.3", "_build-42", "v1.0.0-rc.1", "x" * 300])
def test_good_tag(tag: str) -> None:
    assert accept(changed("detail.image-tag", tag)).tag == tag


def test_oversized_body() -> None:
    body = (EVENTS / "push_tagged.json").read_text()
    size = len(body.encode())
    assert accept(body, max_bytes=size).tag == "1.2.3"
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
    assert accept(changed("properties", {"detail": {"image-tag": "evil"}})).tag == "1.2.3"


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
    lambda detail, top: json.dumps(
        {**recorded("push_tagged.json"), **top, "detail": {**recorded("push_tagged.json")["detail"], **detail}}
    ),
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
