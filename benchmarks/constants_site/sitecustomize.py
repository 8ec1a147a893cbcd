"""Module constants for a benchmark variant (benchmarks/e2e.py: ``set=MODULE.NAME=VALUE``).

On the path of a Python process (PYTHONPATH), with SEF_SET_CONSTANTS a JSON list of
[module, name, value]: when MODULE is first imported, its NAME becomes VALUE, right after the
module's own code ran. Every process started with that environment does the same, vLLM's engine
process included, so a constant that a kernel wrapper reads at run time or a CUDA graph's
capture bakes in takes the value everywhere. A NAME the module does not define is an error.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import sys


class _SetConstants(importlib.abc.MetaPathFinder):
    def __init__(self, settings: list[list]) -> None:
        self.pending: dict[str, list[tuple[str, object]]] = {}
        for module, name, value in settings:
            self.pending.setdefault(module, []).append((name, value))

    def find_spec(self, fullname, path, target=None):
        settings = self.pending.pop(fullname, None)
        if settings is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"SEF_SET_CONSTANTS: module {fullname} not found")
        exec_module = spec.loader.exec_module

        def exec_and_set(module):
            exec_module(module)
            for name, value in settings:
                if not hasattr(module, name):
                    raise AttributeError(
                        f"SEF_SET_CONSTANTS: {fullname} defines no {name} to set to {value!r}"
                    )
                setattr(module, name, value)

        spec.loader.exec_module = exec_and_set
        return spec


if os.environ.get("SEF_SET_CONSTANTS"):
    sys.meta_path.insert(0, _SetConstants(json.loads(os.environ["SEF_SET_CONSTANTS"])))
