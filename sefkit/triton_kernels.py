"""The series' Triton kernels, compiled from the installed vLLM's source.

vLLM disables Triton without a GPU, so on a CPU its kernels cannot be imported from their
modules; their source, read from the installed (patched) vLLM, runs in Triton's interpreter
instead (TRITON_INTERPRET=1, set before triton is imported). On a GPU the same source compiles as
it does in vLLM.
- ``fused_routing``: patch 0003's grouped top-k + fused shared experts' entries, its launch's
  ``num_warps`` overridable (tests/fusion/test_triton_kernels.py, benchmarks/routing.py).
- ``split_k``: fused_moe_kernel and the split-K activation kernel of patch 0006
  (tests/fusion/test_triton_kernels.py).
- ``quantize_and_align``: patch 0013's one launch that quantizes the MoE input and assigns the
  expert blocks, leaving fused shared entries out with patch 0015
  (tests/fusion/test_triton_kernels.py).
- ``moe_sum``: patch 0014's Triton launch of the top-k sum, each token's last row read from another
  buffer with patch 0015 (tests/fusion/test_triton_kernels.py).
- ``dense_split_k``: patch 0016's split-K block-FP8 GEMM of dense linear layers, with patch
  0019's programmatic dependent launch (tests/fusion/test_triton_kernels.py).
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Callable
from pathlib import Path

MODULE = "model_executor/layers/fused_moe/router/grouped_topk_router.py"
KERNEL = "_grouped_topk_fused_shared_kernel"
LAUNCHER = "grouped_topk_fused_shared_experts"


def source_path(module: str = MODULE) -> Path:
    """The installed vLLM's ``module`` (a path under vllm/), found without importing vllm."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("vllm is not installed")
    return Path(spec.submodule_search_locations[0]) / module


class WithLaunch:
    """A Triton kernel whose launches use ``options`` (num_warps, num_stages), whatever the
    launcher asks for."""

    def __init__(self, kernel, **options) -> None:
        self.kernel, self.options = kernel, options

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            return launch(*args, **dict(kwargs, **self.options))

        return run


class _Interpreter:
    """``current_platform`` for the launchers in Triton's interpreter, which has no programmatic
    dependent launch (patch 0009 asks ``is_arch_support_pdl()`` before launching with it)."""

    @staticmethod
    def is_arch_support_pdl() -> bool:
        return False

    @staticmethod
    def fp8_dtype():
        import torch

        return torch.float8_e4m3fn


def _platform():
    """vLLM's ``current_platform`` on a GPU (the launchers run as in vLLM), else _Interpreter."""
    import torch

    if not torch.cuda.is_available():
        return _Interpreter()
    from vllm.platforms import current_platform

    return current_platform


def _defines(node: ast.stmt) -> str | None:
    """The name a top-level function, class or single-name assignment defines."""
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        return getattr(node.targets[0], "id", None)
    if isinstance(node, ast.AnnAssign):
        return getattr(node.target, "id", None)
    return getattr(node, "name", None)


def load(module: str, names: tuple[str, ...], **extra) -> dict:
    """Execute the top-level definitions ``names`` (functions or constants) of the installed
    vLLM's ``module`` (a path under vllm/) in a fresh namespace holding torch, triton, tl,
    ``current_platform`` (see _platform) and ``extra``."""
    import torch
    import triton
    import triton.language as tl

    path = source_path(module)
    tree = ast.parse(path.read_text())
    nodes = [n for n in tree.body if _defines(n) in names]
    missing = set(names) - {_defines(n) for n in nodes}
    if missing:
        raise RuntimeError(f"{path} lacks {sorted(missing)}: is the series applied?")
    scope = {"torch": torch, "triton": triton, "tl": tl, "current_platform": _platform(), **extra}
    exec(compile(ast.Module(nodes, []), str(path), "exec"), scope)
    return scope


def fused_routing(num_warps: int | None = None) -> Callable:
    """``grouped_topk_fused_shared_experts`` as the installed vLLM defines it, launching its kernel
    with ``num_warps`` warps (None: as vLLM launches it, with one warp since patch 0003 measured
    that fastest)."""
    namespace = load(MODULE, (KERNEL, LAUNCHER, "_PDL_MAX_TOKENS"))
    if num_warps is not None:
        namespace[KERNEL] = WithLaunch(namespace[KERNEL], num_warps=num_warps)
    return namespace[LAUNCHER]


FUSED_MOE = "model_executor/layers/fused_moe/fused_moe.py"


def split_k() -> dict:
    """``fused_moe_kernel`` (with the split-K axis) and the split-K SiLU-and-quantize kernel as the
    installed vLLM defines them, by name."""
    return load(
        FUSED_MOE,
        (
            "write_zeros_to_output",
            "fused_moe_kernel",
            "_split_k_silu_and_mul_per_block_quant_kernel",
        ),
    )


def quantize_and_align() -> Callable:
    """``quantize_and_align_block_size`` as the installed vLLM defines it (FP8 e4m3fn limits)."""

    def get_fp8_min_max() -> tuple[float, float]:
        return -448.0, 448.0

    return load(
        FUSED_MOE,
        (
            "_align_block_size_program",
            "_quantize_groups_program",
            "_quantize_and_align_kernel",
            "QUANTIZE_AND_ALIGN_MAX_ENTRIES",
            "quantize_and_align_block_size",
        ),
        get_fp8_min_max=get_fp8_min_max,
    )["quantize_and_align_block_size"]


def moe_sum() -> Callable:
    """``moe_sum_triton`` as the installed vLLM defines it (patch 0014)."""
    return load(FUSED_MOE, ("_moe_sum_kernel", "moe_sum_triton"))["moe_sum_triton"]


DENSE_SPLIT_K = "model_executor/kernels/linear/scaled_mm/split_k.py"


def dense_split_k() -> dict:
    """Patch 0016's ``block_fp8_split_k_mm`` and ``split_k_config`` (and the module's
    definitions they use) as the installed vLLM defines them, by name."""
    return load(
        DENSE_SPLIT_K,
        (
            "BLOCK_M",
            "GROUP",
            "PROGRAMS_PER_SM",
            "MAX_SPLIT_K",
            "PDL_MAX_TOKENS",
            "PDL_PREFETCH_BLOCKS",
            "_block_fp8_split_k_kernel",
            "split_k_config",
            "_counters",
            "_tile_counters",
            "block_fp8_split_k_mm",
        ),
    )
