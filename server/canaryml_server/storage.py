"""Where artifacts come from: a registry of model storages keyed by URI scheme.

Remote folders are fetched file by file as their manifest lists them (so a plain static file
server, a bucket prefix or an MLflow artifact folder all work); a `.tar.gz` URI is fetched whole
and unpacked with tarfile's `data` filter. Integrity is checked afterwards by the loader.

Every fetch is bounded (`ArtifactLimits`): the bytes downloaded or unpacked and the number of
files, so a small archive cannot fill the disk. `CANARYML_TRUSTED_SOURCES` is compared on the
parsed URI (scheme, host, port, and the path segment by segment), never as a string prefix; a
local path is compared after resolving it (symlinks and `..` included); an HTTP redirect is
followed only to a trusted source.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol
from urllib.parse import quote, unquote, urlsplit

import httpx

from canaryml_server.artifact import MANIFEST_FILE, ArtifactError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
# A model server pod's default memory limit is 1 GiB: a larger artifact could not be loaded.
DEFAULT_MAX_ARTIFACT_BYTES = 1024**3
DEFAULT_MAX_ARTIFACT_FILES = 1000
MAX_REDIRECTS = 5
_CHUNK = 1024 * 1024
# A file a remote manifest lists is fetched as BASE/NAME and written as DEST/NAME: a plain name,
# nothing a server or a filesystem could read as another folder ('..', '/', '%2e%2e').
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class ArtifactLimits:
    """What one fetch may bring: trusted sources (empty: any), total bytes, number of files."""

    trusted_sources: list[str] = field(default_factory=list)
    max_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES
    max_files: int = DEFAULT_MAX_ARTIFACT_FILES


class ModelStorage(Protocol):
    def fetch(self, *, uri: str, destination: Path, limits: ArtifactLimits) -> Path:
        """Make the artifact at `uri` available as a local folder and return its path."""
        ...


class _Budget:
    """The bytes one fetch may still write; refuses clearly once they run out."""

    def __init__(self, limits: ArtifactLimits) -> None:
        self.left = limits.max_bytes
        self.limit = limits.max_bytes

    def take(self, size: int, what: str) -> None:
        self.left -= size
        if self.left < 0:
            raise ArtifactError(
                f"refusing {what}: the artifact is larger than {self.limit} bytes "
                "(CANARYML_MAX_ARTIFACT_BYTES)"
            )


def _copy_capped(source: IO[bytes], target: Path, budget: _Budget, what: str) -> None:
    with target.open("wb") as out:
        while chunk := source.read(_CHUNK):
            budget.take(len(chunk), what)
            out.write(chunk)


Download = Callable[[str, Path, _Budget], None]
"""Fetch one file (a name relative to the artifact, or '' for the URI itself) to a path."""


def _download_listed(download: Download, destination: Path, limits: ArtifactLimits) -> Path:
    """Fetch manifest.json, then each file it lists, into `destination`."""
    budget = _Budget(limits)
    destination.mkdir(parents=True, exist_ok=True)
    manifest_path = destination / MANIFEST_FILE
    download(MANIFEST_FILE, manifest_path, budget)
    try:
        files = json.loads(manifest_path.read_bytes())["files"]
        names = list(files)
    except (ValueError, KeyError, TypeError) as error:
        raise ArtifactError(f"the remote {MANIFEST_FILE} is not a canaryml manifest") from error
    if len(names) + 1 > limits.max_files:
        raise ArtifactError(
            f"the remote {MANIFEST_FILE} lists {len(names)} files, more than "
            f"{limits.max_files} (CANARYML_MAX_ARTIFACT_FILES)"
        )
    for name in names:
        if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or name == MANIFEST_FILE:
            raise ArtifactError(
                f"the remote {MANIFEST_FILE} lists {name!r}: only plain file names in the "
                "artifact's own folder are allowed"
            )
        download(name, destination / name, budget)
    return destination


def _unpack(archive: Path, destination: Path, limits: ArtifactLimits) -> Path:
    budget = _Budget(limits)
    try:
        with tarfile.open(archive) as tar:
            # Headers are read one by one and checked before anything is written, so a bomb is
            # refused after reading at most the limit, not after filling the disk.
            members: list[tarfile.TarInfo] = []
            for member in tar:
                members.append(member)
                if len(members) > limits.max_files:
                    raise ArtifactError(
                        f"refusing {archive.name}: it holds more than {limits.max_files} "
                        "entries (CANARYML_MAX_ARTIFACT_FILES)"
                    )
                budget.take(member.size if member.isfile() else 0, archive.name)
            tar.extractall(destination, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as error:
        # TarError includes members that would land outside `destination`.
        raise ArtifactError(f"cannot unpack {archive.name}: {error}") from error
    manifests = sorted(destination.rglob(MANIFEST_FILE), key=lambda p: len(p.parts))
    if not manifests:
        raise ArtifactError(f"the archive holds no {MANIFEST_FILE}")
    return manifests[0].parent


def _fetch_remote(
    uri: str, path: str, destination: Path, limits: ArtifactLimits, download: Download
) -> Path:
    """A remote artifact: an archive fetched whole and unpacked, or a folder file by file."""
    if path.endswith(ARCHIVE_SUFFIXES):
        archive = destination.with_suffix(".download")
        download("", archive, _Budget(limits))
        return _unpack(archive, destination, limits)
    return _download_listed(download, destination, limits)


class LocalStorage:
    def fetch(self, *, uri: str, destination: Path, limits: ArtifactLimits) -> Path:
        path = local_path(uri).resolve()
        if not path.exists():
            raise ArtifactError(f"no such model folder: {path}")
        if path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES):
            return _unpack(path, destination, limits)
        return path


class HttpStorage:
    """http(s)://: redirects are followed one hop at a time, each checked like the URI itself
    (a trusted source when any are configured; never from https to http)."""

    def __init__(self, *, timeout: float = 60.0) -> None:
        self._timeout = timeout

    def fetch(self, *, uri: str, destination: Path, limits: ArtifactLimits) -> Path:
        base = uri.rstrip("/") + "/"
        with httpx.Client(timeout=self._timeout, follow_redirects=False) as client:

            def download(name: str, target: Path, budget: _Budget) -> None:
                url = base + quote(name) if name else uri
                try:
                    self._get(client, url, target, budget, limits)
                except httpx.HTTPError as error:
                    raise ArtifactError(f"cannot fetch {url}: {error}") from error

            return _fetch_remote(uri, urlsplit(uri).path, destination, limits, download)

    def _get(
        self,
        client: httpx.Client,
        url: str,
        target: Path,
        budget: _Budget,
        limits: ArtifactLimits,
    ) -> None:
        request = client.build_request("GET", url)
        for _ in range(MAX_REDIRECTS + 1):
            response = client.send(request, stream=True)
            try:
                if response.next_request is None:
                    if response.status_code != 200:
                        raise ArtifactError(f"cannot fetch {url}: HTTP {response.status_code}")
                    what = str(request.url)
                    with target.open("wb") as out:
                        for chunk in response.iter_bytes(_CHUNK):
                            budget.take(len(chunk), what)
                            out.write(chunk)
                    return
                following = response.next_request
            finally:
                response.close()
            hop = str(following.url)
            if request.url.scheme == "https" and following.url.scheme != "https":
                raise ArtifactError(f"refusing the redirect from {request.url} to {hop}: not https")
            try:
                check_trusted(hop, limits.trusted_sources)
            except ArtifactError as error:
                raise ArtifactError(f"refusing the redirect from {request.url}: {error}") from None
            request = following
        raise ArtifactError(f"cannot fetch {url}: more than {MAX_REDIRECTS} redirects")


class S3Storage:
    def fetch(self, *, uri: str, destination: Path, limits: ArtifactLimits) -> Path:
        try:
            import boto3
        except ImportError as error:
            raise ArtifactError("s3:// needs the s3 extra: pip install 'canaryml[s3]'") from error
        parsed = urlsplit(uri)
        bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
        client = boto3.client("s3")
        base = prefix.rstrip("/") + "/" if prefix else ""

        def download(name: str, target: Path, budget: _Budget) -> None:
            key = base + name if name else prefix
            try:
                body = client.get_object(Bucket=bucket, Key=key)["Body"]
                _copy_capped(body, target, budget, f"s3://{bucket}/{key}")
            except ArtifactError:
                raise
            except Exception as error:
                raise ArtifactError(f"cannot fetch s3://{bucket}/{key}: {error}") from error

        return _fetch_remote(uri, prefix, destination, limits, download)


class FsspecStorage:
    """gs:// and any other scheme fsspec knows, given its filesystem package (gcsfs for gs)."""

    def fetch(self, *, uri: str, destination: Path, limits: ArtifactLimits) -> Path:
        try:
            import fsspec
        except ImportError as error:
            raise ArtifactError("gs:// needs the gcs extra: pip install 'canaryml[gcs]'") from error
        base = uri.rstrip("/") + "/"

        def download(name: str, target: Path, budget: _Budget) -> None:
            url = base + name if name else uri
            try:
                with fsspec.open(url, "rb") as handle:
                    _copy_capped(handle, target, budget, url)
            except ArtifactError:
                raise
            except Exception as error:
                raise ArtifactError(f"cannot fetch {url}: {error}") from error

        return _fetch_remote(uri, uri, destination, limits, download)


class MlflowStorage:
    """`models:/name/version`, `models:/name@alias` (the version the alias points at) and
    `runs:/run-id/path`: the artifact folder logged with the run (the `canaryml package`
    folder, registered as the model version's source), from the MLflow tracking server named
    by MLFLOW_TRACKING_URI (and MLFLOW_REGISTRY_URI, MLFLOW_TRACKING_TOKEN, as MLflow reads
    them). A registry that is down, or a name, version, alias or run it does not have, is an
    ArtifactError saying so: `canaryml serve` exits with it before it listens."""

    def fetch(self, *, uri: str, destination: Path, limits: ArtifactLimits) -> Path:
        try:
            import mlflow.artifacts
        except ImportError as error:
            raise ArtifactError(
                f"{uri}: models:/ and runs:/ URIs need the mlflow extra: "
                "pip install 'canaryml[mlflow]'"
            ) from error
        try:
            local = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(destination))
            )
        except Exception as error:
            raise ArtifactError(f"cannot download {uri} from MLflow: {error}") from error
        _check_size(local, limits, uri)
        manifests = sorted(local.rglob(MANIFEST_FILE), key=lambda p: len(p.parts))
        if not manifests:
            raise ArtifactError(
                f"{uri} holds no {MANIFEST_FILE}: log the folder written by `canaryml package` "
                "as the model's artifacts"
            )
        return manifests[0].parent


def _check_size(folder: Path, limits: ArtifactLimits, uri: str) -> None:
    """After a download that cannot be bounded while it runs (MLflow's own client)."""
    budget = _Budget(limits)
    files = [p for p in folder.rglob("*") if p.is_file()]
    if len(files) > limits.max_files:
        raise ArtifactError(
            f"refusing {uri}: it holds more than {limits.max_files} files "
            "(CANARYML_MAX_ARTIFACT_FILES)"
        )
    for file in files:
        budget.take(file.stat().st_size, uri)


STORAGES: dict[str, Callable[[], ModelStorage]] = {
    "": LocalStorage,
    "file": LocalStorage,
    "http": HttpStorage,
    "https": HttpStorage,
    "s3": S3Storage,
    "gs": FsspecStorage,
    "models": MlflowStorage,
    "runs": MlflowStorage,
}


def scheme_of(uri: str) -> str:
    scheme = urlsplit(uri).scheme.lower()
    # A Windows drive letter or a bare path has no real scheme.
    return "" if len(scheme) <= 1 else scheme


def local_path(uri: str) -> Path:
    """The path a file:// URI or a plain path names."""
    parsed = urlsplit(uri)
    return Path(unquote(parsed.path) if scheme_of(uri) == "file" else uri)


@dataclass(frozen=True)
class Location:
    """A URI as trusted sources compare it: a local path (resolved), or scheme, host, port and
    path segments (decoded). `problem` says why it cannot be compared at all."""

    scheme: str
    host: str = ""
    port: int | None = None
    segments: tuple[str, ...] = ()
    problem: str | None = None

    def within(self, source: Location) -> bool:
        return (
            self.problem is None
            and source.problem is None
            and (self.scheme, self.host, self.port) == (source.scheme, source.host, source.port)
            and self.segments[: len(source.segments)] == source.segments
        )


def locate(uri: str) -> Location:
    scheme = scheme_of(uri)
    if scheme in ("", "file"):
        # resolve(): symlinks and '..' are followed to where they really lead.
        return Location("", segments=local_path(uri).resolve().parts)
    try:
        parsed = urlsplit(uri)
        port = parsed.port
    except ValueError as error:
        return Location(scheme, problem=f"it is not a valid URI ({error})")
    segments: list[str] = []
    for raw in parsed.path.split("/"):
        part = unquote(raw)
        if part in ("", "."):
            continue
        # A server may decode %2F or read '..' (encoded or not) as the parent: refuse both
        # rather than guess how the far end normalises the path.
        if part == ".." or "/" in part or "\\" in part:
            return Location(scheme, problem=f"its path has a {raw!r} segment")
        segments.append(part)
    return Location(
        scheme,
        host=(parsed.hostname or "").lower(),
        port=port if port is not None else _DEFAULT_PORTS.get(scheme),
        segments=tuple(segments),
    )


def check_trusted(uri: str, trusted_sources: Iterable[str]) -> None:
    sources = list(trusted_sources)
    if not sources:
        return
    here = locate(uri)
    if here.problem is None and any(here.within(locate(source)) for source in sources):
        return
    why = f": {here.problem}" if here.problem else ""
    raise ArtifactError(
        f"refusing {uri}: it is not under a trusted source{why} "
        f"(CANARYML_TRUSTED_SOURCES={','.join(sources)})"
    )


def fetch_model(
    uri: str,
    *,
    cache_dir: Path | None = None,
    trusted_sources: list[str],
    limits: ArtifactLimits | None = None,
) -> Path:
    """Resolve a model URI or path to a local artifact folder."""
    limits = limits or ArtifactLimits()
    if trusted_sources:
        limits = ArtifactLimits(trusted_sources, limits.max_bytes, limits.max_files)
    check_trusted(uri, limits.trusted_sources)
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
    return factory().fetch(uri=uri, destination=destination, limits=limits)
