"""Module constants for a benchmark variant (benchmarks/e2e.py: ``set=MODULE.NAME=VALUE``).

On the path of a Python process (PYTHONPATH), with SEF_SET_CONSTANTS a JSON list of
[module, name, value]: when MODULE is first imported, its NAME becomes VALUE, right after the
module's own code ran. Every process started with that environment does the same, vLLM's engine
process included, so a constant that a kernel wrapper reads at run time or a CUDA graph's
capture bakes in takes the value everywhere. A NAME the module does not define is an error.

With SEF_REPLACE a JSON list of [module, attribute path, "package.module:function"] (``replace=``),
the same for a function: ``module.attribute.path`` becomes the function, which keeps what it
replaced as its ``replaced`` attribute (a prototype of benchmarks/prototypes.py in place of a
series method). A path the module does not have is an error.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import sys


class _SetConstants(importlib.abc.MetaPathFinder):
    def __init__(self, settings: list[list], replacements: list[list]) -> None:
        self.pending: dict[str, list[tuple[str, object]]] = {}
        self.replacements: dict[str, list[tuple[str, str]]] = {}
        for module, name, value in settings:
            self.pending.setdefault(module, []).append((name, value))
        for module, path, function in replacements:
            self.pending.setdefault(module, [])
            self.replacements.setdefault(module, []).append((path, function))

    def find_spec(self, fullname, path, target=None):
        settings = self.pending.pop(fullname, None)
        if settings is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"SEF_SET_CONSTANTS: module {fullname} not found")
        exec_module = spec.loader.exec_module

        replacements = self.replacements.pop(fullname, [])

        def exec_and_set(module):
            exec_module(module)
            for name, value in settings:
                if not hasattr(module, name):
                    raise AttributeError(
                        f"SEF_SET_CONSTANTS: {fullname} defines no {name} to set to {value!r}"
                    )
                setattr(module, name, value)
            for path, function in replacements:
                *owners, name = path.split(".")
                owner = module
                for part in owners:
                    owner = getattr(owner, part, None)
                if owner is None or not hasattr(owner, name):
                    raise AttributeError(f"SEF_REPLACE: {fullname} has no {path} to replace")
                source, _, attribute = function.partition(":")
                new = getattr(importlib.import_module(source), attribute)
                new.replaced = getattr(owner, name)
                setattr(owner, name, new)

        spec.loader.exec_module = exec_and_set
        return spec


if os.environ.get("SEF_SET_CONSTANTS") or os.environ.get("SEF_REPLACE"):
    sys.meta_path.insert(
        0,
        _SetConstants(
            json.loads(os.environ.get("SEF_SET_CONSTANTS") or "[]"),
            json.loads(os.environ.get("SEF_REPLACE") or "[]"),
        ),
    )
