"""The attention projections' GEMMs as programmatic dependents of the kernels that feed them.

In the decode step each dense block-FP8 GEMM of attention follows the kernel that writes its
input: patch 0018's RMSNorm + FP8 group quantization before the fused q/kv-a projection (input
norm, with the residual) and before q_b (the query's latent norm), vLLM's per-token-group
quantization before o_proj. The GEMM's weights do not depend on that kernel. Launched as its
programmatic dependent (Hopper's PDL, as patch 0009 launches the MoE's down GEMM), the GEMM can
start while its producer runs, prefetch its weight lines into L2 and wait (griddepcontrol.wait)
only before it reads the activations. The sef14 engine profile (H100, 30 layers, one token) has
the dense split-K GEMMs (patch 0016) at 26% of the GPU's busy time and about twice their
weights' floor (benchmarks/dense_fp8.py): what is left is latency, which is what PDL hides.

Patch 0019 ships what this benchmark measured first with prototypes: the split-K GEMM launched
as a programmatic dependent up to 16 tokens on Hopper, prefetching two K blocks of its weights
before its wait, and the norm kernel triggering its dependents at its start. The prototype
kernels here (patch 0016's split-K kernel with ``launch_pdl`` and a ``prefetch`` count, patch
0018's kernel with ``trigger``) keep the other choices measurable; same arithmetic, same order:
every output must equal the plain launches' bit for bit (checked per row).

Per pair (producer -> GEMM, DeepSeek-V3's per-rank TP8 shapes) and token count, µs per pair in
CUDA graphs of back-to-back pairs over weight copies that together exceed the L2 cache:
  base          the patches' kernels launched plainly (block_fp8_split_k_mm(launch_pdl=False))
  shipped       the patches' kernels with their defaults (patch 0019's PDL where it applies)
  pdl           prototype: the producer triggers its dependents at its start; the GEMM waits
  pdl_prefetch  the same, and the GEMM prefetches its first --prefetch K blocks before waiting
  fused_quant   o_proj only: no producer, the GEMM quantizes its 16-bit input itself (one
                launch per layer fewer; the quantization's arithmetic as vLLM's kernel has it)
(o_proj's producer is vLLM's CUDA kernel, which triggers its dependents when it ends.)
Every variant's GEMM runs the tile patch 0016's ``split_k_config`` picks, or --tile's for all of
them (a candidate tile, measured as the engine would launch it); each row records its tile.

    python -m benchmarks.dense_pdl --out dense_pdl.json [--tokens 1 4 16] [--prefetch 2] \
        [--pairs "quant->o_proj" --tile 128/2]
    benchmarks/gpu_host.sh dense-pdl

Results are written after each row (a run cut short keeps what it measured).
"""

from __future__ import annotations

import argparse
import functools

import torch
import triton
import triton.language as tl

from benchmarks.dense_fp8 import copies_for
from sefkit.triton_kernels import dense_split_k

# name: (producer, hidden size of its input, with the residual add, GEMM N, GEMM K, pairs per
# decode step of the 61-layer model)
PAIRS = {
    "input_norm->qkv_a": ("norm", 7168, True, 2112, 7168, 61),
    "q_a_norm->q_b": ("norm", 1536, False, 3072, 1536, 61),
    "quant->o_proj": ("quant", 2048, False, 7168, 2048, 61),
}
# fused_quant: o_proj's pair only
VARIANTS = ("base", "shipped", "pdl", "pdl_prefetch", "fused_quant")
TOKENS = [1, 4, 16]
GROUP = 128


@triton.jit
def prefetch_l2(ptrs):
    """Prefetch the global-memory lines at ``ptrs`` into L2 (nothing is read into registers)."""
    tl.inline_asm_elementwise(
        "prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;",
        "=r,l",
        [ptrs],
        dtype=tl.int32,
        is_pure=False,
        pack=1,
    )


@triton.jit
def split_k_program(
    M,
    N,
    K,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    """Patch 0016's program: its tile and split (program ids n, m, k), the K blocks, the split's
    range of them [k_begin, k_end), the tile's rows and columns and their offsets wrapped into
    A and B, the offsets within a K block."""
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    num_k = tl.cdiv(K, BLOCK_K)
    per_split = tl.cdiv(num_k, SPLIT_K)
    k_begin = pid_k * per_split
    k_end = tl.minimum(k_begin + per_split, num_k)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return (
        pid_n, pid_m, pid_k, num_k, k_begin, k_end, rows, cols, rows % M, cols % N,
        tl.arange(0, BLOCK_K),
    )  # fmt: skip


@triton.jit
def split_k_store(
    acc,
    c_ptr,
    partial_ptr,
    counter_ptr,
    rows,
    cols,
    M,
    N,
    stride_cm,
    pid_m,
    pid_n,
    pid_k,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLIT_K: tl.constexpr,
):
    """Patch 0016's epilogue: with one split, C's tile from ``acc``; else ``acc`` as this
    split's float32 partial, and the tile's last program to arrive sums the partials in split
    order into C and resets the tile's counter."""
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    c_ptrs = c_ptr + rows[:, None] * stride_cm + cols[None, :]
    if SPLIT_K == 1:
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask)
    else:
        part = partial_ptr + rows[:, None] * N + cols[None, :]
        tl.store(part + pid_k * M * N, acc, mask=mask)
        tl.debug_barrier()
        tile = pid_m * tl.num_programs(0) + pid_n
        arrived = tl.atomic_add(counter_ptr + tile, 1, sem="acq_rel")
        if arrived == SPLIT_K - 1:
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for split in tl.static_range(SPLIT_K):
                total += tl.load(part + split * M * N, mask=mask, other=0.0, cache_modifier=".cg")
            tl.store(c_ptrs, total.to(c_ptr.dtype.element_ty), mask=mask)
            tl.atomic_xchg(counter_ptr + tile, 0)


@triton.jit
def _norm_quant_kernel(
    x_ptr,
    w_ptr,
    r_ptr,
    q_ptr,
    s_ptr,
    x_stride,
    hidden,
    eps,
    fp8_max,
    min_scale,
    s_token_stride,
    s_group_stride,
    HAS_RESIDUAL: tl.constexpr,
    GROUP_SIZE: tl.constexpr,
    GROUPS: tl.constexpr,
    TRIGGER: tl.constexpr = False,
):
    """Patch 0018's _rms_norm_group_quant_kernel (no scale bound), with TRIGGER: let the
    dependent launch start now."""
    if TRIGGER:
        tl.extra.cuda.gdc_launch_dependents()
    token = tl.program_id(0).to(tl.int64)
    groups = tl.arange(0, GROUPS)
    offs = groups[:, None] * GROUP_SIZE + tl.arange(0, GROUP_SIZE)[None, :]
    mask = offs < hidden
    x = tl.load(x_ptr + token * x_stride + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        r = tl.load(r_ptr + token * hidden + offs, mask=mask, other=0.0)
        x += r.to(tl.float32)
        tl.store(r_ptr + token * hidden + offs, x.to(r.dtype), mask=mask)
    rms = tl.math.rsqrt(tl.sum(tl.sum(x * x, axis=1), axis=0) / hidden + eps)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0)
    y = (x * rms).to(w.dtype).to(tl.float32) * w.to(tl.float32)
    y = y.to(w.dtype).to(tl.float32)
    absmax = tl.max(tl.abs(y), axis=1)
    scale = tl.maximum(absmax / fp8_max, min_scale)
    q = tl.clamp(y / scale[:, None], -fp8_max, fp8_max)
    tl.store(q_ptr + token * hidden + offs, q.to(q_ptr.dtype.element_ty), mask=mask)
    in_row = groups * GROUP_SIZE < hidden
    tl.store(s_ptr + token * s_token_stride + groups * s_group_stride, scale, in_row)


@triton.jit
def _split_k_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    as_ptr,
    bs_ptr,
    partial_ptr,
    counter_ptr,
    M,
    N,
    K,
    stride_am,
    stride_bn,
    stride_cm,
    stride_asm,
    stride_ask,
    stride_bsn,
    stride_bsk,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr,
    launch_pdl: tl.constexpr = False,
    PREFETCH: tl.constexpr = 0,
    QUANT_A: tl.constexpr = False,
    a_eps: tl.constexpr = 1e-10,
):
    """Patch 0016's _block_fp8_split_k_kernel with launch_pdl: launched as a programmatic
    dependent, it waits for the previous kernel before its first read of A or As, after
    prefetching into L2 the first PREFETCH K blocks of its weight rows (one 128-byte line per
    row and block of FP8). With QUANT_A, A is the unquantized activation (16-bit): each
    program quantizes its rows' K blocks as vLLM's per-token-group quantization does (absmax
    at least a_eps, scale absmax / fp8_max, values divided and clamped), As is not read."""
    pid_n, pid_m, pid_k, num_k, k_begin, k_end, rows, cols, offs_m, offs_n, offs_k = (
        split_k_program(M, N, K, BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K)
    )
    if launch_pdl:
        if PREFETCH > 0:
            last = tl.maximum(tl.minimum(k_end, num_k) - 1, 0)
            blocks = tl.minimum(k_begin + tl.arange(0, PREFETCH), last)
            ptrs = b_ptr + (offs_n[:, None] * stride_bn + blocks[None, :].to(tl.int64) * BLOCK_K)
            prefetch_l2(ptrs)
        tl.extra.cuda.gdc_wait()
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(k_begin, k_end):
        k = kb * BLOCK_K + offs_k
        a = tl.load(
            a_ptr + offs_m[:, None] * stride_am + k[None, :],
            mask=k[None, :] < K,
            other=0.0,
        )
        b = tl.load(
            b_ptr + offs_n[None, :] * stride_bn + k[:, None],
            mask=k[:, None] < K,
            other=0.0,
        )
        if QUANT_A:
            fp8_max = 448.0  # float8_e4m3fn, the platform's FP8 on Hopper
            a = a.to(tl.float32)
            a_s = tl.maximum(tl.max(tl.abs(a), axis=1), a_eps) / fp8_max
            a = tl.clamp(a / a_s[:, None], -fp8_max, fp8_max).to(b.dtype)
        else:
            a_s = tl.load(as_ptr + offs_m * stride_asm + kb * stride_ask)
        b_s = tl.load(bs_ptr + (offs_n // BLOCK_K) * stride_bsn + kb * stride_bsk)
        acc += tl.dot(a, b) * a_s[:, None] * b_s[None, :]
    split_k_store(
        acc, c_ptr, partial_ptr, counter_ptr, rows, cols, M, N, stride_cm, pid_m, pid_n, pid_k,
        BLOCK_M, BLOCK_N, SPLIT_K,
    )  # fmt: skip


def norm_quant(out, x, weight, scales, eps, residual, group, trigger=False) -> None:
    """Patch 0018's launcher for the prototype kernel: fills ``out`` and ``scales`` (a
    transposed [groups, tokens] buffer seen through its transpose, or row-major)."""
    hidden = x.size(-1)
    fp8_max = torch.finfo(out.dtype).max
    _norm_quant_kernel[(x.size(0),)](
        x,
        weight,
        residual if residual is not None else x,
        out,
        scales,
        x.stride(0),
        hidden,
        eps,
        fp8_max,
        1.0 / (fp8_max * 512.0),
        scales.stride(0),
        scales.stride(1),
        HAS_RESIDUAL=residual is not None,
        GROUP_SIZE=group,
        GROUPS=triton.next_power_of_2(hidden // group),
        TRIGGER=trigger,
        num_warps=8 if hidden > 2048 else 4,
    )


def split_k_mm(A, B, As, Bs, out_dtype, pdl=False, prefetch=0, config=None):
    """Patch 0016's ``block_fp8_split_k_mm`` (its tile and split from the installed vLLM's
    ``split_k_config``, its per-stream counters) launching the prototype kernel; ``As`` None:
    A is 16-bit, quantized in the kernel."""
    ns = _installed()
    m, k = A.shape
    n = B.shape[0]
    block_n, split_k = config or tile(A, B)
    out = torch.empty((m, n), device=A.device, dtype=out_dtype)
    grid = (triton.cdiv(n, block_n), triton.cdiv(m, ns["BLOCK_M"]), split_k)
    partial = counters = out
    if split_k > 1:
        partial = torch.empty((split_k, m, n), device=A.device, dtype=torch.float32)
        counters = ns["_tile_counters"](A.device, grid[0] * grid[1])
    quant_a = As is None
    if quant_a:
        As = A.new_empty((0, 0), dtype=torch.float32)
    _split_k_kernel[grid](
        A,
        B,
        out,
        As,
        Bs,
        partial,
        counters,
        m,
        n,
        k,
        A.stride(0),
        B.stride(0),
        out.stride(0),
        As.stride(0),
        As.stride(1),
        Bs.stride(0),
        Bs.stride(1),
        BLOCK_M=ns["BLOCK_M"],
        BLOCK_N=block_n,
        BLOCK_K=GROUP,
        SPLIT_K=split_k,
        launch_pdl=pdl,
        PREFETCH=prefetch,
        QUANT_A=quant_a,
        num_warps=4,
        num_stages=4,
    )
    return out


def tile(A, B) -> tuple[int, int]:
    """(BLOCK_N, SPLIT_K) as patch 0016 picks them for A @ B.T (an H100's 132 SMs on a CPU)."""
    sms = 132
    if A.device.type == "cuda":
        sms = torch.cuda.get_device_properties(A.device).multi_processor_count
    return _installed()["split_k_config"](A.shape[0], B.shape[0], A.shape[1], sms)


# Patch 0016's definitions as the installed vLLM has them, loaded once.
_installed = functools.cache(dense_split_k)


def measure(args, producers: dict | None = None, device: str = "cuda") -> list[dict]:
    """Rows per pair and token count. ``producers``: the shipped producers by kind, ``norm``
    (patch 0018's launcher, _C.rms_norm_per_block_quant's signature) and ``quant`` (x -> (q,
    transposed scales)); default: the installed vLLM's."""
    from sefkit.graph_timing import capture, record, replay_us

    if producers is None:
        from vllm.kernels.triton.rms_norm_group_quant import rms_norm_per_block_quant_triton
        from vllm.model_executor.layers.quantization.utils.fp8_utils import (
            per_token_group_quant_fp8,
        )

        producers = {
            "norm": rms_norm_per_block_quant_triton,
            "quant": lambda x: per_token_group_quant_fp8(x, GROUP, column_major_scales=True),
        }
    shipped_gemm = _installed()["block_fp8_split_k_mm"]
    config = args.tile  # None: split_k_config's tile per shape and token count
    fp8 = torch.float8_e4m3fn
    gen = torch.Generator(device=device).manual_seed(0)
    rows = []
    for name in args.pairs:
        kind, hidden, has_residual, n, k, per_step = PAIRS[name]
        count = copies_for(n, k)
        weights = [
            (
                (torch.randn(n, k, generator=gen, device=device) * 0.05).to(fp8),
                torch.rand(-(-n // GROUP), k // GROUP, generator=gen, device=device) * 0.01,
            )
            for _ in range(count)
        ]
        norm_w = (1 + 0.1 * torch.randn(hidden, generator=gen, device=device)).bfloat16()
        for m in args.tokens:
            x = torch.randn(m, hidden, generator=gen, device=device).bfloat16()
            res0 = torch.randn(m, hidden, generator=gen, device=device).bfloat16()
            residual = res0.clone() if has_residual else None
            q = torch.empty(m, hidden, device=device, dtype=fp8)
            s = torch.empty(hidden // GROUP, m, device=device).t()  # transposed, as the pass has

            def pair(variant, b, bs, x=x, q=q, s=s, residual=residual, kind=kind, norm_w=norm_w):
                if variant == "fused_quant":
                    return split_k_mm(x, b, None, bs, torch.bfloat16, config=config)
                shipped = variant in ("base", "shipped")
                if kind == "quant":
                    qq, ss = producers["quant"](x)
                elif shipped:
                    producers["norm"](q, x, norm_w, s, 1e-6, None, residual, GROUP, True)
                    qq, ss = q, s
                else:
                    norm_quant(q, x, norm_w, s, 1e-6, residual, GROUP, trigger=True)
                    qq, ss = q, s
                if shipped:
                    block_n, split_k = config or tile(qq, b)
                    plain = {"launch_pdl": False} if variant == "base" else {}
                    return shipped_gemm(
                        qq, b, ss, bs, torch.bfloat16, split_k=split_k, block_n=block_n, **plain
                    )
                prefetch = args.prefetch if variant == "pdl_prefetch" else 0
                return split_k_mm(
                    qq, b, ss, bs, torch.bfloat16, pdl=True, prefetch=prefetch, config=config
                )

            variants = [v for v in VARIANTS if kind == "quant" or v != "fused_quant"]
            outs, times = {}, {}
            for variant in variants:
                if residual is not None:
                    residual.copy_(res0)
                outs[variant] = pair(variant, *weights[0])

                def chain(variant=variant, weights=weights):
                    for b, bs in weights:
                        pair(variant, b, bs)

                graphs = capture(chain, [()], warmup=2)
                times[variant] = replay_us(graphs, args.iters, reps=5) / count
                del graphs
            row = {
                "scenario": "dense_pdl",
                "pair": name,
                "n": n,
                "k": k,
                "tokens": m,
                "tile": list(config or tile(x, weights[0][0])),  # [BLOCK_N, SPLIT_K]
                "pairs_per_step": per_step,
                **{f"{v}_us": times[v] for v in variants},
                "prefetch_blocks": args.prefetch,
                "equal_to_base": {v: torch.equal(outs[v], outs["base"]) for v in variants},
                "max_rel_diff_to_base": {
                    v: (
                        (outs[v].float() - outs["base"].float()).abs().max()
                        / outs["base"].float().abs().max()
                    ).item()
                    for v in variants
                },
                "copies": count,
            }
            record(rows, row, args.out, device)
    return rows


def parse_tile(text: str) -> tuple[int, int]:
    """--tile's BLOCK_N/SPLIT_K, each a power of two (BLOCK_N at least 16)."""
    try:
        block_n, split_k = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: BLOCK_N/SPLIT_K, e.g. 128/2") from None
    if block_n < 16 or block_n & (block_n - 1) or split_k < 1 or split_k & (split_k - 1):
        raise argparse.ArgumentTypeError(
            f"{text!r}: BLOCK_N a power of two >= 16, SPLIT_K a power of two >= 1"
        )
    return block_n, split_k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", choices=list(PAIRS), default=list(PAIRS))
    parser.add_argument("--tokens", nargs="+", type=int, default=TOKENS)
    parser.add_argument(
        "--prefetch", type=int, default=2, help="K blocks prefetched (pdl_prefetch)"
    )
    parser.add_argument("--iters", type=int, default=50, help="graph replays per repetition")
    parser.add_argument(
        "--tile",
        type=parse_tile,
        help="BLOCK_N/SPLIT_K for every variant's GEMM (default: patch 0016's split_k_config)",
    )
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.prefetch < 1 or args.prefetch & (args.prefetch - 1):
        parser.error(f"--prefetch {args.prefetch}: a power of two (K blocks per weight row)")
    measure(args)


if __name__ == "__main__":
    main()
