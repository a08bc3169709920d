"""Where artifacts come from: a registry of model storages keyed by URI scheme.

Remote folders are fetched file by file as their manifest lists them (so a plain static file
server, a bucket prefix or an MLflow artifact folder all work); a `.tar.gz` URI is fetched whole
and unpacked with tarfile's `data` filter. Integrity is checked afterwards by the loader.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

import httpx

from canaryml_server.artifact import MANIFEST_FILE, ArtifactError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


class ModelStorage(Protocol):
    def fetch(self, *, uri: str, destination: Path) -> Path:
        """Make the artifact at `uri` available as a local folder and return its path."""
        ...


def _download_listed(read: Callable[[str], bytes], destination: Path) -> Path:
    """Fetch manifest.json, then each file it lists, into `destination`."""
    manifest_bytes = read(MANIFEST_FILE)
    try:
        files = json.loads(manifest_bytes)["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise ArtifactError(f"the remote {MANIFEST_FILE} is not a canaryml manifest") from error
    destination.mkdir(parents=True, exist_ok=True)
    (destination / MANIFEST_FILE).write_bytes(manifest_bytes)
    for name in files:
        if Path(name).name != name:
            raise ArtifactError(f"the remote manifest lists a file outside its folder: {name!r}")
        (destination / name).write_bytes(read(name))
    return destination


def _unpack(archive: Path, destination: Path) -> Path:
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(destination, filter="data")
    except tarfile.TarError as error:  # includes members that would land outside `destination`
        raise ArtifactError(f"cannot unpack {archive.name}: {error}") from error
    manifests = sorted(destination.rglob(MANIFEST_FILE), key=lambda p: len(p.parts))
    if not manifests:
        raise ArtifactError(f"the archive holds no {MANIFEST_FILE}")
    return manifests[0].parent


class LocalStorage:
    def fetch(self, *, uri: str, destination: Path) -> Path:
        path = local_path(uri)
        if not path.exists():
            raise ArtifactError(f"no such model folder: {path}")
        if path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES):
            return _unpack(path, destination)
        return path


class HttpStorage:
    def __init__(self, *, timeout: float = 60.0) -> None:
        self._timeout = timeout

    def fetch(self, *, uri: str, destination: Path) -> Path:
        with httpx.Client(timeout=self._timeout, follow_redirects=True) as client:

            def get(url: str) -> bytes:
                try:
                    response = client.get(url)
                except httpx.HTTPError as error:
                    raise ArtifactError(f"cannot fetch {url}: {error}") from error
                if response.status_code != 200:
                    raise ArtifactError(f"cannot fetch {url}: HTTP {response.status_code}")
                return response.content

            if urlparse(uri).path.endswith(ARCHIVE_SUFFIXES):
                archive = destination.with_suffix(".download")
                archive.write_bytes(get(uri))
                return _unpack(archive, destination)
            base = uri.rstrip("/") + "/"
            return _download_listed(lambda name: get(base + name), destination)


class S3Storage:
    def fetch(self, *, uri: str, destination: Path) -> Path:
        try:
            import boto3
        except ImportError as error:
            raise ArtifactError("s3:// needs the s3 extra: pip install 'canaryml[s3]'") from error
        parsed = urlparse(uri)
        bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
        client = boto3.client("s3")

        def get(key: str) -> bytes:
            try:
                body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
            except Exception as error:
                raise ArtifactError(f"cannot fetch s3://{bucket}/{key}: {error}") from error
            return body

        if prefix.endswith(ARCHIVE_SUFFIXES):
            archive = destination.with_suffix(".download")
            archive.write_bytes(get(prefix))
            return _unpack(archive, destination)
        base = prefix.rstrip("/") + "/" if prefix else ""
        return _download_listed(lambda name: get(base + name), destination)


class FsspecStorage:
    """gs:// and any other scheme fsspec knows, given its filesystem package (gcsfs for gs)."""

    def fetch(self, *, uri: str, destination: Path) -> Path:
        try:
            import fsspec
        except ImportError as error:
            raise ArtifactError("gs:// needs the gcs extra: pip install 'canaryml[gcs]'") from error

        def get(url: str) -> bytes:
            try:
                with fsspec.open(url, "rb") as handle:
                    data: bytes = handle.read()
                    return data
            except Exception as error:
                raise ArtifactError(f"cannot fetch {url}: {error}") from error

        if uri.endswith(ARCHIVE_SUFFIXES):
            archive = destination.with_suffix(".download")
            archive.write_bytes(get(uri))
            return _unpack(archive, destination)
        base = uri.rstrip("/") + "/"
        return _download_listed(lambda name: get(base + name), destination)


class MlflowStorage:
    """`models:/name/version`: the artifact folder logged with the registered model."""

    def fetch(self, *, uri: str, destination: Path) -> Path:
        try:
            import mlflow.artifacts
        except ImportError as error:
            raise ArtifactError(
                "models:/ URIs need the mlflow extra: pip install 'canaryml[mlflow]'"
            ) from error
        try:
            local = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(destination))
            )
        except Exception as error:
            raise ArtifactError(f"cannot download {uri} from MLflow: {error}") from error
        manifests = sorted(local.rglob(MANIFEST_FILE), key=lambda p: len(p.parts))
        if not manifests:
            raise ArtifactError(
                f"{uri} holds no {MANIFEST_FILE}: log the folder written by `canaryml package` "
                "as the model's artifacts"
            )
        return manifests[0].parent


STORAGES: dict[str, Callable[[], ModelStorage]] = {
    "": LocalStorage,
    "file": LocalStorage,
    "http": HttpStorage,
    "https": HttpStorage,
    "s3": S3Storage,
    "gs": FsspecStorage,
    "models": MlflowStorage,
}


def scheme_of(uri: str) -> str:
    scheme = urlparse(uri).scheme
    # A Windows drive letter or a bare path has no real scheme.
    return "" if len(scheme) <= 1 else scheme


def local_path(uri: str) -> Path:
    """The path a file:// URI or a plain path names."""
    parsed = urlparse(uri)
    return Path(unquote(parsed.path) if parsed.scheme == "file" else uri)


def check_trusted(uri: str, trusted_sources: list[str]) -> None:
    if trusted_sources and not any(uri.startswith(prefix) for prefix in trusted_sources):
        raise ArtifactError(
            f"refusing {uri}: it is not under a trusted source "
            f"(CANARYML_TRUSTED_SOURCES={','.join(trusted_sources)})"
        )


def fetch_model(uri: str, *, cache_dir: Path | None = None, trusted_sources: list[str]) -> Path:
    """Resolve a model URI or path to a local artifact folder."""
    check_trusted(uri, trusted_sources)
    scheme = scheme_of(uri)
    factory = STORAGES.get(scheme)
    if factory is None:
        known = ", ".join(f"{s}://" for s in STORAGES if s) + ", or a path"
        raise ArtifactError(f"unsupported model URI scheme {scheme!r} in {uri}; use {known}")
    root = cache_dir or Path(tempfile.gettempdir()) / "canaryml-models"
    destination = root / hashlib.sha256(uri.encode()).hexdigest()[:16]
    if scheme not in ("", "file"):
        shutil.rmtree(destination, ignore_errors=True)
    destination.parent.mkdir(parents=True, exist_ok=True)
    return factory().fetch(uri=uri, destination=destination)
