"""The wheels of ci/build-wheel.sh against the official ones, file by file.

A built wheel must be the official wheel with exactly the series' vllm/ changes: every compiled
file and every file the series leaves alone identical, every file it changes or adds equal to the
sef branch's version, the files it deletes gone, nothing else added or missing; the .dist-info
renamed to 0.32.0+<LOCAL_VERSION> with only METADATA's Version and WHEEL's Tag lines changed;
RECORD complete and correct.

Checked for dist/ (made by `make build` from patches/) and for a small real sample series built into
a temp dir, both flavours (CUDA and CPU).
"""

import base64
import csv
import functools
import hashlib
import io
import json
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import (
    LOCAL_VERSION,
    PATCHED,
    ROOT,
    VERSION,
    commit_all,
    git,
    refresh_into,
    run_script,
)

FLAVOURS = ["cuda", "cpu"]
DIST_NAME = {"cuda": "vllm", "cpu": "vllm_cpu"}


def record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@functools.cache
def _members(path: str, mtime_ns: int, size: int) -> dict[str, tuple[str, int]]:
    out = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            h = hashlib.sha256()
            n = 0
            with zf.open(info) as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                    n += len(chunk)
            digest = base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()
            out[info.filename] = ("sha256=" + digest, n)
    return out


def members(path: Path) -> dict[str, tuple[str, int]]:
    """Every file of a wheel: name -> (RECORD-style sha256, size), from its actual content."""
    st = path.stat()
    return _members(str(path), st.st_mtime_ns, st.st_size)


def read_member(path: Path, name: str) -> bytes:
    with zipfile.ZipFile(path) as zf:
        return zf.read(name)


def official_wheel(flavour: str) -> Path:
    return Path(run_script("fetch.sh", f"{flavour}-wheel").stdout.strip())


def series_changes(tree: Path) -> dict[str, str | None]:
    """What the applied series does to vllm/ files: path -> RECORD-style hash of the sef branch's
    version, or None for a deleted file."""
    changes: dict[str, str | None] = {}
    out = git(tree, "diff", "--name-status", "--no-renames", "-z", "sef-base", "sef", "--", "vllm/")
    fields = out.split("\0")[:-1]  # NUL-terminated: status, path, status, path, ...
    for status, path in zip(fields[0::2], fields[1::2], strict=True):
        if status == "D":
            changes[path] = None
        else:
            blob = subprocess.run(
                ["git", "-C", str(tree), "show", f"sef:{path}"], capture_output=True, check=True
            ).stdout
            changes[path] = record_hash(blob)
    return changes


def check_wheel(built: Path, official: Path, flavour: str, changes: dict[str, str | None]) -> None:
    assert built.name == PATCHED[flavour]
    ours, theirs = members(built), members(official)
    dist = DIST_NAME[flavour]
    old_info, new_info = (
        f"{dist}-{VERSION}.dist-info",
        f"{dist}-{VERSION}+{LOCAL_VERSION}.dist-info",
    )

    # RECORD: complete and right, for our wheel (and, as a sanity check, the official one)
    for wheel, files, info in ((built, ours, new_info), (official, theirs, old_info)):
        rows = list(csv.reader(io.StringIO(read_member(wheel, f"{info}/RECORD").decode())))
        record = {row[0]: (row[1], row[2]) for row in rows}
        assert len(record) == len(rows), f"{wheel.name}: RECORD lists a file twice"
        assert record.pop(f"{info}/RECORD") == ("", "")
        assert set(record) == set(files) - {f"{info}/RECORD"}, f"{wheel.name}: RECORD != files"
        bad = [n for n, (h, s) in record.items() if (h, int(s)) != files[n]]
        assert not bad, f"{wheel.name}: RECORD hash/size wrong for {bad[:5]}"

    # .dist-info: renamed; METADATA differs only in Version, WHEEL only in its Tag lines
    assert not any(n.startswith(old_info + "/") for n in ours)
    info_files = {n.removeprefix(new_info + "/") for n in ours if n.startswith(new_info + "/")}
    official_info = {n.removeprefix(old_info + "/") for n in theirs if n.startswith(old_info + "/")}
    assert info_files == official_info
    for name in info_files - {"RECORD", "METADATA", "WHEEL"}:
        assert ours[f"{new_info}/{name}"] == theirs[f"{old_info}/{name}"], name

    def lines(wheel: Path, info: str, name: str) -> list[str]:
        return read_member(wheel, f"{info}/{name}").decode().splitlines()

    meta_ours, meta_theirs = (
        lines(built, new_info, "METADATA"),
        lines(official, old_info, "METADATA"),
    )
    assert f"Version: {VERSION}+{LOCAL_VERSION}" in meta_ours
    assert [line for line in meta_ours if not line.startswith("Version: ")] == [
        line for line in meta_theirs if not line.startswith("Version: ")
    ]
    wheel_ours, wheel_theirs = lines(built, new_info, "WHEEL"), lines(official, old_info, "WHEEL")
    py, abi, plat = built.name.removesuffix(".whl").split("-")[-3:]
    assert [line for line in wheel_ours if line.startswith("Tag: ")] == [f"Tag: {py}-{abi}-{plat}"]
    assert [line for line in wheel_ours if not line.startswith("Tag: ")] == [
        line for line in wheel_theirs if not line.startswith("Tag: ")
    ]

    # the package: official files, except exactly the series' changes
    assert all(path.startswith("vllm/") for path in changes)
    package_ours = {n: h for n, (h, _) in ours.items() if not n.startswith(new_info + "/")}
    package_theirs = {n: h for n, (h, _) in theirs.items() if not n.startswith(old_info + "/")}
    expected = dict(package_theirs)
    for path, digest in changes.items():
        if digest is None:
            assert path in expected, f"the series deletes {path}, which the official wheel lacks"
            del expected[path]
        else:
            expected[path] = digest
    missing = sorted(set(expected) - set(package_ours))
    extra = sorted(set(package_ours) - set(expected))
    assert not missing, f"files missing from {built.name}: {missing[:10]}"
    assert not extra, f"files {built.name} should not have: {extra[:10]}"
    wrong = sorted(n for n in expected if package_ours[n] != expected[n])
    assert not wrong, f"files of {built.name} with the wrong content: {wrong[:10]}"

    # spelled out: every compiled file is the official one, byte for byte
    compiled = [n for n in package_theirs if n.endswith(".so") or ".so." in n]
    assert compiled, "no compiled files found in the official wheel"
    assert all(package_ours[n] == package_theirs[n] for n in compiled)


def applied_tree(base_repo: Path, patches: Path, tmp_path: Path) -> Path:
    """A clone of the base with the series applied, made by ci/scratch-tree.sh."""
    tree = tmp_path / "tree" / "vllm"
    env = {"VLLM_DIR": str(base_repo), "PATCH_DIR": str(patches)}
    run_script("scratch-tree.sh", str(tree), env=env)
    return tree


# --- dist/: the project's own wheels, as `make build` made them


@pytest.fixture(scope="module")
def project_changes(
    base_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str | None]:
    tree = applied_tree(base_repo, ROOT / "patches", tmp_path_factory.mktemp("project"))
    return series_changes(tree)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_dist_wheel_is_official_plus_series(flavour: str, project_changes) -> None:
    built = ROOT / "dist" / PATCHED[flavour]
    assert built.is_file(), f"{built} is missing: run make build"
    check_wheel(built, official_wheel(flavour), flavour, project_changes)


def test_dist_sha256sums() -> None:
    sums = (ROOT / "dist" / "SHA256SUMS").read_text().splitlines()
    expected = []
    for flavour in sorted(FLAVOURS, key=lambda f: PATCHED[f]):
        data = (ROOT / "dist" / PATCHED[flavour]).read_bytes()
        expected.append(f"{hashlib.sha256(data).hexdigest()}  {PATCHED[flavour]}")
    assert sums == expected


# The H200 Triton configs that patch 0004 ships for the fused expert counts (V3/R1 with R=1 and
# R=8) at the per-rank MoE intermediate sizes of TP 8, 4, 2, 1; tuned by benchmarks/tune_moe.py.
CONFIG_DIR = "vllm/model_executor/layers/fused_moe/configs/"
TUNED_SIZES = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 1536, 2048, 3072, 4096}
POWERS_OF_TWO = {2**i for i in range(10)}
TILE_KEYS = {"BLOCK_SIZE_M", "BLOCK_SIZE_N", "BLOCK_SIZE_K", "GROUP_SIZE_M", "num_warps"}


@pytest.mark.parametrize("experts", [257, 264])
@pytest.mark.parametrize("dtype", ["fp8", "bf16"])
def test_dist_wheel_has_h200_configs_for_fused_experts(experts: int, dtype: str) -> None:
    suffix = ",dtype=fp8_w8a8,block_shape=[128,128]" if dtype == "fp8" else ""
    with zipfile.ZipFile(ROOT / "dist" / PATCHED["cuda"]) as zf:
        for n in (256, 512, 1024, 2048):
            name = f"{CONFIG_DIR}E={experts},N={n},device_name=NVIDIA_H200{suffix}.json"
            assert name in zf.namelist(), f"{name} is missing from the wheel"
            config = json.loads(zf.read(name))
            assert isinstance(config.pop("triton_version"), str)
            assert {int(m) for m in config} >= TUNED_SIZES, name
            for m, tiles in config.items():
                assert set(tiles) >= TILE_KEYS, (name, m)
                for key in TILE_KEYS:
                    assert tiles[key] in POWERS_OF_TWO, (name, m, key, tiles[key])
                assert 1 <= tiles.get("num_stages", 2) <= 8, (name, m)
                if dtype == "fp8":  # tiles within the [128, 128] quantization blocks' grid
                    assert 128 % tiles["BLOCK_SIZE_N"] == 0, (name, m)


# --- a real sample series (tests/conftest.py), built into a temp dist


@pytest.fixture(scope="module")
def sample_build(
    base_repo: Path, sample_series: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, str | None]]:
    work = tmp_path_factory.mktemp("sample-build")
    env = {"PATCH_DIR": str(sample_series), "DIST_DIR": str(work / "dist"), "BUILD_DIR": str(work)}
    for flavour in FLAVOURS:
        run_script("build-wheel.sh", flavour, env=env)
    return work / "dist", series_changes(applied_tree(base_repo, sample_series, work))


def test_sample_series_changes_every_kind_of_file(sample_build) -> None:
    _, changes = sample_build
    assert changes["vllm/model_executor/layers/fused_moe/configs/README"] is None
    assert changes["vllm/sef_infra_probe.py"] is not None
    assert changes["vllm/envs.py"] is not None
    assert changes["vllm/config/__init__.py"] is not None
    assert len(changes) == 4  # tests/test_sef_infra_probe.py is not a vllm/ file


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_sample_wheel_is_official_plus_series(flavour: str, sample_build) -> None:
    dist, changes = sample_build
    built = dist / PATCHED[flavour]
    check_wheel(built, official_wheel(flavour), flavour, changes)
    envs = read_member(built, "vllm/envs.py").decode()
    assert "# sef-infra sample: one comment line\n" in envs
    assert not any(n.startswith("tests/") for n in members(built))


def test_build_is_reproducible_and_skips_when_up_to_date(
    sample_series: Path, sample_build, tmp_path: Path
) -> None:
    dist, _ = sample_build
    again = run_script(
        "build-wheel.sh",
        "cpu",
        env={"PATCH_DIR": str(sample_series), "DIST_DIR": str(dist), "BUILD_DIR": str(tmp_path)},
    )
    assert "is up to date" in again.stderr
    fresh = tmp_path / "fresh"
    run_script(
        "build-wheel.sh",
        "cpu",
        env={"PATCH_DIR": str(sample_series), "DIST_DIR": str(fresh), "BUILD_DIR": str(tmp_path)},
    )
    first = (dist / PATCHED["cpu"]).read_bytes()
    assert (fresh / PATCHED["cpu"]).read_bytes() == first, "two builds gave different bytes"


def test_build_refuses_changes_to_compiled_sources(
    clone: Callable[..., Path], tmp_path: Path
) -> None:
    repo = clone()
    source = next((repo / "csrc").rglob("*.cu"))
    source.write_text(source.read_text() + "// changed\n")
    commit_all(repo, "csrc: change a kernel", "The prebuilt wheels cannot carry this.")
    patches = refresh_into(repo, tmp_path / "patches")
    proc = run_script(
        "build-wheel.sh",
        "cpu",
        env={"PATCH_DIR": str(patches), "DIST_DIR": str(tmp_path / "dist")},
        check=False,
    )
    assert proc.returncode != 0
    assert str(source.relative_to(repo)) in proc.stderr
    assert "make build-cuda" in proc.stderr
    assert not (tmp_path / "dist").exists()


def test_test_venv_has_the_dist_wheel_installed() -> None:
    """The test venv runs exactly dist/'s CPU wheel: installed files match its RECORD hashes."""
    import importlib.metadata as md

    assert md.version("vllm_cpu") == f"{VERSION}+{LOCAL_VERSION}"
    installed = {str(f): f for f in md.distribution("vllm_cpu").files or [] if f.hash}
    built = members(ROOT / "dist" / PATCHED["cpu"])
    record = f"vllm_cpu-{VERSION}+{LOCAL_VERSION}.dist-info/RECORD"
    for name, (digest, _) in built.items():
        if name == record:
            continue
        assert name in installed, f"{name} of the wheel is not installed"
        file = installed[name]
        assert f"{file.hash.mode}={file.hash.value}" == digest, name
        assert record_hash(Path(file.locate()).read_bytes()) == digest, f"{name} changed on disk"
