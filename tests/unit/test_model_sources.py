"""Where a model may come from: trusted sources compared on the parsed URI, redirects checked
hop by hop, archives and remote folders bounded, and a remote manifest that names anything but
a plain file refused cleanly (issue 16, item 2 and the archive items of 10)."""

from __future__ import annotations

import functools
import io
import json
import shutil
import tarfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from canaryml_server.artifact import MANIFEST_FILE, ArtifactError, load_artifact
from canaryml_server.storage import ArtifactLimits, check_trusted, fetch_model

from tests.local_http import serving


class _Files(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def file_server(example_models: dict[str, Path]) -> Iterator[str]:
    handler = functools.partial(_Files, directory=str(example_models["root"]))
    with serving(handler) as url:
        yield url


# -- trusted sources: parsed, never string prefixes ---------------------------------------------


@pytest.mark.parametrize(
    ("uri", "trusted"),
    [
        # The four bypasses of issue 16: a string prefix matched each of them.
        ("http://trusted/models/../../m", "http://trusted/models/"),
        ("http://trusted/models/%2e%2e/%2E%2E/m", "http://trusted/models/"),
        ("http://trusted@evil/m", "http://trusted"),
        ("http://trusted.evil/m", "http://trusted"),
        # Segment boundaries, ports and schemes.
        ("http://trusted/models2/m", "http://trusted/models"),
        ("http://trusted:8080/models/m", "http://trusted/models"),
        ("https://trusted/models/m", "http://trusted/models"),
        ("http://trusted/models%2f..%2f/m", "http://trusted/models"),
        ("s3://models-evil/m", "s3://models"),
    ],
)
def test_a_uri_outside_the_trusted_source_is_refused(uri: str, trusted: str) -> None:
    with pytest.raises(ArtifactError, match="not under a trusted source"):
        check_trusted(uri, [trusted])


@pytest.mark.parametrize(
    ("uri", "trusted"),
    [
        ("http://trusted/models/m", "http://trusted/models"),
        ("http://trusted/models/m/", "http://trusted/models/"),
        ("http://TRUSTED:80/models/./m", "http://trusted/models"),
        ("https://trusted/models/m", "https://trusted:443/models"),
        ("http://user@trusted/models/m", "http://trusted/models"),
        ("s3://models/iris/1.0.0", "s3://models/"),
        ("models:/iris/3", "models:/iris"),
    ],
)
def test_a_uri_under_the_trusted_source_is_accepted(uri: str, trusted: str) -> None:
    check_trusted(uri, [trusted])


def test_local_paths_are_resolved_before_they_are_compared(tmp_path: Path) -> None:
    trusted = tmp_path / "models"
    (trusted / "m").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (trusted / "link").symlink_to(outside, target_is_directory=True)
    check_trusted(str(trusted / "m"), [str(trusted)])
    check_trusted((trusted / "m").as_uri(), [str(trusted)])
    for uri in (
        f"{trusted}/../elsewhere",  # '..' in a local path, issue 16
        f"{trusted}/m/../../elsewhere",
        str(trusted / "link"),  # a symlink that leads out
        f"{trusted}-evil/m",
    ):
        with pytest.raises(ArtifactError, match="not under a trusted source"):
            check_trusted(uri, [str(trusted)])
        with pytest.raises(ArtifactError, match="not under a trusted source"):
            fetch_model(uri, cache_dir=tmp_path / "cache", trusted_sources=[str(trusted)])


# -- redirects: each hop checked ------------------------------------------------------------


def _redirecting(location: str) -> type[BaseHTTPRequestHandler]:
    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", location + self.path.rsplit("/", 1)[-1])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Redirect


def test_a_redirect_to_an_untrusted_host_is_refused(file_server: str, tmp_path: Path) -> None:
    """The trusted host answers 302 to another server (the issue's first bypass)."""
    with serving(_redirecting(f"{file_server}/canary/")) as trusted:
        with pytest.raises(ArtifactError, match=r"refusing the redirect .* not under a trusted"):
            fetch_model(f"{trusted}/models/m", cache_dir=tmp_path, trusted_sources=[trusted])
        assert not list(tmp_path.rglob("model.joblib"))
        # Redirects between trusted sources are followed, each hop checked.
        local = fetch_model(
            f"{trusted}/models/m",
            cache_dir=tmp_path,
            trusted_sources=[f"{trusted}/models", f"{file_server}/canary"],
        )
        assert load_artifact(local).manifest.version == "1.1.0"


def test_without_trusted_sources_a_redirect_is_followed(file_server: str, tmp_path: Path) -> None:
    with serving(_redirecting(f"{file_server}/canary/")) as elsewhere:
        local = fetch_model(f"{elsewhere}/m", cache_dir=tmp_path, trusted_sources=[])
        assert load_artifact(local).manifest.version == "1.1.0"


# -- archives and remote folders: bounded -------------------------------------------------------


def _archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_an_archive_bomb_is_refused_before_it_fills_the_disk(tmp_path: Path) -> None:
    """The issue's bomb: 0.41 MB of gzip unpacked to 419 MB. Here 100 MB of zeros (about
    100 KB compressed) against a 10 MB limit: refused, and nothing of it was written."""
    bomb = _archive(tmp_path / "bomb.tar.gz", {"m/model.joblib": bytes(100 * 1024 * 1024)})
    assert bomb.stat().st_size < 1024 * 1024
    cache = tmp_path / "cache"
    limits = ArtifactLimits(max_bytes=10 * 1024 * 1024)
    with pytest.raises(ArtifactError, match=r"larger than 10485760 bytes .*MAX_ARTIFACT_BYTES"):
        fetch_model(str(bomb), cache_dir=cache, trusted_sources=[], limits=limits)
    written = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    assert written == 0


def test_an_archive_with_too_many_entries_is_refused(tmp_path: Path) -> None:
    many = _archive(tmp_path / "many.tar.gz", {f"m/f{i}": b"x" for i in range(50)})
    with pytest.raises(ArtifactError, match=r"more than 20 entries .*MAX_ARTIFACT_FILES"):
        fetch_model(
            str(many),
            cache_dir=tmp_path / "cache",
            trusted_sources=[],
            limits=ArtifactLimits(max_files=20),
        )


def test_the_default_limits_take_the_example_models(
    example_models: dict[str, Path], tmp_path: Path
) -> None:
    archive = tmp_path / "canary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(example_models["canary"], arcname="canary")
    local = fetch_model(str(archive), cache_dir=tmp_path / "cache", trusted_sources=[])
    assert load_artifact(local).manifest.version == "1.1.0"
    assert ArtifactLimits().max_bytes == 1024**3 and ArtifactLimits().max_files == 1000


def test_a_remote_folder_over_the_limit_is_refused(file_server: str, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="larger than 100000 bytes"):
        fetch_model(
            f"{file_server}/canary/",
            cache_dir=tmp_path,
            trusted_sources=[],
            limits=ArtifactLimits(max_bytes=100_000),
        )


@pytest.mark.parametrize("name", ["..", ".", "../model.joblib", "a/b", "%2e%2e", "", 7])
def test_a_remote_manifest_naming_anything_but_a_plain_file_is_refused(
    example_models: dict[str, Path], tmp_path: Path, name: Any
) -> None:
    """A remote manifest listing '..' crashed the server with IsADirectoryError (issue 16)."""
    root = tmp_path / "site"
    shutil.copytree(example_models["canary"], root / "m")
    manifest = json.loads((root / "m" / MANIFEST_FILE).read_text())
    manifest["files"] = {name: "0" * 64, **manifest["files"]}
    if not isinstance(name, str):  # JSON keys are strings: a list of names instead
        manifest["files"] = [name]
    (root / "m" / MANIFEST_FILE).write_text(json.dumps(manifest))
    handler = functools.partial(_Files, directory=str(root))
    with (
        serving(handler) as url,
        pytest.raises(ArtifactError, match=r"lists .*only plain file names"),
    ):
        fetch_model(f"{url}/m/", cache_dir=tmp_path / "cache", trusted_sources=[])
