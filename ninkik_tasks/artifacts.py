"""What a pushed manifest is: a container image, an image index, or an OCI artifact that is not an image.

ECR stores more than images: Helm charts, SOCI indexes, cosign signatures, attestations and SBOMs, other OCI
artifacts. ninkik reports images only; everything else ends its chain with a recorded reason (pipeline.SKIPS).
"""

from __future__ import annotations

import re

from .findings import Image

# The config media types of container images: the one list that says what counts as an image. ECR's
# `artifactMediaType` (DescribeImages) and the push event's `artifact-media-type` carry the config media type,
# or the manifest's `artifactType` where it has one. A manifest without one (Docker schema 1) is an image.
IMAGE_CONFIG_MEDIA_TYPES = (
    "application/vnd.docker.container.image.v1+json",
    "application/vnd.oci.image.config.v1+json",
)
# Manifests that list other manifests (one per platform, plus attestations): reported as one index.
INDEX_MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
# Manifests that describe one image (or one artifact: the config media type tells which).
MANIFEST_MEDIA_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
)
# cosign's tag convention for what it stores beside an image: sha256-<digest of the image>.sig | .att | .sbom
COSIGN_TAG = re.compile(r"^sha256-[0-9a-f]{64}\.(sig|att|sbom)$")

# Reasons a chain ends without a report (pipeline.SKIPS; ninkik_pipeline_skipped_total{reason}).
NOT_AN_IMAGE = "not_an_image"  # an OCI artifact by its media types: Helm chart, SOCI index, ...
COSIGN_ARTIFACT = "cosign_artifact"  # a cosign signature, attestation or SBOM, by its tag
IN_INDEX = "in_index"  # a platform or attestation manifest of an index: reported inside the index's report
LIKELY_ATTESTATION = "likely_attestation"  # untagged, no index known, scan UNSUPPORTED_IMAGE
SKIP_REASONS = (NOT_AN_IMAGE, COSIGN_ARTIFACT, IN_INDEX, LIKELY_ATTESTATION)


def is_index(image: Image) -> bool:
    """Whether the manifest is an image index or a Docker manifest list."""
    return image.manifest_media_type in INDEX_MEDIA_TYPES


def not_an_image(image: Image) -> tuple[str, str] | None:
    """(reason, message) when the manifest is not a container image (nor an index of images), else None."""
    artifact, manifest = image.artifact_media_type, image.manifest_media_type
    if artifact is not None and artifact not in IMAGE_CONFIG_MEDIA_TYPES:
        return NOT_AN_IMAGE, f"an OCI artifact of type {artifact}, not a container image"
    if manifest is not None and manifest not in INDEX_MEDIA_TYPES + MANIFEST_MEDIA_TYPES:
        return NOT_AN_IMAGE, f"a manifest of type {manifest}, not a container image"
    if image.tags and all(COSIGN_TAG.fullmatch(tag) for tag in image.tags):
        kind = {"sig": "signature", "att": "attestation", "sbom": "SBOM"}[image.tags[0].rsplit(".", 1)[1]]
        return COSIGN_ARTIFACT, f"a cosign {kind} (tag {image.tags[0]}), not a container image"
    return None
