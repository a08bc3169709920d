from __future__ import annotations

import functools
import tarfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from canaryml_server.artifact import ArtifactError, load_artifact
from canaryml_server.storage import fetch_model

from tests.local_http import serving


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def file_server(example_models: dict[str, Path]) -> Iterator[str]:
    """A plain static file server on loopback over the example models folder."""
    handler = functools.partial(_QuietHandler, directory=str(example_models["root"]))
    with serving(handler) as url:
        yield url


def test_plain_path_and_file_uri(example_models: dict[str, Path], tmp_path: Path) -> None:
    folder = example_models["stable"]
    assert fetch_model(str(folder), cache_dir=tmp_path, trusted_sources=[]) == folder
    assert fetch_model(folder.as_uri(), cache_dir=tmp_path, trusted_sources=[]) == folder
    with pytest.raises(ArtifactError, match="no such model folder"):
        fetch_model(str(tmp_path / "missing"), cache_dir=tmp_path, trusted_sources=[])


def test_http_folder_follows_the_manifest(
    file_server: str, example_models: dict[str, Path], tmp_path: Path
) -> None:
    local = fetch_model(f"{file_server}/canary/", cache_dir=tmp_path, trusted_sources=[])
    assert local.is_relative_to(tmp_path)
    loaded = load_artifact(local)
    assert loaded.manifest.version == "1.1.0"
    assert loaded.digest == load_artifact(example_models["canary"]).digest


def test_http_archive(file_server: str, example_models: dict[str, Path], tmp_path: Path) -> None:
    archive = example_models["root"] / "stable.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(example_models["stable"], arcname="stable")
    local = fetch_model(f"{file_server}/stable.tar.gz", cache_dir=tmp_path, trusted_sources=[])
    assert load_artifact(local).manifest.version == "1.0.0"


def test_http_errors_are_clear(file_server: str, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"cannot fetch .*/nothing/manifest\.json: HTTP 404"):
        fetch_model(f"{file_server}/nothing", cache_dir=tmp_path, trusted_sources=[])


def test_unsupported_scheme_and_untrusted_source(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="unsupported model URI scheme 'ftp'"):
        fetch_model("ftp://host/model", cache_dir=tmp_path, trusted_sources=[])
    with pytest.raises(ArtifactError, match="not under a trusted source"):
        fetch_model("http://elsewhere/m", cache_dir=tmp_path, trusted_sources=["s3://models/"])


def test_archive_cannot_escape_its_folder(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar.gz"
    payload = tmp_path / "payload.txt"
    payload.write_text("x")
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(payload, arcname="../escaped.txt")
    with pytest.raises(ArtifactError, match=r"cannot unpack evil\.tar\.gz"):
        fetch_model(str(evil), cache_dir=tmp_path / "cache", trusted_sources=[])
    assert not (tmp_path / "cache" / "escaped.txt").exists()


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3 server on loopback; boto3 finds it through AWS_ENDPOINT_URL."""
    server_module = pytest.importorskip("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for name, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    try:
        yield endpoint
    finally:
        server.stop()


def test_s3_prefix_and_archive(
    s3_endpoint: str, example_models: dict[str, Path], tmp_path: Path
) -> None:
    boto3 = pytest.importorskip("boto3")
    client = boto3.client("s3")
    client.create_bucket(Bucket="models")
    for file in example_models["canary"].iterdir():
        client.upload_file(str(file), "models", f"bc/1.1.0/{file.name}")
    local = fetch_model("s3://models/bc/1.1.0", cache_dir=tmp_path, trusted_sources=[])
    assert load_artifact(local).manifest.version == "1.1.0"
    with pytest.raises(ArtifactError, match=r"cannot fetch s3://models/bc/9/manifest\.json"):
        fetch_model("s3://models/bc/9", cache_dir=tmp_path, trusted_sources=[])
