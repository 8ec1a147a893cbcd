"""The series' fused routing kernel (patch 0003: grouped top-k and the fused shared experts'
entries in one Triton launch), compiled from the installed vLLM's source with the launch's
``num_warps`` settable.

vLLM disables Triton without a GPU, so on a CPU the kernel cannot be imported from its module;
its source, read from the installed (patched) vLLM, runs in Triton's interpreter instead
(TRITON_INTERPRET=1, set before triton is imported). On a GPU the same source compiles as it
does in vLLM. Used by tests/fusion/test_triton_kernels.py and benchmarks/routing.py.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from collections.abc import Callable
from pathlib import Path

MODULE = "model_executor/layers/fused_moe/router/grouped_topk_router.py"
KERNEL = "_grouped_topk_fused_shared_kernel"
LAUNCHER = "grouped_topk_fused_shared_experts"


def source_path() -> Path:
    """The installed vLLM's grouped_topk_router.py (without importing vllm)."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("vllm is not installed")
    return Path(spec.submodule_search_locations[0]) / MODULE


class _WithWarps:
    """A Triton kernel whose launches use ``num_warps`` warps."""

    def __init__(self, kernel, num_warps: int) -> None:
        self.kernel, self.num_warps = kernel, num_warps

    def __getitem__(self, grid):
        return functools.partial(self.kernel[grid], num_warps=self.num_warps)


def fused_routing(num_warps: int | None = None) -> Callable:
    """``grouped_topk_fused_shared_experts`` as the installed vLLM defines it, launching its kernel
    with ``num_warps`` warps (None: as vLLM launches it, Triton's default of 4)."""
    import torch
    import triton
    import triton.language as tl

    path = source_path()
    tree = ast.parse(path.read_text())
    nodes = [n for n in tree.body if getattr(n, "name", None) in (KERNEL, LAUNCHER)]
    found = {n.name for n in nodes}
    if found != {KERNEL, LAUNCHER}:
        raise RuntimeError(
            f"{path} lacks {sorted({KERNEL, LAUNCHER} - found)}: is the series applied?"
        )
    namespace = {"torch": torch, "triton": triton, "tl": tl}
    exec(compile(ast.Module(nodes, []), str(path), "exec"), namespace)
    if num_warps is not None:
        namespace[KERNEL] = _WithWarps(namespace[KERNEL], num_warps)
    return namespace[LAUNCHER]
