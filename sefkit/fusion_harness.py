"""Engine runs for the fusion tests: launch them, read their outputs back.

Each run is one engine process (engine_run.py) over a list of checkpoints with
one fusion setting; its JSON outputs land in ROOT/<run>/<model>.json and its
log in ROOT/<run>.log. An engine that fails reports its error in its own JSON;
checkpoints that a dying process left without output run again one by one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

# A run: the checkpoints it serves, in order, and its engine_run.py arguments.
RunSpec = tuple[list[str], list[str]]


class Runs:
    """Outputs of the engine runs, by run name and model."""

    def __init__(self, root: Path):
        self.root = root

    def __call__(self, run: str, model: str) -> dict:
        path = self.root / run / f"{model}.json"
        if not path.exists():
            log = self.root / f"{run}.{model}.log"
            log = (log if log.exists() else self.root / f"{run}.log").read_text()
            pytest.fail(f"run {run} wrote nothing for {model}; log tail:\n{log[-4000:]}")
        return json.loads(path.read_text())

    def log(self, run: str) -> str:
        return (self.root / f"{run}.log").read_text()


def launch_runs(
    specs: dict[str, RunSpec],
    checkpoints: Path,
    root: Path,
    lanes: int = 1,
    env_for: Callable[[str, int], dict[str, str]] = lambda name, lane: {},
    timeout: float = 900,
) -> Runs:
    """Run every spec, ``lanes`` at a time, longest first."""

    def run(name: str, lane: int, models: list[str], log_name: str) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **env_for(name, lane))
        cmd = [
            sys.executable,
            str(HERE / "engine_run.py"),
            str(root / name),
            *(str(checkpoints / m) for m in models),
            *specs[name][1],
        ]
        with open(root / log_name, "w") as log:
            subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)

    def launch(lane_and_run: tuple[int, str]) -> None:
        lane, name = lane_and_run
        models = specs[name][0]
        run(name, lane, models, f"{name}.log")
        # A process that died (a crash in native code) took the checkpoints
        # after its last one along: each of those runs again alone, so that
        # every failure names its own cause (log ROOT/<run>.<model>.log).
        for model in models:
            if not (root / name / f"{model}.json").exists():
                run(name, lane, [model], f"{name}.{model}.log")

    order = sorted(specs, key=lambda n: -len(specs[n][0]))
    with ThreadPoolExecutor(lanes) as pool:
        list(pool.map(launch, [(i % lanes, n) for i, n in enumerate(order)]))
    return Runs(root)
