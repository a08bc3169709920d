"""gs:// against an offline Google Cloud Storage: gcp-storage-emulator (the JSON API over HTTP) on
loopback, which gcsfs finds through STORAGE_EMULATOR_HOST, the variable Google's own clients
read. The same checks as s3:// against moto: a packaged folder and an archive, missing objects,
the size and file limits and trusted sources. (A storage that is down is not tested here: gcsfs
retries six times with backoff, about 34 s before its error, measured once and said in
docs/serving.md; too long for the unit tier.)

Two settings make gcsfs fit an emulator, both the library's own, not canaryml's (a user who
points `canaryml serve` at an emulator sets the same, as environment variables; see
docs/serving.md):
- `token="anon"` (FSSPEC_GCS_TOKEN=anon): no credentials are looked for, so nothing asks the
  GCE metadata server.
- the plain JSON-API filesystem (GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false, read when gcsfs is
  imported): gcsfs's default class first asks a bucket's type over gRPC (the storage control
  API), which the emulator does not speak, and waits 60 s for that on every file it opens.
"""

from __future__ import annotations

import json
import re
import socket
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from canaryml_server.artifact import ArtifactError, load_artifact
from canaryml_server.storage import ArtifactLimits, fetch_model

BUCKET = "models"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def gcs_at(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """gcs_at(endpoint): gs:// goes to `endpoint`, anonymously, over the JSON API only.
    Yields that function; the fsspec settings are put back afterwards."""
    fsspec = pytest.importorskip("fsspec")
    gcsfs_core = pytest.importorskip("gcsfs.core")
    # gcsfs may be imported already (with its gRPC-probing class as "gs"): set the class itself.
    previous = fsspec.get_filesystem_class("gs")
    fsspec.register_implementation("gs", gcsfs_core.GCSFileSystem, clobber=True)
    monkeypatch.setitem(fsspec.config.conf, "gcs", {"token": "anon"})

    def point(endpoint: str) -> None:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
        # fsspec reuses a filesystem made with the same arguments: start from a new one.
        gcsfs_core.GCSFileSystem.clear_instance_cache()

    try:
        yield point
    finally:
        gcsfs_core.GCSFileSystem.clear_instance_cache()
        fsspec.register_implementation("gs", previous, clobber=True)


@pytest.fixture
def gcs(gcs_at: Callable[[str], None]) -> Iterator[Any]:
    """The emulator on a free loopback port, in memory, with the bucket `models`; yields a gcsfs
    filesystem to upload with (the one FsspecStorage gets too)."""
    emulator = pytest.importorskip("gcp_storage_emulator.server")
    fsspec = pytest.importorskip("fsspec")
    port = _free_port()
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    try:
        gcs_at(f"http://127.0.0.1:{port}")
        yield fsspec.filesystem("gs")
    finally:
        server.stop()


def _upload(fs: Any, folder: Path, prefix: str, *, only: set[str] | None = None) -> None:
    fs.pipe(
        {
            f"{BUCKET}/{prefix}/{file.name}": file.read_bytes()
            for file in sorted(folder.iterdir())
            if only is None or file.name in only
        }
    )


def test_gs_prefix_and_archive(gcs: Any, example_models: dict[str, Path], tmp_path: Path) -> None:
    _upload(gcs, example_models["canary"], "bc/1.1.0")
    for uri in ("gs://models/bc/1.1.0", "gs://models/bc/1.1.0/"):
        local = fetch_model(uri, cache_dir=tmp_path / "cache", trusted_sources=[])
        assert local.is_relative_to(tmp_path)
        loaded = load_artifact(local)
        assert loaded.manifest.version == "1.1.0"
        assert loaded.digest == load_artifact(example_models["canary"]).digest
    archive = tmp_path / "stable.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(example_models["stable"], arcname="stable")
    gcs.pipe(f"{BUCKET}/bc/stable.tar.gz", archive.read_bytes())
    local = fetch_model("gs://models/bc/stable.tar.gz", cache_dir=tmp_path, trusted_sources=[])
    assert load_artifact(local).manifest.version == "1.0.0"


def test_gs_missing_objects_are_clear(
    gcs: Any, example_models: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ArtifactError, match=r"cannot fetch gs://models/bc/9/manifest\.json"):
        fetch_model("gs://models/bc/9", cache_dir=tmp_path, trusted_sources=[])
    with pytest.raises(ArtifactError, match=r"cannot fetch gs://elsewhere/bc/manifest\.json"):
        fetch_model("gs://elsewhere/bc", cache_dir=tmp_path, trusted_sources=[])
    with pytest.raises(ArtifactError, match=r"cannot fetch gs://models/bc/x\.tar\.gz"):
        fetch_model("gs://models/bc/x.tar.gz", cache_dir=tmp_path, trusted_sources=[])
    # The manifest is there, a file it lists is not: that file is named.
    _upload(gcs, example_models["canary"], "half", only={"manifest.json"})
    first = next(
        iter(json.loads((example_models["canary"] / "manifest.json").read_bytes())["files"])
    )
    with pytest.raises(ArtifactError, match=rf"cannot fetch gs://models/half/{re.escape(first)}"):
        fetch_model("gs://models/half", cache_dir=tmp_path, trusted_sources=[])


def test_gs_fetch_is_bounded(gcs: Any, example_models: dict[str, Path], tmp_path: Path) -> None:
    _upload(gcs, example_models["canary"], "bc/1.1.0")
    size = sum(f.stat().st_size for f in example_models["canary"].iterdir())
    files = len(list(example_models["canary"].iterdir()))
    small = ArtifactLimits(max_bytes=size - 1)
    with pytest.raises(ArtifactError, match=rf"larger than {size - 1} bytes"):
        fetch_model("gs://models/bc/1.1.0", cache_dir=tmp_path, trusted_sources=[], limits=small)
    few = ArtifactLimits(max_files=files - 1)
    with pytest.raises(ArtifactError, match=rf"more than {files - 1} \(CANARYML_MAX_ARTIFACT"):
        fetch_model("gs://models/bc/1.1.0", cache_dir=tmp_path, trusted_sources=[], limits=few)
    exact = ArtifactLimits(max_bytes=size, max_files=files)
    local = fetch_model(
        "gs://models/bc/1.1.0", cache_dir=tmp_path, trusted_sources=[], limits=exact
    )
    assert load_artifact(local).manifest.version == "1.1.0"


def test_gs_trusted_sources_by_bucket_and_path(
    gcs: Any, example_models: dict[str, Path], tmp_path: Path
) -> None:
    _upload(gcs, example_models["canary"], "bc/1.1.0")
    local = fetch_model(
        "gs://models/bc/1.1.0", cache_dir=tmp_path, trusted_sources=["gs://models/bc"]
    )
    assert load_artifact(local).manifest.version == "1.1.0"
    for source in ("gs://models/other", "gs://other/bc", "s3://models/bc"):
        with pytest.raises(ArtifactError, match="not under a trusted source"):
            fetch_model("gs://models/bc/1.1.0", cache_dir=tmp_path, trusted_sources=[source])
