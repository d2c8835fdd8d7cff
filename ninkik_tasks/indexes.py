"""Image indexes (multi-platform builds): read with ecr:BatchGetImage, their platforms' scans merged into one report.

`docker buildx build --push` stores an index (tagged), one manifest per platform and one attestation manifest per
platform (untagged); ECR sends a push event for each. The index is reported once with every platform's scan; its
manifests are claimed here (in Redis) so that their own untagged events end without a report (artifacts.IN_INDEX).
Without ecr:BatchGetImage (the setup guide does not grant it) nothing links a platform manifest to its index: the
index is reported as an index without platforms, each platform image on its own.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import redis
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict

from .artifacts import IMAGE_CONFIG_MEDIA_TYPES, INDEX_MEDIA_TYPES, MANIFEST_MEDIA_TYPES
from .ecr import DENIED, classified, error_code
from .errors import PermanentError
from .findings import Finding, Image, PlatformScan, Scan, severity_counts

if TYPE_CHECKING:
    from mypy_boto3_ecr import ECRClient

log = logging.getLogger(__name__)

# How buildx marks an attestation manifest in the index (its platform is unknown/unknown).
ATTESTATION_ANNOTATION = ("vnd.docker.reference.type", "attestation-manifest")
BATCH_GET_IMAGE_STATEMENT = (
    '{"Effect": "Allow", "Action": "ecr:BatchGetImage", '
    '"Resource": "arn:aws:ecr:<region>:<account>:repository/${TENANT_UUID}/*"}'
)
UNREAD_REASON = (
    "ecr:BatchGetImage is not granted: this index's platform images are reported on their own; add "
    f"{BATCH_GET_IMAGE_STATEMENT} to the ECR policy to have them, with their findings, in this report"
)
# The most platforms an index report reads (buildx builds have a handful; each costs a scan read per poll).
MAX_PLATFORMS = 64
# Statuses of a platform's scan that make the index's scan complete.
FINAL_WITH_FINDINGS = ("COMPLETE", "ACTIVE")


class Platform(BaseModel):
    """One platform manifest of an index."""

    model_config = ConfigDict(frozen=True)
    digest: str
    os: str | None = None
    architecture: str | None = None
    variant: str | None = None

    @property
    def label(self) -> str:
        """os/architecture[/variant], e.g. linux/arm64/v8."""
        return "/".join(p for p in (self.os or "unknown", self.architecture or "unknown", self.variant) if p)


class IndexUnreadable(Exception):
    """ecr:BatchGetImage is not granted: the index's manifests cannot be read."""


def read_manifest(ecr: ECRClient, image: Image) -> dict[str, Any]:
    """The manifest of `image` (ecr:BatchGetImage); IndexUnreadable where the policy does not grant it."""
    with classified("ecr:BatchGetImage"):
        try:
            answer = ecr.batch_get_image(
                registryId=image.registry_id,
                repositoryName=image.repository,
                imageIds=[{"imageDigest": image.digest}],
                acceptedMediaTypes=[*INDEX_MEDIA_TYPES, *MANIFEST_MEDIA_TYPES],
            )
        except ClientError as exc:
            if error_code(exc) in DENIED:
                raise IndexUnreadable(str(exc)) from None
            raise
    images = answer.get("images") or []
    if not images:
        raise PermanentError("image_gone", "ecr:BatchGetImage found no such image")
    try:
        manifest = json.loads(images[0].get("imageManifest") or "")
    except ValueError:
        raise PermanentError("bad_manifest", "ecr:BatchGetImage returned a manifest that is not JSON") from None
    return manifest if isinstance(manifest, dict) else {}


def platforms_of(manifest: dict[str, Any]) -> tuple[list[Platform], list[str]]:
    """The index's platform manifests (attestations left out), and the digests of every manifest it lists."""
    platforms, digests = [], []
    for entry in manifest.get("manifests") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("digest"), str):
            continue
        digests.append(entry["digest"])
        annotations = entry.get("annotations") or {}
        platform = entry.get("platform") or {}
        key, value = ATTESTATION_ANNOTATION
        artifact = entry.get("artifactType")
        if (
            annotations.get(key) == value
            or entry.get("mediaType") in INDEX_MEDIA_TYPES
            or (artifact is not None and artifact not in IMAGE_CONFIG_MEDIA_TYPES)
        ):
            # An attestation, an OCI artifact listed beside the images (a SOCI index), or a nested index (which
            # buildx does not write): not a platform image.
            continue
        platforms.append(
            Platform(
                digest=entry["digest"],
                os=_text(platform.get("os")),
                architecture=_text(platform.get("architecture")),
                variant=_text(platform.get("variant")),
            )
        )
    if len(platforms) > MAX_PLATFORMS:
        # The rest are not claimed: each is reported on its own, none is lost.
        log.warning("an index lists %d platforms: the first %d are in its report", len(platforms), MAX_PLATFORMS)
        apart = {p.digest for p in platforms[MAX_PLATFORMS:]}
        return platforms[:MAX_PLATFORMS], [d for d in digests if d not in apart]
    return platforms, digests


def config_media_type(manifest: dict[str, Any]) -> str | None:
    """An image manifest's artifactType, else its config's media type (what ECR calls artifactMediaType)."""
    config = manifest.get("config") or {}
    return _text(manifest.get("artifactType")) or (_text(config.get("mediaType")) if isinstance(config, dict) else None)


def merge(scans: list[tuple[Platform, Scan]]) -> tuple[Scan, list[PlatformScan]]:
    """The index's scan: distinct findings of all platforms (each naming its platforms), and each platform's own.

    Its status is COMPLETE (ACTIVE for enhanced) when every platform's is, else the first other status among the
    platforms (NOT_SCANNED, FAILED, UNSUPPORTED_IMAGE ...); each platform keeps its own status.
    """
    distinct: dict[str, tuple[Finding, list[str]]] = {}
    for platform, scan in scans:
        for finding in scan.findings:
            key = json.dumps(finding.model_dump(mode="json", exclude={"platforms"}), sort_keys=True)
            if key not in distinct:
                distinct[key] = (finding, [])
            if platform.label not in distinct[key][1]:
                distinct[key][1].append(platform.label)
    findings = [f.model_copy(update={"platforms": sorted(labels)}) for f, labels in distinct.values()]
    statuses = [scan.status for _, scan in scans]
    status = next((s for s in statuses if s not in FINAL_WITH_FINDINGS), None)
    if status is None:
        status = "ACTIVE" if "ACTIVE" in statuses else "COMPLETE"
    types = {scan.type for _, scan in scans}
    scan_type = "ENHANCED" if "ENHANCED" in types else "BASIC" if "BASIC" in types else "NONE"
    completed = [scan.completed_at for _, scan in scans if scan.completed_at is not None]
    merged = Scan(
        type=scan_type,  # type: ignore[arg-type]
        status=status,
        completed_at=max(completed) if completed else None,
        severity_counts=severity_counts(findings),
        findings=findings,
    )
    per_platform = [
        PlatformScan(
            digest=platform.digest,
            platform=platform.label,
            os=platform.os,
            architecture=platform.architecture,
            variant=platform.variant,
            scan_type=scan.type,
            scan_status=scan.status,
            completed_at=scan.completed_at,
            severity_counts=scan.severity_counts,
        )
        for platform, scan in scans
    ]
    return merged, per_platform


class Claims:
    """Which index lists a manifest, per repository, so its own event is not reported a second time."""

    def __init__(self, client: redis.Redis, namespace: str) -> None:
        self.r = client
        self.namespace = namespace

    def _key(self, region: str, registry: str, repository: str, digest: str) -> str:
        return f"{self.namespace}:inindex:{region}:{registry}/{repository}@{digest}"

    def _all_key(self, region: str, registry: str, repository: str, digest: str) -> str:
        return f"{self.namespace}:inindexes:{region}:{registry}/{repository}@{digest}"

    def claim(self, region: str, registry: str, repository: str, digests: list[str], index: str, ttl: int) -> None:
        """Remember that the index `index` lists these manifests (for `ttl` s: longer than rescans look back).

        One index per manifest decides where the manifest is reported (the latest claim); every index that
        lists it is kept as well, for the finding events of the manifest (`indexes_of`).
        """
        if not digests:
            return
        pipe = self.r.pipeline(transaction=False)
        for digest in digests:
            pipe.set(self._key(region, registry, repository, digest), index, ex=ttl)
            pipe.sadd(self._all_key(region, registry, repository, digest), index)
            pipe.expire(self._all_key(region, registry, repository, digest), ttl)
        pipe.execute()

    def indexes_of(self, region: str, registry: str, repository: str, digest: str) -> list[str]:
        """Every index known to list the manifest `digest` (sorted), none if it is in no index."""
        pipe = self.r.pipeline(transaction=False)
        pipe.smembers(self._all_key(region, registry, repository, digest))
        pipe.get(self._key(region, registry, repository, digest))
        members, latest = pipe.execute()
        found = {str(m) for m in members} | ({str(latest)} if latest is not None else set())
        return sorted(found)

    def index_of(self, region: str, registry: str, repository: str, digests: list[str]) -> list[str | None]:
        """For each digest, the index that lists it, or None."""
        if not digests:
            return []
        values = self.r.mget([self._key(region, registry, repository, d) for d in digests])
        return [str(v) if v is not None else None for v in values]

    def mark_unreadable(self, region: str, registry: str, ttl: int = 3600) -> None:
        """ecr:BatchGetImage was refused in this registry: untagged images are not held for an index."""
        self.r.set(f"{self.namespace}:indexunread:{region}:{registry}", "1", ex=ttl)

    def unreadable(self, region: str, registry: str) -> bool:
        """Whether ecr:BatchGetImage was refused in this registry within the last hour."""
        return bool(self.r.exists(f"{self.namespace}:indexunread:{region}:{registry}"))


def claim_listed(
    ecr: ECRClient, claims: Claims, image: Image, indexes: list[str], untagged: list[str], ttl: int
) -> set[str]:
    """For a sweep: which of `untagged` (digests of one repository) an index lists, reading `indexes` (digests of
    the same repository) only when some are not claimed already. `image` names the repository."""
    unclaimed = [
        d
        for d, index in zip(
            untagged, claims.index_of(image.region, image.registry_id, image.repository, untagged), strict=True
        )
        if index is None
    ]
    if unclaimed and indexes and not claims.unreadable(image.region, image.registry_id):
        for digest in indexes:
            try:
                manifest = read_manifest(ecr, image.model_copy(update={"digest": digest}))
            except IndexUnreadable:
                claims.mark_unreadable(image.region, image.registry_id)
                break
            except PermanentError:
                continue  # deleted since it was listed
            _, listed = platforms_of(manifest)
            claims.claim(image.region, image.registry_id, image.repository, listed, digest, ttl)
        found = claims.index_of(image.region, image.registry_id, image.repository, unclaimed)
        unclaimed = [d for d, index in zip(unclaimed, found, strict=True) if index is None]
    return set(untagged) - set(unclaimed)


# What `ninkik-tasks check` says about ecr:BatchGetImage.
GRANTED = (
    "ecr:BatchGetImage is granted on {repository}: a multi-platform image is one report per index, with each "
    "platform's digest, platform and findings, and its platform and attestation manifests are not reported apart"
)
NOT_GRANTED = (
    "ecr:BatchGetImage is not granted on {repository} (the setup guide does not grant it): each platform image of "
    "a multi-platform build is reported on its own (untagged) and the tagged index without findings "
    "(status INDEX_UNREAD); adding {statement} to the ECR policy makes it one report per tag with every "
    "platform's findings, and leaves attestation manifests out by the index rather than by their scan status"
)


def probe(ecr: ECRClient, account: str, region: str, repository: str, digest: str) -> tuple[bool, str]:
    """(granted, the line `check` prints) for ecr:BatchGetImage on one image of `repository`."""
    try:
        ecr.batch_get_image(
            registryId=account,
            repositoryName=repository,
            imageIds=[{"imageDigest": digest}],
            acceptedMediaTypes=[*INDEX_MEDIA_TYPES, *MANIFEST_MEDIA_TYPES],
        )
    except ClientError as exc:
        if error_code(exc) not in DENIED:
            return False, f"ecr:BatchGetImage on {repository} failed: {error_code(exc)}"
        tenant = repository.split("/", 1)[0]
        statement = (
            BATCH_GET_IMAGE_STATEMENT.replace("<region>", region)
            .replace("<account>", account)
            .replace("${TENANT_UUID}", tenant)
        )
        return False, NOT_GRANTED.format(repository=repository, statement=statement)
    return True, GRANTED.format(repository=repository)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
