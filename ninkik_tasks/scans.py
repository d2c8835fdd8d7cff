"""Reading a described image's scan: at its turn in the wait, held for an index, or every platform of an index.

The fetch_scan_findings step (stages.py has the steps before and after it); scanwait.py paces the reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime, timedelta

from .artifacts import IN_INDEX, LIKELY_ATTESTATION, is_index
from .ecr import not_scanned, scan_findings
from .errors import IMAGE_GONE, PermanentError, ScanNotReady
from .findings import Image, Index, Report, Scan
from .holdings import Holding
from .indexes import UNREAD_REASON, Platform, merge
from .notify import idempotency_key, render
from .ratelimit import RateLimited
from .scanwait import Turn, member
from .stages import Described, Scanned, Services, describe

log = logging.getLogger(__name__)
INDEX_UNREAD = "INDEX_UNREAD"  # the scan status of an index whose manifest ecr:BatchGetImage could not read
NOT_WAITING = Turn(after_event=None, due=None)  # a chain started by a scan-complete event: read now, as final


def pushed_at(msg: Described) -> datetime:
    """When the image was pushed (DescribeImages, else the event's time), as an aware datetime."""
    when = msg.image.pushed_at or msg.event.time
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def scan_deadline(svc: Services, msg: Described) -> datetime:
    """When to stop waiting for the scan: the configured wait after the push."""
    return pushed_at(msg) + timedelta(seconds=svc.settings.scan_wait_seconds)


def settle_deadline(svc: Services, msg: Described) -> datetime:
    """Until when an enhanced scan that is ACTIVE with no findings is not taken as final."""
    s = svc.settings
    return pushed_at(msg) + timedelta(seconds=min(s.enhanced_settle_seconds, s.scan_wait_seconds))


def waiting_as(image: Image) -> str:
    """How ScanWaits names an image: registry/repository@digest."""
    return member(image.registry_id, image.repository, image.digest)


def read_scan(
    svc: Services, msg: Described, image: Image, now: datetime, finished: bool, rereading: bool = False
) -> Scan:
    """One read of `image`'s scan; ScanNotReady while it is not final. `rereading`: a scan still running, read
    again: it gives way to first reads in the ECR budget (RateLimited when they queue)."""
    scan = scan_findings(svc.ecr(msg.event.account, msg.event.region, rereading=rereading), image)
    if scan.status == "ACTIVE" and not scan.findings and not finished and now < settle_deadline(svc, msg):
        # ACTIVE says continuous scanning is on, not that Inspector's first scan is done (aws/aws-cli#6759).
        raise ScanNotReady("enhanced scan ACTIVE with no findings yet: Inspector's first scan may be running")
    return scan


def scan_step(svc: Services, msg: Described, now: datetime | None = None) -> Scanned:
    """Read the scan's findings (an index's: every platform's); ScanNotReady until done or the wait ran out."""
    now = now or datetime.now(UTC)
    if msg.gone:
        return removal(msg, msg.observed)
    index = None
    try:
        if is_index(msg.image):
            scan, index = index_scan(svc, msg, now)
        else:
            scan = image_scan(svc, msg, now)
    except ScanNotReady:
        ttl = svc.settings.scan_wait_seconds + 3600
        svc.scan_waits.park(msg.event.region, waiting_as(msg.image), msg.model_dump_json(), ttl)
        raise
    except PermanentError as exc:
        if exc.reason != IMAGE_GONE:
            raise
        svc.scan_waits.done(msg.event.region, waiting_as(msg.image))  # if it waited: its wait ends here
        return removal(msg, now.timestamp())  # deleted since it was described
    report = Report(image=msg.image, scan=scan, index=index)
    key = idempotency_key(msg.match, report)
    ttl = svc.settings.result_expires_seconds
    svc.records.put_report(key, json.dumps(render(report, msg.event.source)), ttl)
    image = msg.image
    if scan.in_use_count is not None or scan.last_in_use_at is not None:
        where = (msg.event.account, msg.event.region, msg.event.repository, msg.event.digest)
        svc.holdings.record_in_use(*where, scan.in_use_count, scan.last_in_use_at)
    holding = Holding(
        key=key,
        observed=msg.observed or now.timestamp(),
        tags=image.tags,
        status=image.status,
        scan=scan.status,
        scan_type=scan.type,
        tenant=msg.match.tenant,
        product=msg.match.product,
    )
    return Scanned(
        event=msg.event, match=msg.match, key=key, status=scan.status, stamp=report.stamp(), holding=holding
    )


def removal(msg: Described, observed: float) -> Scanned:
    """The message that has the report step remove the image from ninkik (lifecycle.remove_step)."""
    material = "\n".join(("DELETE", msg.match.tenant, msg.event.repository, msg.event.digest))
    key = hashlib.sha256(material.encode()).hexdigest()
    holding = Holding(observed=observed, gone=True)
    return Scanned(event=msg.event, match=msg.match, key=key, status="GONE", holding=holding, gone=True)


def image_scan(svc: Services, msg: Described, now: datetime) -> Scan:
    """One image's scan. An untagged one is first looked up among the indexes' manifests, then held (see hold)."""
    region, member = msg.event.region, waiting_as(msg.image)
    remaining = (scan_deadline(svc, msg) - now).total_seconds()
    untagged = not msg.image.tags
    if untagged:
        _not_in_index(svc, msg)
    held = svc.scan_waits.held(region, member) if untagged else None
    if held is not None and held[0] > 0:
        raise ScanNotReady("held for an index that lists it", remaining=held[0], next_read=held[0])
    turn = svc.scan_waits.turn(region, member) if held is None and not msg.event.scan_finished else NOT_WAITING
    if held is not None:
        scan = Scan.model_validate_json(held[1])
    elif turn.after_event and msg.event.source == "push":
        scan = Scan.model_validate_json(turn.after_event)  # read by the scan event's chain: not read again
    else:
        finished = msg.event.scan_finished or turn.after_event is not None
        due = None if finished else turn.due
        if due and remaining > 0:
            raise ScanNotReady("not this image's turn to be read yet", remaining=remaining, next_read=due)
        rereading = due is not None
        try:
            scan = read_scan(svc, msg, msg.image, now, finished, rereading)
        except RateLimited:
            if not rereading or remaining <= 0:
                raise
            next_read = svc.scan_waits.next_read(region, member)
            raise ScanNotReady(
                "the ECR budget is queued with first reads: read again at its next turn", remaining, next_read
            ) from None
        except ScanNotReady as exc:
            if remaining > 0:
                next_read = svc.scan_waits.next_read(region, member)
                if not rereading and not finished and svc.scan_waits.finished(region, member):
                    next_read = 0.0  # its event came during this first read, when nothing waited to be woken
                raise ScanNotReady(str(exc), remaining=remaining, next_read=next_read) from None
            log.info("not scanned within %ss: %s", svc.settings.scan_wait_seconds, describe(msg.event, msg.match))
            scan = not_scanned()
        else:
            if finished:
                svc.scan_waits.read_after_event(region, member, scan.model_dump_json())
    # The image's wait or hold ends here if it had one (an event's chain ends the wait of the chain it reads for);
    # a first read that found the scan final never waited: nothing to end.
    waited = held is not None or msg.event.scan_finished or turn.due is not None
    if untagged and scan.status == "UNSUPPORTED_IMAGE":
        if waited:
            svc.scan_waits.done(region, member)
        raise PermanentError(
            LIKELY_ATTESTATION, "untagged, in no index known, and its scan is UNSUPPORTED_IMAGE: likely an attestation"
        )
    hold = hold_seconds(svc, msg, now) if untagged and held is None else 0.0
    if hold > 0:
        svc.scan_waits.hold(region, member, hold, scan.model_dump_json())  # its wait is over, its hold begins
        svc.stats.incr("held", "untagged")
        log.info("untagged image held %.1fs for an index that lists it: %s", hold, describe(msg.event, msg.match))
        raise ScanNotReady("held for an index that lists it", remaining=hold, next_read=hold)
    if waited:
        svc.scan_waits.done(region, member)
    return scan


def hold_seconds(svc: Services, msg: Described, now: datetime) -> float:
    """How much longer an untagged pushed image waits for an index to list it (0: report it now).

    Platform manifests are pushed just before their index: an untagged image is held until
    NINKIK_UNTAGGED_HOLD_SECONDS after its push, apart from (and usually inside) its scan wait. Not where
    ecr:BatchGetImage is refused (no index can list it) nor for sweeps (they read indexes first).
    """
    s, e = svc.settings, msg.event
    if e.source != "push" or s.untagged_hold_seconds <= 0 or svc.claims.unreadable(e.region, msg.image.registry_id):
        return 0.0
    return (pushed_at(msg) + timedelta(seconds=s.untagged_hold_seconds) - now).total_seconds()


def _not_in_index(svc: Services, msg: Described) -> None:
    image = msg.image
    [index] = svc.claims.index_of(msg.event.region, image.registry_id, image.repository, [image.digest])
    if index is not None:
        svc.scan_waits.done(msg.event.region, waiting_as(image))
        raise PermanentError(IN_INDEX, f"a manifest of the index {index}: reported in that index's report")


def index_scan(svc: Services, msg: Described, now: datetime) -> tuple[Scan, Index]:
    """An index's scan: every platform's read, until all are final or the wait ran out (those: NOT_SCANNED)."""
    if msg.platforms is None:
        return Scan(type="NONE", status=INDEX_UNREAD), Index(platforms=None, unread_reason=UNREAD_REASON)
    region, member = msg.event.region, waiting_as(msg.image)
    remaining = (scan_deadline(svc, msg) - now).total_seconds()
    # A platform's scan-complete event marks its index (ingest): read it now, each platform by its own status.
    turn = NOT_WAITING if msg.event.scan_finished else svc.scan_waits.turn(region, member)
    finished = msg.event.scan_finished or turn.after_event is not None
    due = None if finished else turn.due
    if due and remaining > 0:
        raise ScanNotReady("not this index's turn to be read yet", remaining=remaining, next_read=due)
    rereading = due is not None and remaining > 0  # read again: its platforms give way to first reads
    scans: list[tuple[Platform, Scan]] = []
    pending: list[str] = []  # the platforms still scanning, as ScanWaits names them
    waits, keep_for = svc.scan_waits, svc.settings.scan_wait_seconds + 600
    for platform in msg.platforms:
        image = msg.image.model_copy(
            update={"digest": platform.digest, "tags": [], "manifest_media_type": None, "artifact_media_type": None}
        )
        kept = waits.kept(region, member, platform.digest)
        if kept is not None:  # final at an earlier read of this wait: not read again
            scans.append((platform, Scan.model_validate_json(kept)))
            continue
        done = waits.finished(region, waiting_as(image))  # this platform's own scan-complete event
        try:
            scan = read_scan(svc, msg, image, now, done, rereading)
            waits.keep(region, member, platform.digest, scan.model_dump_json(), keep_for)
            scans.append((platform, scan))
        except (ScanNotReady, RateLimited) as exc:
            if isinstance(exc, RateLimited) and not rereading:
                raise  # a first or last read waits for the budget (as image_scan's), never NOT_SCANNED for it
            pending.append(waiting_as(image))
            scans.append((platform, not_scanned()))
    if pending and remaining > 0:
        # Each platform still scanning is one waiting image: its reads count against the budget as any other's.
        next_read = max(waits.next_read(region, m) for m in [member, *pending])
        if due is None and not finished and waits.finished(region, member):
            next_read = 0.0  # a platform's event came during this first read, when the index was not yet waiting
        raise ScanNotReady(
            f"{len(pending)} of {len(scans)} platforms' scans not final", remaining=remaining, next_read=next_read
        )
    if pending:
        log.info(
            "%d platforms not scanned within %ss: %s", len(pending), svc.settings.scan_wait_seconds, describe(msg.event)
        )
    waits.done(region, member, *(waiting_as(msg.image.model_copy(update={"digest": p.digest})) for p in msg.platforms))
    waits.forget_kept(region, member, [p.digest for p in msg.platforms])
    scan, platforms = merge(scans)
    return scan, Index(platforms=platforms)
