"""Build-time checks of the serving images (docker/Dockerfile, docker/Dockerfile.source).

Run by a RUN step of each Dockerfile, with the image's own Python (standard library only, plus
`packaging`, which vLLM depends on; pip's vendored copy otherwise). No GPU is needed: vLLM's
platform detection finds none at build time and the fusion module still imports.

    python3 verify_image.py snapshot FILE
        Record the installed distributions (name -> version) and the requirements of the
        installed vllm that the environment does not satisfy, as JSON, before the patched
        wheel replaces the image's vllm.

    python3 verify_image.py check --version 0.32.0+sef1 [--before FILE] [--torch 2.13.0]
                                  [--cuda-major 13]
        After the install:
        - importlib.metadata.version("vllm") is --version;
        - the fusion module imports, and vllm.envs reads VLLM_SHARED_EXPERT_FUSION_REPLICAS
          from the environment (the image's ENV) as the same integer;
        - every requirement of the installed vllm is satisfied (with --before: none is
          unsatisfied that was not already unsatisfied for the image's own vllm);
        - with --before: no distribution other than vllm was added, removed or changed
          (the install pulled no other torch and no other dependency);
        - with --torch / --cuda-major: torch's release and the CUDA major version it was
          built for.
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

FUSION_MODULE = "vllm.model_executor.layers.fused_moe.shared_expert_fusion"
FUSION_ENV = "VLLM_SHARED_EXPERT_FUSION_REPLICAS"


def installed() -> dict[str, str]:
    """Every installed distribution, canonical name -> version (first on sys.path wins)."""
    out: dict[str, str] = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name:
            out.setdefault(canonicalize_name(name), dist.version)
    return out


def unsatisfied_requirements(dists: dict[str, str]) -> list[str]:
    """The requirements of the installed vllm (no extras) that `dists` does not satisfy."""
    env = {**default_environment(), "extra": ""}
    missing = []
    for line in md.requires("vllm") or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        have = dists.get(canonicalize_name(req.name))
        if have is None or not req.specifier.contains(have, prereleases=True):
            missing.append(f"{req} (installed: {have or 'none'})")
    return sorted(missing)


def snapshot(path: Path) -> None:
    dists = installed()
    state = {"installed": dists, "unsatisfied": unsatisfied_requirements(dists)}
    path.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
    print(f"verify_image: recorded {len(dists)} distributions (vllm {dists.get('vllm')})")


def check(args: argparse.Namespace) -> list[str]:
    failures: list[str] = []
    dists = installed()

    version = md.version("vllm")
    if version != args.version:
        failures.append(f'importlib.metadata.version("vllm") is {version}, expected {args.version}')

    try:
        fusion = importlib.import_module(FUSION_MODULE)
        if getattr(fusion, "ENV_NAME", None) != FUSION_ENV:
            failures.append(f"{FUSION_MODULE}.ENV_NAME is not {FUSION_ENV}")
    except Exception as e:  # any import error is the finding
        failures.append(f"import {FUSION_MODULE} failed: {e!r}")
    # The image's ENV value, as vLLM reads it (a value it refuses raises a ValueError naming it).
    raw = os.environ.get(FUSION_ENV, "")
    try:
        import vllm.envs as envs

        got = getattr(envs, FUSION_ENV)
        if str(got) != (raw.strip() or "0"):
            failures.append(f"vllm.envs.{FUSION_ENV} is {got}, the environment says {raw!r}")
    except Exception as e:
        failures.append(f"vllm.envs cannot read {FUSION_ENV}={raw!r}: {e!r}")

    unsatisfied = unsatisfied_requirements(dists)
    if args.before:
        before = json.loads(Path(args.before).read_text())
        old, new = before["installed"], dict(dists)
        old.pop("vllm", None)
        new.pop("vllm", None)
        for name in sorted(old.keys() | new.keys()):
            if old.get(name) != new.get(name):
                failures.append(
                    f"{name} changed with the vllm install: {old.get(name)} -> {new.get(name)}"
                )
        unsatisfied = [r for r in unsatisfied if r not in before["unsatisfied"]]
    failures += [f"vllm requirement not satisfied: {r}" for r in unsatisfied]

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
    chk = sub.add_parser("check")
    chk.add_argument("--version", required=True)
    chk.add_argument("--before")
    chk.add_argument("--torch")
    chk.add_argument("--cuda-major")
    args = parser.parse_args(argv)
    if args.command == "snapshot":
        snapshot(args.file)
        return 0
    failures = check(args)
    for failure in failures:
        print(f"verify_image: FAIL: {failure}", file=sys.stderr)
    if failures:
        return 1
    print(f"verify_image: vllm {args.version}, {FUSION_MODULE} imports; all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
