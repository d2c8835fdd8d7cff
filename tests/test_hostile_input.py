"""Hostile input against the running system: refused with a reason, never reported, never a crash.

Everything here runs on one pipeline of its own (broker DB, worker, queues) whose ECR traffic goes
through a counting proxy, so a test can show that no ECR call was made for what it refused.
"""

from __future__ import annotations

import ast
import base64
import copy
import hashlib
import json
import random
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from conftest import (
    PRODUCT_A1,
    PRODUCT_A2,
    PRODUCT_B1,
    TENANT_A,
    TENANT_B,
    TENANTS,
    Stack,
    celery_worker,
    ingest,
    own_broker_db,
)
from faultproxy import FaultProxy

from ninkik_tasks import local
from ninkik_tasks.celery_app import QUEUES
from ninkik_tasks.local import wait_for
from ninkik_tasks.records import MAX_BODY_CHARS

pytestmark = pytest.mark.reliability

OTHER_ACCOUNT = "210987654321"  # allowed, but no registry of it exists in the emulator
MAX_BYTES = 32 * 1024  # small, yet above 10,000-deep nesting (20 kB), so that reaches the JSON decoder
NOWHERE = "sha256:" + "0" * 64  # a well-formed digest of no image
SKIPS = {"repository_format", "unknown_tenant", "unknown_product"}
REFUSALS = {
    "too_large",
    "not_json",
    "wrong_shape",
    "not_an_image_action",
    "not_a_successful_push",
    "account_not_allowed",
    "region_not_allowed",
}

# SQS accepts only #x9 #xA #xD #x20-#xD7FF #xE000-#xFFFD #x10000-#x10FFFF in a body and refuses the whole
# message otherwise (moto does not check, AWS does): such a body can never reach ingest, so those characters
# are dropped before sending. Lone surrogates could not even be encoded into the request.
_NOT_FOR_SQS = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def sqs_safe(text: str) -> str:
    """`text` without the characters SQS refuses."""
    return _NOT_FOR_SQS.sub("", text)


# One pipeline of our own for the whole module


@dataclass
class Rig:
    """Own broker and result DBs, a worker whose ECR calls pass the counter; ingests are per test."""

    stack: Stack
    db: int
    env: dict[str, str]
    ecr: FaultProxy
    worker: local.Proc

    def ingest(self, name: str) -> tuple[str, local.Proc]:
        """A fresh queue and an ingest polling it."""
        queue_url = self.stack.new_queue()
        return queue_url, ingest(self.stack, self.env, queue_url, name=name)


@pytest.fixture(scope="module")
def own_rig(stack: Stack) -> Iterator[Rig]:
    db = own_broker_db()
    counter = FaultProxy(stack.moto_url).start()  # forwards and records, injects nothing
    env = stack.env(
        broker_db=db,
        AWS_ENDPOINT_URL_ECR=counter.url,
        NINKIK_AWS_ACCOUNT_IDS=f"{local.ACCOUNT},{OTHER_ACCOUNT}",
        NINKIK_MAX_MESSAGE_BYTES=str(MAX_BYTES),
    )
    worker = celery_worker(stack, env, "hostile")
    try:
        yield Rig(stack, db, env, counter, worker)
    finally:
        worker.stop()
        counter.stop()


@pytest.fixture
def rig(own_rig: Rig) -> Iterator[Rig]:
    own_rig.stack.standin.reset()
    yield own_rig
    assert own_rig.worker.alive(), own_rig.worker.output()[-3000:]


def send_all(stack: Stack, queue_url: str, bodies: list[str]) -> list[str]:
    """Send `bodies` in batches (at most 10 messages and 200 kB each); their MessageIds, in order."""
    ids: list[str] = []
    batch: list[str] = []

    def flush() -> None:
        if not batch:
            return
        answer = stack.sqs.send_message_batch(
            QueueUrl=queue_url, Entries=[{"Id": str(i), "MessageBody": b} for i, b in enumerate(batch)]
        )
        assert not answer.get("Failed"), answer["Failed"]
        by_entry = {int(ok["Id"]): ok["MessageId"] for ok in answer["Successful"]}
        ids.extend(by_entry[i] for i in range(len(batch)))
        batch.clear()

    for body in bodies:
        if len(batch) == 10 or sum(len(b.encode()) for b in batch) + len(body.encode()) > 200_000:
            flush()
        batch.append(body)
    flush()
    return ids


def removal_key(body: str) -> str | None:
    """The Idempotency-Key of the DELETE a body's chain sends when its image is gone (scans.removal)."""
    try:
        data = json.loads(body)
        detail = data["detail"]
        material = "\n".join(
            ("DELETE", detail["repository-name"].split("/")[0], detail["repository-name"], detail["image-digest"])
        )
    except (ValueError, RecursionError, KeyError, TypeError, AttributeError):
        return None
    return hashlib.sha256(material.encode()).hexdigest()


def event_id_of(body: str) -> str | None:
    """The `id` a body carries, if it is a JSON object with a string id."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return data.get("id") if isinstance(data, dict) and isinstance(data.get("id"), str) else None


def ingest_counts(proc: local.Proc) -> Counter[str]:
    """The counters ingest prints when it stops ("stopped: {...}")."""
    line = next(line for line in reversed(proc.output().splitlines()) if "stopped: {" in line)
    return Counter(ast.literal_eval(line[line.index("stopped: ") + len("stopped: ") :]))


# 1. Hostile bodies around valid events, on a running ingest


def hostile_bodies(rng: random.Random) -> list[str]:
    """A few hundred bodies no correct ingest may report: a fixed catalogue plus seeded random ones."""

    def event(repository: str = "not-a-tenant/fuzz", digest: str = NOWHERE, **top: Any) -> dict[str, Any]:
        return {**local.push_event(repository, digest, "1.0"), **top}

    def text(data: Any) -> str:
        return json.dumps(data, ensure_ascii=False)

    bodies: list[str] = []
    # Not JSON objects at all.
    bodies += [" ", "null", "true", "42", "[]", '"ECR Image Action"', "{}", "{", "}{", "<xml/>", "\ufeff{}"]
    # Random bytes as text, and base64-looking text (one of them a whole valid event, encoded).
    for _ in range(60):
        bodies.append(rng.randbytes(rng.randint(1, 400)).decode("utf-8", errors="replace"))
    bodies.append(base64.b64encode(text(event()).encode()).decode())
    bodies.append(base64.urlsafe_b64encode(rng.randbytes(300)).decode())
    bodies.append("eyJpZCI6IjEifQ==")
    # Sizes: exactly at the limit is parsed; one byte over, or over in bytes but not in characters, is not.
    template = text(event(padding=""))
    bodies.append(template.replace('"padding": ""', '"padding": "' + "x" * (MAX_BYTES - len(template)) + '"'))
    bodies.append(template.replace('"padding": ""', '"padding": "' + "x" * (MAX_BYTES + 1 - len(template)) + '"'))
    bodies.append(template.replace('"padding": ""', '"padding": "' + "é" * (MAX_BYTES // 2) + '"'))
    # 10,000-deep nesting, alone and as the event's detail; 10,000 objects deep is too large as well.
    bodies.append("[" * 10_000 + "]" * 10_000)
    nested = text(event())
    bodies.append(nested[: nested.index('"detail": ') + 10] + "[" * 10_000 + "]" * 10_000 + "}")
    bodies.append('{"a": ' * 10_000 + "1" + "}" * 10_000)
    # A JSON schema instead of an event, an event under "properties", an SNS envelope, other events.
    bodies.append(text({"type": "object", "properties": {k: {"const": v} for k, v in event().items()}}))
    bodies.append(text({"properties": event()}))
    bodies.append(text({"Type": "Notification", "Message": text(event())}))
    bodies.append(text({**event(), "detail-type": "ECR Image Scan"}))
    bodies.append(text({**event(), "detail-type": "Inspector2 Scan"}))
    bodies.append(text({**event(), "source": "aws.ecr "}))
    bodies.append(text({**event(), "source": "AWS.ECR"}))
    # A DELETE or a failed push is a well-formed AWS event: dropped and counted, not quarantined (test_events.py).
    # Accounts and regions that are not allowed, or not account ids and regions at all.
    for account in (
        "999999999999",
        "12345678901",
        "1234567890123",
        " 123456789012",
        "123456789012\n",
        "１２３４５６７８９０１２",
    ):
        bodies.append(text(event(account=account)))
    for region in ("us-east-1", "EU-CENTRAL-1", "eu-central-1 ", "eu-central-١", "../eu-central-1"):
        bodies.append(text(event(region=region)))
    # Digests that are not sha256, tags with path characters.
    digests = [
        "sha256:" + "A" * 64,
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha512:" + "a" * 128,
        "SHA256:" + "a" * 64,
        "sha256:" + "a" * 64 + "\n",
        "sha256:" + "g" * 64,
        "sha256:../../" + "a" * 58,
        "sha256:" + "１" * 64,
        "latest",
    ]
    for digest in digests:
        bodies.append(text(event(digest=digest)))
    for tag in ("../../etc/passwd", "a/b", "..", ".hidden", "-rf", "a b", "a\\b", "tag\n", "%2e%2e", "t" * 301):
        body = event()
        body["detail"]["image-tag"] = tag
        bodies.append(text(body))
    # Unicode and injection in repository names: parsed, then refused by name (no ECR call).
    names = [
        "тенант/shop",
        f"{TENANT_A}/shöp",
        f"{TENANT_A}/shop\u200b",
        f"{TENANT_A}\u2215shop",
        f"{TENANT_A}／shop",
        f"{TENANT_A}/ｓｈｏｐ",
        f"{TENANT_A}/\u202eshop",
        f"{TENANT_A}/shop🐳",
        f"{TENANT_A}/shop\n",
        f"{TENANT_A}/shop'; DROP TABLE images; --",
        f"{TENANT_A}/$(rm -rf /)",
        f"{TENANT_A.replace('1', '１')}/shop",
        f"{TENANT_A}/" + "a" * 219,  # well-formed, 256 characters: a product tenant A does not have
        f"{TENANT_A}/" + "a" * 220,  # one character too long
        "deadbeef-0000-4000-8000-000000000000/shop",  # well-formed, unknown tenant
    ]
    for name in names:
        bodies.append(text(event(repository=name)))
    bodies.append(text(event(repository=f"{TENANT_A}/shop")))  # a ninkik repository, but no such image
    # Wrong types at every field, and every field missing in turn.
    paths = ["version", "id", "detail-type", "source", "account", "time", "region", "resources", "detail"]
    paths += [f"detail.{k}" for k in ("result", "action-type", "repository-name", "image-digest", "image-tag")]
    values: list[Any] = [None, 0, -1, 1.5, True, "", [], {}, ["x"], {"$ne": None}, "x" * 2000]
    missing = object()
    for path in paths:
        for value in [*values, missing]:
            body = event()
            *parents, last = path.split(".")
            node = body
            for part in parents:
                node = node[part]
            if value is missing:
                node.pop(last, None)
            else:
                node[last] = copy.deepcopy(value)
            bodies.append(text(body))
    # A valid-looking event mangled at a few random places.
    alphabet = '{}[]":,\\ 0aZ-/.\u00e9\u4e2d\U0001f433\n'
    for _ in range(60):
        chars = list(text(event()))
        for _ in range(rng.randint(1, 3)):
            where = rng.randrange(len(chars))
            match rng.randrange(3):
                case 0:
                    del chars[where]
                case 1:
                    chars.insert(where, rng.choice(alphabet))
                case _:
                    chars[where] = rng.choice(alphabet)
        bodies.append("".join(chars))
    safe = [sqs_safe(b) for b in bodies]
    return [b for b in safe if b]  # SQS refuses an empty body too


def test_hostile_bodies_are_refused_and_the_valid_ones_around_them_notified(rig: Rig) -> None:
    stack = rig.stack
    rng = random.Random(20261127)
    hostile = hostile_bodies(rng)
    assert len(hostile) > 250
    repositories = [f"{TENANT_A}/shop", f"{TENANT_A}/web", f"{TENANT_B}/web", f"{TENANT_A}/shop/api"]
    valid: dict[str, str] = {}  # digest -> body
    for i in range(20):
        repository = repositories[i % len(repositories)]
        digest = stack.push(repository, f"fuzz-{i}")
        valid[digest] = json.dumps(local.push_event(repository, digest, f"fuzz-{i}"))
    # The valid events at random places among them.
    bodies = list(hostile)
    for body in valid.values():
        bodies.insert(rng.randrange(len(bodies) + 1), body)

    queue_url, proc = rig.ingest("ingest-fuzz")
    try:
        ids = send_all(stack, queue_url, bodies)
        hostile_ids = {mid: body for mid, body in zip(ids, bodies, strict=True) if body not in valid.values()}

        def unaccounted() -> dict[str, str]:
            quarantined = {q.get("message_id") for q in stack.quarantined()}
            ended = {f.get("event_id") for f in stack.failures()}
            ended |= {r.key for r in stack.standin.removed}  # a digest of no image: removed (ninkik: 404)
            return {
                mid: body
                for mid, body in hostile_ids.items()
                if mid not in quarantined
                and (event_id_of(body) is None or not {event_id_of(body), removal_key(body)} & ended)
            }

        def done() -> bool:
            return all(stack.received_for(d) for d in valid) and not unaccounted()

        try:
            wait_for(done, 50, "every valid event notified and every hostile message recorded")
        except TimeoutError:
            left = {mid: body[:120] for mid, body in list(unaccounted().items())[:10]}
            missing = [d for d in valid if not stack.received_for(d)]
            raise AssertionError(
                f"{len(unaccounted())} hostile messages unaccounted for, e.g. {left}; "
                f"{len(missing)} valid events not notified\n{proc.output()[-3000:]}"
            ) from None
        assert proc.alive(), proc.output()[-3000:]
        assert "poll failed" not in proc.output(), proc.output()[-3000:]
    finally:
        proc.stop()

    # Every valid event notified exactly once; nothing else was ever POSTed.
    digests = Counter(r.body["image"]["digest"] for r in stack.standin.received)
    assert digests == Counter({d: 1 for d in valid}), digests
    assert len(stack.standin.attempts) == len(valid), stack.standin.attempts

    # Every hostile message: quarantined once with its body and a reason, or its chain ended with a reason.
    quarantine = [q for q in stack.quarantined() if q.get("message_id") in hostile_ids]
    by_message = Counter(q["message_id"] for q in quarantine)
    assert max(by_message.values()) == 1, [m for m, n in by_message.items() if n > 1]
    for entry in quarantine:
        body = hostile_ids[entry["message_id"]]
        assert entry["reason"] in REFUSALS, entry
        assert entry["body"] == body[:MAX_BODY_CHARS], (entry["reason"], body[:200])
        assert int(entry["body_bytes"]) == len(body.encode("utf-8"))
    removal_keys = {r.key for r in stack.standin.removed}
    chain_ids = {
        event_id_of(b) for mid, b in hostile_ids.items() if mid not in by_message and removal_key(b) not in removal_keys
    }
    ended = [f for f in stack.failures() if f.get("event_id") in chain_ids]
    assert len(ended) == len(chain_ids), "a hostile event's chain was recorded more than once"
    assert {f["reason"] for f in ended} == SKIPS, Counter(f["reason"] for f in ended)
    # Only the one event naming a real ninkik repository got as far as ECR: its digest names no image, so ninkik
    # is told to remove it (404: it never had it); no failure beyond tenant matching.
    assert [f["reason"] for f in ended if f["stage"] != "match_tenant"] == []
    assert [r.status for r in stack.standin.removed] == [404]
    # The size limit is exact: a body of NINKIK_MAX_MESSAGE_BYTES is parsed, one byte more is not.
    reason_of = {q["message_id"]: q["reason"] for q in quarantine}
    sized = {len(b.encode()): mid for mid, b in hostile_ids.items() if len(b.encode()) in (MAX_BYTES, MAX_BYTES + 1)}
    assert MAX_BYTES in sized and sized[MAX_BYTES] not in reason_of
    assert reason_of[sized[MAX_BYTES + 1]] == "too_large"

    # Ingest's own counters agree: every message received once, every refusal counted by reason.
    counts = ingest_counts(proc)
    rejected = sum(n for k, n in counts.items() if k.startswith("rejected:"))
    reasons = Counter(q["reason"] for q in quarantine)
    assert counts["received"] == len(bodies), counts
    assert rejected == counts["quarantined"] == len(quarantine), (counts, reasons)
    assert counts["chains_started"] == len(valid) + len(chain_ids) + len(removal_keys), counts
    assert {"not_json", "too_large", "wrong_shape", "account_not_allowed", "region_not_allowed"} <= set(reasons)


# 2. Repository names that try to escape their tenant


def test_repository_names_that_escape_their_tenant_reach_neither_ecr_nor_ninkik(rig: Rig) -> None:
    stack = rig.stack
    a_shop = stack.push(f"{TENANT_A}/shop", "escape")
    b_web = stack.push(f"{TENANT_B}/web", "escape")
    # A repository of tenant A named after tenant B's product UUID exists and holds an image.
    a_named_b = stack.push(f"{TENANT_A}/{PRODUCT_B1}", "escape")
    # Each names (or normalises to) a real image, so a lenient reading would report it.
    cases: dict[str, tuple[str, str, dict[str, str]]] = {
        "dot-dot first": (f"../{TENANT_B}/web", b_web, {}),
        "dot-dot inside": (f"{TENANT_A}/../{TENANT_B}/web", b_web, {}),
        "dot-dot in the component": (f"{TENANT_A}/shop/../../{TENANT_B}/web", b_web, {}),
        "dot segment": (f"{TENANT_A}/./shop", a_shop, {}),
        "double slash": (f"{TENANT_A}//shop", a_shop, {}),
        "leading slash": (f"/{TENANT_A}/shop", a_shop, {}),
        "trailing slash": (f"{TENANT_A}/shop/", a_shop, {}),
        "percent-encoded slash": (f"{TENANT_A}%2Fshop", a_shop, {}),
        "backslash": (f"{TENANT_A}\\shop", a_shop, {}),
        "uppercase product": (f"{TENANT_A}/SHOP", a_shop, {}),
        "uppercase product UUID": (f"{TENANT_A}/{PRODUCT_A1.upper()}", a_shop, {}),
        "tenant UUID in braces": (f"{{{TENANT_A}}}/shop", a_shop, {}),
        "tenant UUID as a URN": (f"urn:uuid:{TENANT_A}/shop", a_shop, {}),
        "tenant UUID without dashes": (f"{TENANT_A.replace('-', '')}/shop", a_shop, {}),
        "another tenant's product UUID": (f"{TENANT_A}/{PRODUCT_B1}", a_named_b, {}),
        "account not allowed": (f"{TENANT_A}/shop", a_shop, {"account": "999999999999"}),
        "region not allowed": (f"{TENANT_A}/shop", a_shop, {"region": "us-east-1"}),
    }
    events = {name: local.push_event(repo, digest, "escape", **where) for name, (repo, digest, where) in cases.items()}

    queue_url, proc = rig.ingest("ingest-escape")
    try:
        before = rig.ecr.count()
        ids = dict(zip(events, send_all(stack, queue_url, [json.dumps(e) for e in events.values()]), strict=True))

        def outcomes() -> dict[str, dict[str, str]]:
            quarantined = {q.get("message_id"): q for q in stack.quarantined()}
            ended = {f.get("event_id"): f for f in stack.failures()}
            found = {name: quarantined.get(ids[name]) or ended.get(e["id"]) for name, e in events.items()}
            return {name: entry for name, entry in found.items() if entry}

        got = wait_for(lambda: len(outcomes()) == len(cases) and outcomes(), 30, "every escape attempt recorded")
        expected = {name: "repository_format" for name in cases}
        expected |= {
            "another tenant's product UUID": "unknown_product",
            "account not allowed": "account_not_allowed",
            "region not allowed": "region_not_allowed",
        }
        assert {name: entry["reason"] for name, entry in got.items()} == expected
        assert all(entry["stage"] == "match_tenant" for entry in got.values() if "stage" in entry)
        # Not one ECR call while only these were processed (the worker is ours alone).
        assert rig.ecr.count() == before, rig.ecr.calls[before:]
        assert not rig.ecr.named({repo for repo, _, _ in cases.values()} - {f"{TENANT_A}/shop"})

        # An allowed account, but not the registry the repository lives in: asked there, found gone.
        foreign = local.push_event(f"{TENANT_A}/shop", a_shop, "escape", account=OTHER_ACCOUNT)
        good = stack.push(f"{TENANT_A}/shop", "escape-ok")
        stack.send(queue_url, foreign)
        stack.send(queue_url, local.push_event(f"{TENANT_A}/shop", good, "escape-ok"))
        removal = wait_for(
            lambda: next((r for r in stack.standin.removed if r.digest == a_shop), None),
            30,
            "the foreign-account event's end",
        )
        assert removal.status == 404  # ninkik never had an image of that account: nothing else happened
        wait_for(lambda: stack.received_for(good), 30, "the valid event's notification")
        # The proxy sees ECR traffic: the valid event's calls, and the foreign one asked in its own registry.
        asked = [(call.action, call.params.get("registryId")) for call in rig.ecr.calls[before:]]
        assert ("DescribeImages", OTHER_ACCOUNT) in asked, asked
        assert ("DescribeImages", local.ACCOUNT) in asked, asked
        assert rig.ecr.count() > before
        assert proc.alive(), proc.output()[-3000:]
    finally:
        proc.stop()
    assert not stack.received_for(a_shop) and not stack.received_for(b_web) and not stack.received_for(a_named_b)
    assert [r.body["image"]["digest"] for r in stack.standin.received] == [good]
    assert len(stack.standin.attempts) == 1


def test_event_fields_cannot_forge_a_log_line(rig: Rig) -> None:
    stack = rig.stack
    forged = f"2026-11-28 10:00:00,000 INFO ninkik_tasks.pipeline: notified (forged) repository={TENANT_A}/shop"
    events = [
        local.push_event("not-a-tenant/x\n" + forged, NOWHERE, "1.0"),
        local.push_event("not-a-tenant/y\u2028" + forged, NOWHERE, "1.0"),
        local.push_event("not-a-tenant/z", NOWHERE, "1.0", event_id="i\r\n" + forged),
    ]
    queue_url, proc = rig.ingest("ingest-forgery")
    try:
        for event in events:
            stack.send(queue_url, event)
        ids = {event["id"] for event in events}
        wait_for(lambda: ids <= {f.get("event_id") for f in stack.failures()}, 30, "the recorded chain ends")
    finally:
        proc.stop()
    for log in (proc, rig.worker):
        lines = [line for line in log.output().splitlines() if line.startswith(forged)]
        assert not lines, f"{log.name} printed a line an event wrote: {lines[0]!r}"
    assert forged in proc.output()  # logged all the same, inside the line that quotes it


# 3. Two tenants with a product of the same name


def test_tenants_sharing_a_product_name_never_see_each_others_images(rig: Rig) -> None:
    stack = rig.stack
    products = {
        TENANT_A: {p["name"]: p["uuid"] for p in TENANTS[0]["products"]},
        TENANT_B: {p["name"]: p["uuid"] for p in TENANTS[1]["products"]},
    }
    assert products[TENANT_A]["web"] == PRODUCT_A2 and products[TENANT_B]["web"] == PRODUCT_B1
    # The same image (one digest) in both tenants' "web", with different tags and different findings.
    seed = uuid.uuid4().hex
    shared = {
        TENANT_A: local.push_image(stack.ecr, f"{TENANT_A}/web", seed, "shared-a"),
        TENANT_B: local.push_image(stack.ecr, f"{TENANT_B}/web", seed, "shared-b"),
    }
    assert shared[TENANT_A] == shared[TENANT_B]
    digest = shared[TENANT_A]
    for tenant, cve in ((TENANT_A, "CVE-2026-1111"), (TENANT_B, "CVE-2026-2222")):
        finding = local.basic_finding(cve, "HIGH", "openssl", "3.0.1")
        local.set_scan_result(stack.moto_url, stack.ecr, f"{tenant}/web", digest, findings=[finding])
    expected: dict[tuple[str, str], tuple[str, str]] = {}  # (repository, digest) -> (tenant, product)
    for tenant in (TENANT_A, TENANT_B):
        expected[(f"{tenant}/web", digest)] = (tenant, products[tenant]["web"])
    for tenant in (TENANT_A, TENANT_B):
        web = products[tenant]["web"]
        for repository in (f"{tenant}/web", f"{tenant}/web/api", f"{tenant}/{web}"):
            expected[(repository, stack.push(repository, "own"))] = (tenant, web)

    queue_url, proc = rig.ingest("ingest-shared-name")
    try:
        tags = {(f"{TENANT_A}/web", digest): "shared-a", (f"{TENANT_B}/web", digest): "shared-b"}
        for repository, d in expected:
            stack.send(queue_url, local.push_event(repository, d, tags.get((repository, d), "own")))
        wait_for(lambda: len(stack.standin.received) >= len(expected), 30, "every notification")
    finally:
        proc.stop()

    got = {(r.body["image"]["repository"], r.body["image"]["digest"]): r for r in stack.standin.received}
    assert len(stack.standin.received) == len(got) == len(expected)
    assert {key: (r.tenant, r.product) for key, r in got.items()} == expected
    a, b = got[(f"{TENANT_A}/web", digest)], got[(f"{TENANT_B}/web", digest)]
    assert a.body["image"]["tags"] == ["shared-a"] and b.body["image"]["tags"] == ["shared-b"]
    assert [f["id"] for f in a.body["scan"]["findings"]] == ["CVE-2026-1111"]
    assert [f["id"] for f in b.body["scan"]["findings"]] == ["CVE-2026-2222"]
    assert a.key != b.key
    assert all(status == 201 for status, _ in stack.standin.attempts), stack.standin.attempts
    assert not [f for f in stack.failures() if (f.get("repository"), f.get("digest")) in expected]


# 4. Redis keys stay in their namespace


def celery_key(key: str) -> bool:
    """A key Celery or kombu keeps in a broker or result DB."""
    queues = "|".join(re.escape(q) for q in QUEUES)
    patterns = [
        r"_kombu\.binding.+",  # exchange bindings and their bookkeeping
        r"unacked(_index|_mutex)?",  # tasks taken by a worker, not yet acknowledged
        rf"({queues})(\x06\x16\d)?",  # the queues, with kombu's priority suffix
        r"[0-9a-f-]{36}\.reply\.celery\.pidbox",  # replies to remote control (ping)
        r"celery-task(set)?-meta-.+",  # results
        r"chord-unlock.*",
    ]
    return any(re.fullmatch(p, key) for p in patterns)


class KeyWrites:
    """Every key written in any DB while it runs, from Redis keyspace notifications."""

    def __init__(self, url: str) -> None:
        self.admin = redis.Redis.from_url(url, decode_responses=True)
        self.written: set[tuple[int, str, str]] = set()  # (db, event, key)
        self.previous = str(self.admin.config_get("notify-keyspace-events").get("notify-keyspace-events", ""))
        self.admin.config_set("notify-keyspace-events", "EA")
        self.pubsub = self.admin.pubsub()
        self.pubsub.psubscribe(**{"__keyevent@*__:*": self._on})
        self.thread = self.pubsub.run_in_thread(sleep_time=0.05, daemon=True)

    def _on(self, message: dict[str, Any]) -> None:
        db, _, event = str(message["channel"]).removeprefix("__keyevent@").partition("__:")
        self.written.add((int(db), event, str(message["data"])))

    def stop(self) -> None:
        """Stop listening and restore the server's setting."""
        self.thread.stop()
        self.thread.join(5)
        self.pubsub.close()
        self.admin.config_set("notify-keyspace-events", self.previous)


def test_every_redis_key_is_namespaced(rig: Rig) -> None:
    stack = rig.stack
    marker = f"ninkik:test-marker:{uuid.uuid4().hex}"
    writes = KeyWrites(f"{stack.redis_url}/0")
    queue_url, proc = rig.ingest("ingest-keys")
    try:
        good = stack.push(f"{TENANT_B}/web", "keys")
        bad_name = stack.push("team/keys", "keys")
        unknown = local.push_event("deadbeef-0000-4000-8000-00000000000a/keys", NOWHERE, "keys")
        gone = local.push_event(f"{TENANT_B}/web", NOWHERE, "keys")
        for body in (
            local.push_event(f"{TENANT_B}/web", good, "keys"),
            local.push_event("team/keys", bad_name, "keys"),
            unknown,
            gone,
        ):
            stack.send(queue_url, body)
        stack.send(queue_url, "not an event")
        wait_for(lambda: stack.received_for(good), 30, "the notification")
        wait_for(lambda: unknown["id"] in {f.get("event_id") for f in stack.failures()}, 30, "the recorded end")
        wait_for(lambda: NOWHERE in {r.digest for r in stack.standin.removed}, 30, "the removal of no image")
        wait_for(lambda: any(q["body"] == "not an event" for q in stack.quarantined()), 30, "the quarantine entry")
        # A last marker write, seen only after everything before it: the listener has caught up.
        stack.records.set(marker, "1", ex=5)
        wait_for(lambda: any(key == marker for _, _, key in writes.written), 10, "the keyspace notifications")
    finally:
        proc.stop()
        writes.stop()
        stack.records.delete(marker)

    own_dbs = (rig.db, rig.db + 1)
    outside = sorted(
        (db, event, key)
        for db, event, key in writes.written
        if (db == 2 and not key.startswith("ninkik:")) or (db != 2 and not celery_key(key))
    )
    assert not outside, f"keys written outside their namespace: {outside}"
    assert any(db == 2 for db, _, _ in writes.written) and any(db in own_dbs for db, _, _ in writes.written)
    for number in own_dbs:  # broker and results of this pipeline alone: nothing but Celery's keys
        client = redis.Redis.from_url(f"{stack.redis_url}/{number}", decode_responses=True)
        strays = sorted(key for key in client.scan_iter(count=1000) if not celery_key(key))
        assert not strays, f"db {number} holds keys that are not Celery's: {strays}"
    # Everything this run left in the records DB is under ninkik: (other tests use namespaces of their own).
    records = redis.Redis.from_url(f"{stack.redis_url}/2", decode_responses=True)
    left = {key for db, _, key in writes.written if db == 2 and records.exists(key)}
    assert left and all(key.startswith("ninkik:") for key in left), sorted(left)
