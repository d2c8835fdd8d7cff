"""Describing the images of one repository together: one DescribeImages for up to 100 of them.

Every pushed image is registered, as its chain starts (in ingest, or a sweep), in its repository's set of images
waiting to be described (Redis). Its describe step runs NINKIK_SCAN_FIRST_READ_SECONDS after the push (the first
scan read could not come sooner anyway), and the first step of a repository to run takes every image waiting there,
up to 100, its own among them, and describes them all in one call; each other image's step then takes its description
from Redis. So the images of one repository accepted within that delay of each other share one call, and waiting for
them costs no time. Sweeps' chains take their image from the sweep's own DescribeImages page: no call.

Nothing is lost or doubled: a description is kept for the image's own chain (by its event id) until that
chain takes it, and is only ever made after the image was registered, so after its push. A step whose image
is being described by another worker waits for that call's answer (HOLD_SECONDS at most, then it comes back
later: DescriptionPending); if that worker died (its claim is older than CLAIM_SECONDS), the step describes the
image again itself. A call refused as a whole
(ImageNotFoundException when one of the images is gone: moto does that; AWS's reference does not say) or one
that leaves an image out gives each image concerned a call of its own, which says what happened to it. A call
that fails for a while (throttling, 5xx, the ECR budget full) puts its images back to wait for the next step.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, NamedTuple, cast

import redis

from .ecr import MAX_IMAGE_IDS, describe_image, describe_images
from .errors import PermanentError, TransientError
from .findings import Image
from .tenants import REPOSITORY

if TYPE_CHECKING:
    from mypy_boto3_ecr import ECRClient

    from .events import ImagePushed

log = logging.getLogger(__name__)

SOLO = "solo"  # a description's place holder: this image is described by a call of its own
CLAIM_SECONDS = 60  # a worker describing a batch longer than this is taken for dead: its images are described again
KEEP_SECONDS = 3600  # how long an image waits to be described, and its description to be taken, at most
HOLD_SECONDS = 15.0  # how long a step waits for another worker's call to describe its image (its ECR wait is 10 s)
POLL_SECONDS = 0.2  # how often it looks meanwhile
WAIT_SECONDS = 5.0  # then it comes back this much later (the call is slow or its worker died: CLAIM_SECONDS)


class DescriptionPending(TransientError):
    """Another worker is describing this image together with others of its repository: come back shortly."""


class Where(NamedTuple):
    """A repository of one registry and region."""

    region: str
    account: str
    repository: str


class Turn(NamedTuple):
    """What a describe step found: its image's description, a batch to describe (its own image among them), or
    neither (another worker is describing it)."""

    description: str | None = None
    batch: list[str] | None = None


# KEYS = the repository's waiting set, its claimed set, the member's description; ARGV = member, most per batch,
# CLAIM_SECONDS, KEEP_SECONDS. Returns {'description', value}, {'wait'} or {'claim', member...}. Claims older than
# CLAIM_SECONDS (their worker died) wait again, to be claimed with this one.
_TURN = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local description = redis.call('GET', KEYS[3])
if description then
  redis.call('DEL', KEYS[3])
  return {'description', description}
end
local claimed = redis.call('ZSCORE', KEYS[2], ARGV[1])
if claimed and tonumber(claimed) > now - tonumber(ARGV[3]) then
  return {'wait'}
end
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[3]))) do
  redis.call('ZREM', KEYS[2], m)
  redis.call('ZADD', KEYS[1], 'NX', now, m)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[4]))
redis.call('ZADD', KEYS[1], 'NX', now, ARGV[1])
local batch = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
local mine = false
for _, m in ipairs(batch) do
  if m == ARGV[1] then mine = true end
end
if not mine then batch[#batch] = ARGV[1] end
for _, m in ipairs(batch) do
  redis.call('ZREM', KEYS[1], m)
  redis.call('ZADD', KEYS[2], now, m)
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return {'claim', unpack(batch)}
"""


def member(digest: str, event_id: str) -> str:
    """How an image waits: its digest and the event of the chain that takes its description."""
    return f"{digest}|{event_id}"


def digest_of(member: str) -> str:
    """The digest of a waiting image."""
    return member.split("|", 1)[0]


class Gathering:
    """The images waiting to be described, per repository, and their descriptions until their chains take them."""

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        claim_seconds: float = CLAIM_SECONDS,
        hold_seconds: float = HOLD_SECONDS,
    ) -> None:
        self.r = client
        self.namespace = namespace
        self.claim_seconds = claim_seconds  # CLAIM_SECONDS, HOLD_SECONDS: shorter in tests
        self.hold_seconds = hold_seconds
        self._turn = client.register_script(_TURN)

    def _key(self, kind: str, where: Where) -> str:
        return f"{self.namespace}:describe:{kind}:{where.region}:{where.account}/{where.repository}"

    def _description_key(self, where: Where, member: str) -> str:
        return f"{self.namespace}:described:{where.region}:{where.account}/{where.repository}:{member}"

    def register(self, images: Iterable[tuple[Where, str]]) -> None:
        """Each image (its repository, its member) waits to be described with the others of its repository; one
        round trip for all."""
        now, by_repository = time.time(), defaultdict[Where, dict[str, float]](dict)
        for where, m in images:
            by_repository[where][m] = now
        if not by_repository:
            return
        pipe = self.r.pipeline(transaction=False)
        for where, members in by_repository.items():
            pipe.zadd(self._key("pending", where), members, nx=True)
            pipe.expire(self._key("pending", where), KEEP_SECONDS)
        pipe.execute()

    def turn(self, where: Where, member: str, most: int = MAX_IMAGE_IDS) -> Turn:
        """Take the image's description if it is there; else claim a batch of up to `most` waiting images of the
        repository, this one among them, unless another worker is describing it."""
        keys = [self._key("pending", where), self._key("claimed", where), self._description_key(where, member)]
        answer = cast(list[str], self._turn(keys=keys, args=[member, most, self.claim_seconds, KEEP_SECONDS]))
        if answer[0] == "description":
            return Turn(description=str(answer[1]))
        if answer[0] == "claim":
            return Turn(batch=[str(m) for m in answer[1:]])
        return Turn()

    def finish(self, where: Where, descriptions: Mapping[str, str], taken: Iterable[str] = ()) -> None:
        """Keep each claimed image's description (or SOLO) for its chain; the claim is over (also for the images
        `taken`: the claiming step's own, whose description it keeps)."""
        pipe = self.r.pipeline(transaction=False)
        for m, description in descriptions.items():
            pipe.set(self._description_key(where, m), description, ex=KEEP_SECONDS)
        pipe.zrem(self._key("claimed", where), *descriptions, *taken)
        pipe.execute()

    def release(self, where: Where, batch: list[str]) -> None:
        """The batch could not be described now: its images wait again, for the next step that runs."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zrem(self._key("claimed", where), *batch)
        pipe.zadd(self._key("pending", where), dict.fromkeys(batch, time.time()), nx=True)
        pipe.expire(self._key("pending", where), KEEP_SECONDS)
        pipe.execute()

    def waiting(self, where: Where) -> int:
        """How many images of the repository wait to be described."""
        return int(self.r.zcard(self._key("pending", where)))


def register(gathering: Gathering, pushes: Iterable[ImagePushed]) -> None:
    """As their chains start, pushed images begin to wait to be described with the others of their repository
    (one round trip for all); not an image of a repository that is not named like a ninkik one (its chain ends
    before any AWS call), nor one of a scan-complete event (its chain takes up the waiting chain's description),
    nor one a sweep's DescribeImages page described (ImagePushed.listed)."""
    gathering.register(
        (where_of(p), member(p.digest, p.event_id))
        for p in pushes
        if not p.scan_finished and p.listed is None and REPOSITORY.fullmatch(p.repository)
    )


def where_of(pushed: ImagePushed) -> Where:
    """The repository a pushed image is described in."""
    return Where(pushed.region, pushed.account, pushed.repository)


def gathered_image(gathering: Gathering, ecr: ECRClient, pushed: ImagePushed) -> Image:
    """The pushed image as DescribeImages lists it, described in one call with the other images of its repository
    waiting to be; PermanentError if it is gone. While another worker's call holds the image, the step waits for
    its answer (HOLD_SECONDS at most, as the ECR budget's own wait does), then DescriptionPending."""
    where, mine = where_of(pushed), member(pushed.digest, pushed.event_id)
    deadline = time.monotonic() + gathering.hold_seconds
    while True:
        turn = gathering.turn(where, mine)
        if turn.description == SOLO:
            return describe_image(ecr, pushed.account, pushed.region, pushed.repository, pushed.digest)
        if turn.description is not None:
            return Image.model_validate_json(turn.description)
        if turn.batch is not None:  # claimed, this image among them: its description is this step's at once
            own = describe_batch(gathering, ecr, where, turn.batch, mine)
            if own is None:  # refused or left out: a call of its own says what happened to it
                return describe_image(ecr, pushed.account, pushed.region, pushed.repository, pushed.digest)
            return own
        if time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        else:
            raise DescriptionPending("being described with other images of its repository", retry_after=WAIT_SECONDS)


def describe_batch(
    gathering: Gathering, ecr: ECRClient, where: Where, batch: list[str], own: str | None = None
) -> Image | None:
    """One DescribeImages for a claimed batch; each image's description kept for its chain, or SOLO where the call
    was refused or left the image out; but the claiming step's `own` image's is returned (None for SOLO), not kept:
    keeping it and taking it back cost two round trips per batch. A TransientError puts the batch back to wait."""
    digests = sorted({digest_of(m) for m in batch})
    try:
        found = describe_images(ecr, where.account, where.region, where.repository, digests)
    except PermanentError as exc:  # access denied, repository gone: each chain's own call says so and records it
        log.info(
            "DescribeImages of %d images refused (%s), each described alone: repository=%s",
            len(digests),
            exc,
            where.repository,
        )
        found = None
    except BaseException:
        gathering.release(where, batch)
        raise
    found = found or {}
    alone = [d for d in digests if d not in found]
    if len(digests) > 1 or alone:
        log.info(
            "described %d images in one call (%d described alone: refused or not listed): repository=%s region=%s",
            len(digests),
            len(alone),
            where.repository,
            where.region,
        )
    kept = {m: found[d].model_dump_json() if d in found else SOLO for m in batch if m != own for d in [digest_of(m)]}
    gathering.finish(where, kept, taken=[own] if own in batch else [])
    return found.get(digest_of(own)) if own in batch else None
