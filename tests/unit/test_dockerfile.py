"""The Dockerfile agrees with what runs it (docker cannot build here; the e2e workflow does).

The image's user is the uid the operator's pods and the chart run as, its entry point is the
`canaryml` command both run, what it copies is in the build context .dockerignore leaves, and
the runtime stage installs nothing and has no shell to call.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

from canaryml_operator import children

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")


def instructions(stage: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of one stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    chosen = next(s for s in stages if stage in s.splitlines()[0])
    found = []
    for line in chosen.splitlines()[1:]:
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def base_images() -> dict[str, str]:
    """The global ARGs (before the first FROM) and their defaults: the base images."""
    head = DOCKERFILE.split("\nFROM ", 1)[0]
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", head, flags=re.MULTILINE))


def test_two_stages_and_a_distroless_nonroot_runtime() -> None:
    froms = re.findall(r"^FROM (\S+)", DOCKERFILE, flags=re.MULTILINE)
    assert froms == ["${BUILD_IMAGE}", "${RUNTIME_IMAGE}"]
    assert base_images() == {
        "BUILD_IMAGE": "debian:12-slim",
        "RUNTIME_IMAGE": "gcr.io/distroless/python3-debian12:nonroot",
    }


def test_the_base_images_can_be_pinned_by_digest_and_the_docs_say_how() -> None:
    # Every FROM takes its image from a build argument (a release passes tag@sha256:...).
    for image in re.findall(r"^FROM (\S+)", DOCKERFILE, flags=re.MULTILINE):
        assert re.fullmatch(r"\$\{(\w+)\}", image) and image[2:-1] in base_images()
    installing = (ROOT / "docs" / "installing.md").read_text(encoding="utf-8")
    for name in base_images():
        assert f"--build-arg {name}=" in installing


def test_the_runtime_runs_as_the_uid_the_pods_run_as_with_the_canaryml_entry_point() -> None:
    runtime = dict(instructions("AS runtime"))
    assert runtime["USER"] == f"{children.RUN_AS}:{children.RUN_AS}"
    entrypoint = shlex.split(runtime["ENTRYPOINT"].strip("[]").replace(",", " "))
    assert entrypoint == ["/opt/canaryml/bin/canaryml"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "canaryml" in scripts["project"]["scripts"]


def test_the_runtime_stage_runs_nothing_at_build_time() -> None:
    # No shell in distroless: a RUN there would fail; everything is built in the first stage.
    assert "RUN" not in {word for word, _ in instructions("AS runtime")}


def test_the_build_installs_the_package_without_dev_extras() -> None:
    build = " ".join(args for word, args in instructions("AS build") if word == "RUN")
    assert "pip install" in build and "[dev" not in build and ",dev" not in build


def test_everything_copied_is_in_the_build_context() -> None:
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    allowed = {line.removeprefix("!").rstrip("/") for line in ignore if line.startswith("!")}
    copied = []
    for word, args in instructions("AS build"):
        if word == "COPY":
            copied += args.split()[:-1]
    assert copied and set(copied) <= allowed
    for path in copied:
        assert (ROOT / path).exists(), path
