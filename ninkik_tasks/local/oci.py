"""Emulator data beyond single images: what `docker buildx build --push` and `helm push` store in ECR.

moto (5.2.5) accepts put_image of an OCI index or Docker manifest list, DescribeImages reports its
imageManifestMediaType, and BatchGetImage returns it as stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import manifest

if TYPE_CHECKING:
    from mypy_boto3_ecr import ECRClient

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"


def _digest(text: str) -> str:
    return f"sha256:{hashlib.sha256(text.encode()).hexdigest()}"


def attestation_manifest(seed: str) -> str:
    """A buildx provenance attestation manifest (an OCI manifest of in-toto layers)."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "size": 167, "digest": _digest("attestation-config" + seed)},
            "layers": [
                {
                    "mediaType": "application/vnd.in-toto+json",
                    "size": 1500,
                    "digest": _digest("provenance" + seed),
                    "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"},
                }
            ],
        }
    )


def helm_chart_manifest(seed: str) -> str:
    """What `helm push` stores: an OCI manifest whose config is Helm's."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": HELM_CONFIG, "size": 117, "digest": _digest("helm-config" + seed)},
            "layers": [
                {
                    "mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
                    "size": 3500,
                    "digest": _digest("chart" + seed),
                }
            ],
        }
    )


def put(ecr: ECRClient, repository: str, body: str, tag: str | None = None, media_type: str | None = None) -> str:
    """Put one manifest (creating the repository if needed); returns its digest."""
    with contextlib.suppress(ecr.exceptions.RepositoryAlreadyExistsException):
        ecr.create_repository(repositoryName=repository)
    # The digest AWS gives a manifest (moto computes one from the layers, and picks one of 101 for an index).
    kwargs: dict[str, Any] = {"imageDigest": _digest(body)}
    if tag:
        kwargs["imageTag"] = tag
    if media_type:
        kwargs["imageManifestMediaType"] = media_type
    answer = ecr.put_image(repositoryName=repository, imageManifest=body, **kwargs)
    return str(answer["image"]["imageId"]["imageDigest"])


@dataclass
class Build:
    """What one multi-platform push stored: the index and its manifests."""

    index: str
    platforms: dict[str, str] = field(default_factory=dict)  # os/architecture[/variant] -> digest
    attestations: dict[str, str] = field(default_factory=dict)  # the platform it attests -> digest

    def manifests(self) -> list[str]:
        """Every manifest the index lists, in the order buildx pushes them (before the index)."""
        return [*self.platforms.values(), *self.attestations.values()]


def push_build(
    ecr: ECRClient,
    repository: str,
    seed: str,
    platforms: tuple[str, ...] = ("linux/amd64",),
    tag: str | None = None,
    *,
    attestations: bool = True,
    media_type: str = OCI_INDEX,
) -> Build:
    """What `docker buildx build --platform ... --push` stores: a manifest per platform, an attestation per
    platform (unless `attestations` is False, as with --provenance=false) and the index (tagged) listing them."""
    entries: list[dict[str, Any]] = []
    build = Build(index="")
    attestation_entries = []
    for label in platforms:
        os_name, architecture, *variant = label.split("/")
        body = manifest(f"{seed}-{label}")
        digest = put(ecr, repository, body)
        build.platforms[label] = digest
        platform = {"os": os_name, "architecture": architecture, **({"variant": variant[0]} if variant else {})}
        entries.append({"mediaType": DOCKER_MANIFEST, "digest": digest, "size": len(body), "platform": platform})
        if attestations:
            body = attestation_manifest(f"{seed}-{label}")
            attestation = put(ecr, repository, body)
            build.attestations[label] = attestation
            attestation_entries.append(
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": attestation,
                    "size": len(body),
                    "platform": {"os": "unknown", "architecture": "unknown"},
                    "annotations": {
                        "vnd.docker.reference.digest": digest,
                        "vnd.docker.reference.type": "attestation-manifest",
                    },
                }
            )
    index = json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": entries + attestation_entries})
    build.index = put(ecr, repository, index, tag, media_type)
    return build


def media_types(body: str) -> tuple[str, str | None]:
    """(manifest media type, artifact media type) of a manifest, as ECR puts them in the push event."""
    data = json.loads(body)
    config = (data.get("config") or {}).get("mediaType")
    return str(data.get("mediaType")), data.get("artifactType") or config
