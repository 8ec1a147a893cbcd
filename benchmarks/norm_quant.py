"""RMSNorm + FP8 per-group quantization at decode sizes: vLLM's fused CUDA op against the
series' one-pass Triton kernel.

vLLM's ``fuse_norm_quant`` compile pass turns DeepSeek-V3's RMSNorms that feed a block-FP8 linear
layer into ``torch.ops._C.rms_norm_per_block_quant`` (with the residual add for each layer's
input norm, without it for the query's latent norm). One CUDA block per token walks the row three
times (the sum of squares, the group maxima, the quantized values): at decode sizes a latency, not
a bandwidth, cost (7.6 us a launch with the residual at one token on an H100, ~10% of the engine's
decode step). Patch "[Perf][Quant] One-pass Triton RMSNorm + FP8 group quantization at decode
sizes" (``vllm/kernels/triton/rms_norm_group_quant.py``, run by the pass's op up to
VLLM_RMS_NORM_QUANT_TRITON_MAX_TOKENS tokens) does the same arithmetic in one pass over a row held
in registers, one Triton program per token:

  x = input + residual (float; the residual is written back rounded to the input's dtype),
  y = dtype(dtype(x * rsqrt(mean(x^2) + eps)) * weight),
  per group of 128: scale = max(min(absmax(y), scale_ub) / fp8_max, 1 / (fp8_max * 512)),
  out = fp8(clamp(y / scale, -fp8_max, fp8_max)), scales row- or column-major (transposed),

as vLLM's kernel computes it (csrc/quantization/fused_kernels/layernorm_utils.cuh); ``reference``
is that arithmetic in torch. Per shape and token count, each kernel's time per call in a CUDA
graph of back-to-back calls, and how far the Triton kernel's results are from the op's (quantized
values that differ, the largest scale ratio, the residual bit for bit).

    python -m benchmarks.norm_quant --out norm_quant.json [--tokens 1 4 16 64 128 256]
    benchmarks/gpu_host.sh norm-quant
"""

from __future__ import annotations

import argparse

import torch

# name: (hidden size, with the residual add, launches per decode step of the 61-layer model)
SHAPES = {
    "input_norm_residual": (7168, True, 63),  # every layer's input norm but the first; the
    # dense layers' post-attention norm
    "q_a_norm": (1536, False, 61),
    "input_norm_first": (7168, False, 1),
}
TOKENS = [1, 4, 16, 64, 128, 256]  # patch 0018 runs the Triton kernel up to 64 on Hopper
GROUP = 128


def reference(input, weight, epsilon, residual=None, group_size=GROUP, fp8_dtype=None, cast=None):
    """The op's arithmetic in torch, float where the kernel computes in float: (out, scales
    [tokens, groups], the new residual). ``cast(tensor, dtype)`` rounds to the input's dtype
    (default: to nearest, as the GPU does)."""
    fp8_dtype = fp8_dtype or torch.float8_e4m3fn
    cast = cast or (lambda t, dtype: t.to(dtype))
    x = input.float()
    new_residual = None
    if residual is not None:
        x = x + residual.float()
        new_residual = cast(x, input.dtype)
    rms = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + epsilon)
    y = cast(cast(x * rms, input.dtype).float() * weight.float(), input.dtype).float()
    groups = y.view(*y.shape[:-1], -1, group_size)
    fp8_max = torch.finfo(fp8_dtype).max
    scale = (groups.abs().amax(-1) / fp8_max).clamp(min=1.0 / (fp8_max * 512.0))
    q = (groups / scale[..., None]).clamp(-fp8_max, fp8_max).to(fp8_dtype).view_as(y)
    return q, scale, new_residual


def scales_buffer(tokens: int, groups: int, transposed: bool, device) -> torch.Tensor:
    """The scales as the fusion pass allocates them: column-major ([groups, tokens] seen through
    its transpose) for the block-FP8 linear layers."""
    if transposed:
        return torch.empty(groups, tokens, device=device, dtype=torch.float32).t()
    return torch.empty(tokens, groups, device=device, dtype=torch.float32)


def repeated(op, calls: int):
    """``calls`` back-to-back calls of ``op`` (one graph replays them all)."""

    def call(out, x, weight, scales, residual):
        for _ in range(calls):
            op(out, x, weight, scales, 1e-6, None, residual, GROUP, True)

    return call


def measure(args, kernels: dict | None = None, device: str = "cuda") -> list[dict]:
    """The rows; ``kernels``: vLLM's op and the prototype by name, the op first."""
    from sefkit.graph_timing import capture, record, replay_us

    if kernels is None:
        import vllm._custom_ops  # noqa: F401  (loads torch.ops._C)
        from vllm.kernels.triton.rms_norm_group_quant import rms_norm_per_block_quant_triton

        kernels = {
            "vllm_cuda": torch.ops._C.rms_norm_per_block_quant,
            "triton": rms_norm_per_block_quant_triton,
        }
    fp8 = torch.float8_e4m3fn
    gen = torch.Generator(device=device).manual_seed(0)
    rows = []
    for name, (hidden, has_residual, launches) in SHAPES.items():
        weight = (1 + 0.1 * torch.randn(hidden, generator=gen, device=device)).bfloat16()
        for m in args.tokens:
            x = torch.randn(m, hidden, generator=gen, device=device).bfloat16()
            res0 = torch.randn(m, hidden, generator=gen, device=device).bfloat16()
            results = {}
            for kernel, op in kernels.items():
                out = torch.empty(m, hidden, device=device, dtype=fp8)
                scales = scales_buffer(m, hidden // GROUP, True, device)
                residual = res0.clone() if has_residual else None
                op(out, x, weight, scales, 1e-6, None, residual, GROUP, True)
                kept = residual.clone() if residual is not None else None
                results[kernel] = (out.float(), scales.clone(), kept)

                graphs = capture(repeated(op, args.calls), [(out, x, weight, scales, residual)], 2)
                us = replay_us(graphs, args.iters, reps=5) / args.calls
                results[kernel] += (us,)
            (q_ref, s_ref, r_ref, us_ref), (q, s, r, us) = results.values()
            row = {
                "scenario": "norm_quant",
                "shape": name,
                "hidden": hidden,
                "residual": has_residual,
                "tokens": m,
                "launches_per_step": launches,
                "vllm_cuda_us": us_ref,
                "triton_us": us,
                "ratio": us / us_ref,
                "quantized_values_differing": (q != q_ref).float().mean().item(),
                "scale_ratio_max": (s / s_ref).sub(1).abs().max().item(),
                "residual_equal": r is None or torch.equal(r, r_ref),
            }
            record(rows, row, args.out, device)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", nargs="+", type=int, default=TOKENS)
    parser.add_argument("--calls", type=int, default=20, help="calls per graph replay")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--out")
    args = parser.parse_args()
    measure(args)


if __name__ == "__main__":
    main()
