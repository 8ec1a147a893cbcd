"""The CPU serving image, built and served here: what CI checks of the images for real.

`make docker-cpu` builds the image as users build it (docker/Dockerfile.cpu: the Debian base made by
mmdebstrap, the wheel built by `make` inside, its requirements from PyPI); here, without a docker
engine, with buildah (chroot isolation; ci/image-tools.sh installs it). Then ci/docker-run.sh starts
the image's entry point (`vllm serve "$@"`, as UID 2000) on the tiny DeepSeek-V3-style checkpoint of
tests/fusion/test_serve.py, mounted read-only, with fusion switched on as users switch it on
(`-e VLLM_SHARED_EXPERT_FUSION_REPLICAS=1`; the image's default is off), and the openai client
queries it over HTTP: /health, /version, /v1/models, a completion with logprobs and a chat
completion. The image's own HEALTHCHECK command runs beside the server, in the image's filesystem.

SEF_IMAGE_ENGINE (buildah unless set; docker where an engine runs) picks the engine. The build takes
~5 minutes on 2 cores from a fresh machine (docker/README.md has the measurements).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest
from conftest import LOCAL_VERSION, PATCHED, ROOT, VERSION

from sefkit.serving import (
    CONVERSATIONS,
    FUSION_LOG,
    MAX_MODEL_LEN,
    MODEL_NAME,
    PROMPTS,
    free_port,
    stop_group,
    wait_healthy,
    write_served_model,
)

pytestmark = pytest.mark.timeout(1800)

ENGINE = os.environ.get("SEF_IMAGE_ENGINE") or "buildah"
IMAGE = f"vllm-sef:{VERSION}-{LOCAL_VERSION}-cpu"
STARTUP_TIMEOUT = 600.0
MAX_TOKENS = 16
LOGGED_FUSION = '"Shared-expert fusion (VLLM_SHARED_EXPERT_FUSION_REPLICAS='
ENV = {**os.environ, "SEF_IMAGE_ENGINE": ENGINE}


def _engine_cmd(*args: str) -> list[str]:
    """An engine command as ci/image-lib.sh runs it (the same storage for buildah)."""
    if ENGINE == "docker":
        return [os.environ.get("DOCKER", "docker"), *args]
    driver = os.environ.get("BUILDAH_STORAGE_DRIVER", "vfs")
    return ["buildah", "--storage-driver", driver, *args]


def _inspect(fmt: str) -> str:
    cmd = (
        _engine_cmd("image", "inspect", "--format", fmt, IMAGE)
        if ENGINE == "docker"
        else _engine_cmd("inspect", "--type", "image", "--format", fmt, IMAGE)
    )
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def image() -> str:
    """`make docker-cpu`, timed (skipped where no engine can be had: not root, no buildah)."""
    if (
        ENGINE == "buildah"
        and os.geteuid() != 0
        and subprocess.run(
            ["sh", "-c", "command -v buildah && command -v mmdebstrap"], capture_output=True
        ).returncode
    ):
        pytest.skip("buildah and mmdebstrap are missing and only root installs them here")
    t0 = time.monotonic()
    proc = subprocess.run(
        ["make", "-C", str(ROOT), "--no-print-directory", "docker-cpu"],
        env=ENV, capture_output=True, text=True, check=False,
    )  # fmt: skip
    took = time.monotonic() - t0
    assert proc.returncode == 0, (
        f"make docker-cpu failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-8000:]}"
    )
    times = re.findall(r"^\[[\w.-]+\] .* took \d+s$", proc.stderr, re.M)
    print(f"\n[test_docker_serve] make docker-cpu: {took:.0f} s\n  " + "\n  ".join(times))
    return IMAGE


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint and the chat template, readable by the image's UID 2000."""
    root = tmp_path_factory.mktemp("image-models")
    write_served_model(root)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


class Served:
    def __init__(self, port: int, name: str, log: Path, proc: subprocess.Popen) -> None:
        self.port, self.name, self.log_path, self.proc = port, name, log, proc
        self.url = f"http://127.0.0.1:{port}"
        self.startup_s = 0.0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 80) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


@pytest.fixture(scope="module")
def served(image: str, models: Path, tmp_path_factory: pytest.TempPathFactory):
    """The image's entry point serving the tiny model with fusion on; stopped afterwards."""
    port = free_port()
    name = f"vllm-sef-test-{os.getpid()}"
    log = tmp_path_factory.mktemp("image-serve") / "serve.log"
    cmd = [
        str(ROOT / "ci" / "docker-run.sh"), "--name", name,
        "-v", f"{models}:/models:ro",
        "-e", "VLLM_SHARED_EXPERT_FUSION_REPLICAS=1",
        "-e", "VLLM_CPU_KVCACHE_SPACE=1",
        image,
        "/models/tiny-v3",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--served-model-name", MODEL_NAME,
        "--dtype", "float32",
        "--max-model-len", str(MAX_MODEL_LEN),
        "--enforce-eager",
        "--seed", "0",
        "--chat-template", "/models/chat.jinja",
        "--max-num-seqs", "1",
        "--attention-backend", "CPU_MLA",
    ]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=ENV, start_new_session=True
        )
    server = Served(port, name, log, proc)
    try:
        try:
            server.startup_s = wait_healthy(server.url, proc, STARTUP_TIMEOUT)
        except (TimeoutError, RuntimeError) as exc:
            pytest.fail(f"the image's server: {exc}\n{server.tail()}")
        print(f"\n[test_docker_serve] healthy after {server.startup_s:.0f} s (container start too)")
        yield server
    finally:
        t1 = time.monotonic()
        stop_group(proc, timeout=60)
        print(f"\n[test_docker_serve] stopped in {time.monotonic() - t1:.0f} s")


def _config(field: str, items: bool = False) -> str | list[str]:
    """A field of the image's configuration (docker's, which buildah writes with --format docker);
    with items, a list field's items."""
    path = (".Config" if ENGINE == "docker" else ".Docker.Config") + field
    if items:
        return _inspect("{{ range " + path + " }}{{ . }}{{ println }}{{ end }}").splitlines()
    return _inspect("{{ " + path + " }}")


@pytest.mark.usefixtures("image")
def test_image_config() -> None:
    """What `docker run` takes from the image: entry point, user, port, health check, the fusion
    default (off) and the version labels from patches/base.env."""
    assert _config(".Entrypoint", items=True) == ["/usr/local/bin/vllm-nonroot-entrypoint.sh"]
    assert _config(".User") == "2000:0"
    assert _config(".WorkingDir") == "/home/vllm"
    assert "8000/tcp" in _config(".ExposedPorts")
    env = _config(".Env", items=True)
    assert "VLLM_SHARED_EXPERT_FUSION_REPLICAS=0" in env, env
    assert "SEF_HEALTH_URL=http://127.0.0.1:8000/health" in env, env
    health = _config(".Healthcheck.Test", items=True)
    assert health[:3] == ["CMD", "/bin/sh", "-c"], health
    assert "SEF_HEALTH_URL" in health[3], health
    labels = _config(".Labels")
    assert f"org.opencontainers.image.version:{VERSION}+{LOCAL_VERSION}" in labels, labels
    assert "ai.vllm-sef.variant:cpu" in labels, labels


def _server_processes(served: Served) -> dict[int, tuple[int, dict[str, str] | None]]:
    """The server's processes on this host (chroot: they are host processes, as with docker),
    by pid: their UID, and for `vllm serve ... --port P` itself its environment (the engine's
    processes, its descendants, rename themselves with setproctitle, which overwrites the
    memory /proc/PID/environ shows)."""
    procs: dict[int, tuple[int, int, list[bytes]]] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError, AttributeError):
            text = status.read_text()
            uid = int(re.search(r"^Uid:\s+(\d+)", text, re.M).group(1))
            ppid = int(re.search(r"^PPid:\s+(\d+)", text, re.M).group(1))
            cmdline = (status.parent / "cmdline").read_bytes().split(b"\0")
            procs[int(status.parent.name)] = (uid, ppid, cmdline)
    port = str(served.port).encode()
    # vllm serve itself, not the wrappers that start it (ci/docker-run.sh, buildah).
    roots = {
        pid
        for pid, (_, _, cmd) in procs.items()
        if b"serve" in cmd and port in cmd and not cmd[0].startswith((b"buildah", b"bash"))
    }
    found, grew = set(roots), True
    while grew:
        children = {pid for pid, (_, ppid, _) in procs.items() if ppid in found} - found
        found |= children
        grew = bool(children)
    out: dict[int, tuple[int, dict[str, str] | None]] = {}
    for pid in found:
        env = None
        if pid in roots:
            with contextlib.suppress(OSError):
                raw = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
                env = dict(e.decode(errors="replace").partition("=")[::2] for e in raw if b"=" in e)
        out[pid] = (procs[pid][0], env)
    return out


def test_serves_with_fusion_on(served: Served) -> None:
    # The setting reaches the server (over the image's default, 0) ...
    envs = [env for _, env in _server_processes(served).values() if env is not None]
    assert envs, "no server process found"
    settings = {env.get("VLLM_SHARED_EXPERT_FUSION_REPLICAS") for env in envs}
    assert settings == {"1"}, settings
    # ... and the model takes it: the series logs it where it logs fusion (it does from 0001's
    # "Shared-expert fusion (VLLM_SHARED_EXPERT_FUSION_REPLICAS=%d): ..." on).
    if any(LOGGED_FUSION in p.read_text() for p in (ROOT / "patches").glob("*.patch")):
        assert FUSION_LOG in served.log(), f"no '{FUSION_LOG}' line:\n{served.tail()}"
    # vllm.__version__ (0.32.0: the wheel's _version.py); `vllm --version` names our build.
    assert httpx.get(f"{served.url}/version", timeout=30).json()["version"].startswith(VERSION)
    client = openai.OpenAI(
        base_url=f"{served.url}/v1", api_key="unused", max_retries=0, timeout=120
    )
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]
    t0 = time.monotonic()
    completion = client.completions.create(
        model=MODEL_NAME, prompt=PROMPTS, max_tokens=MAX_TOKENS, temperature=0.0, logprobs=2, seed=0
    )
    chat = client.chat.completions.create(
        model=MODEL_NAME, messages=CONVERSATIONS[0], max_tokens=MAX_TOKENS, temperature=0.0
    )
    print(f"\n[test_docker_serve] a completion ({len(PROMPTS)} prompts) and a chat: "
          f"{time.monotonic() - t0:.1f} s")  # fmt: skip
    texts = [c.text for c in completion.choices]
    assert all(texts), texts
    assert len(set(texts)) > 1, texts
    for c in completion.choices:
        assert c.logprobs is not None
        assert all(v <= 0 for v in c.logprobs.token_logprobs)
    assert chat.choices[0].message.content
    assert completion.usage.completion_tokens == sum(
        len(c.logprobs.tokens) for c in completion.choices
    )


def test_server_runs_as_uid_2000(served: Served) -> None:
    """vllm serve and its engine run as the image's user, not as root (ci/docker-run.sh and
    buildah, which start them, do)."""
    procs = _server_processes(served)
    assert len(procs) >= 2, procs.keys()  # the API server and the engine core at least
    assert {uid for uid, _ in procs.values()} == {2000}
    assert {env.get("HOME") for _, env in procs.values() if env is not None} == {"/home/vllm"}


def _beside(served: Served, *cmd: str, env: str | None = None) -> list[str]:
    """A command run in the server's container, beside the server (its user and environment)."""
    if ENGINE == "docker":
        return _engine_cmd("exec", *(["-e", env] if env else []), served.name, *cmd)
    opts = ["--env", env] if env else []
    return _engine_cmd("run", "--isolation", "chroot", *opts, served.name, "--", *cmd)


def test_vllm_version_in_the_image(served: Served) -> None:
    proc = subprocess.run(
        _beside(served, "vllm", "--version"), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == f"{VERSION}+{LOCAL_VERSION}"


def test_the_image_holds_the_wheel_the_suite_tests(served: Served) -> None:
    """The image's wheel, built by make in its build stage, is byte for byte dist/'s (make build
    is reproducible): the one the test venv has and the rest of the suite tests."""
    proc = subprocess.run(
        _beside(served, "cat", "/opt/vllm-sef/SHA256SUMS"), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    image = dict(reversed(line.split()) for line in proc.stdout.splitlines())
    dist = dict(
        reversed(line.split()) for line in (ROOT / "dist" / "SHA256SUMS").read_text().splitlines()
    )
    assert image[PATCHED["cpu"]] == dist[PATCHED["cpu"]]


def test_health_check_command_in_the_image(served: Served) -> None:
    """The image's HEALTHCHECK command, run in the image's filesystem beside the server (with
    SEF_HEALTH_URL for the port, as docker/README.md says for another --port)."""
    test = _config(".Healthcheck.Test", items=True)
    assert test[0] == "CMD", test
    env = f"SEF_HEALTH_URL={served.url}/health"
    proc = subprocess.run(
        _beside(served, *test[1:], env=env), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    bad = f"SEF_HEALTH_URL=http://127.0.0.1:{free_port()}/health"
    proc = subprocess.run(_beside(served, *test[1:], env=bad), capture_output=True, timeout=120)
    assert proc.returncode != 0
