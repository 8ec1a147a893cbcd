"""Prototypes that an engine benchmark puts in place of a series method, to measure an idea
before it becomes a patch (benchmarks/e2e.py: ``replace=MODULE:ATTR=benchmarks.prototypes:NAME``).

Nothing here is shipped, and nothing here imports vLLM at module level: the replacement is
imported while the module it replaces into is being imported. benchmarks/constants_site keeps
what a function replaced as its ``replaced`` attribute.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from benchmarks.dense_pdl import prefetch_l2


def shared_expert_split_k(
    self,
    stream,
    hidden_states,
    a1q_scale,
    w1,
    w2,
    topk_weights,
    top_k_num,
    config,
    down_config,
    compute_type,
    activation,
    a2_scale,
    w13_split_k,
    fused_silu_quant,
    cache_dtype,
    cache2_dim,
    out,
):
    """TritonExperts._apply_fused_shared_experts (patches 0010/0015) with the shared expert's two
    GEMMs run by patch 0016's dense split-K GEMM on its slice of the fused weights, instead of
    the routed GEMMs' kernel, tile and split; no index launches. The sef13 profile: on the
    auxiliary stream the routed kernel's shared launches slowed the step (0015 lost), while the
    unfused layer's shared expert through the split-K GEMM cost the routed GEMMs ~24 us per
    step at 4 tokens. FP8 128 x 128 blocks only (DeepSeek-V3's case): anything else runs the
    series' method. Not bit-identical to it (another accumulation order, the routing weight
    applied in bf16).

    Rejected (sef13, H100, twenty-first session): its numerics pass ``moe_layer.py check`` (the
    fused layer's error against fp32 equals the unfused one's at 1, 7 and 64 tokens), but in the
    layer's CUDA-graph replay it is slower than the series' one launch at every decode size
    (``moe_layer.py shared-stream`` with this in place: 52.4 against 49.7 us at 1 token, 92.5
    against 91.8 at 4, 206.0 against 196.6 at 16; raw/layer_shared_stream_proto_split_k_h100.json).
    Kept as the replace= option's worked example and the record of what was measured."""
    from vllm.model_executor.kernels.linear.scaled_mm.split_k import block_fp8_split_k_mm
    from vllm.model_executor.layers.fused_moe.experts.triton_moe import TritonExperts

    if not (
        self.quant_config.use_fp8_w8a8
        and self.block_shape == [128, 128]
        and fused_silu_quant
        and hidden_states.element_size() == 1
        and a1q_scale is not None
    ):
        return shared_expert_split_k.replaced(
            self, stream, hidden_states, a1q_scale, w1, w2, topk_weights, top_k_num, config,
            down_config, compute_type, activation, a2_scale, w13_split_k, fused_silu_quant,
            cache_dtype, cache2_dim, out,
        )  # fmt: skip
    shared = self.moe_config.num_experts  # the first copy of the shared expert
    m = hidden_states.size(0)
    if self._fused_shared_events is None:
        self._fused_shared_events = (torch.cuda.Event(), torch.cuda.Event())
    start, done = self._fused_shared_events
    start.record()
    with torch.cuda.stream(stream):
        start.wait()
        up = block_fp8_split_k_mm(
            hidden_states, w1[shared], a1q_scale, self.w1_scale[shared], cache_dtype
        )
        intermediate_cache2 = torch.empty((m, cache2_dim), device=up.device, dtype=cache_dtype)
        a2q, a2q_scale = TritonExperts._activation_and_quant(
            self,
            up.view(m, 1, -1),
            intermediate_cache2,
            activation,
            a2_scale,
            1,
            fused_silu_quant,
            launch_pdl=False,
        )
        down = block_fp8_split_k_mm(
            a2q.reshape(m, -1),
            w2[shared],
            a2q_scale.reshape(m, -1),
            self.w2_scale[shared],
            cache_dtype,
        )
        torch.mul(down, topk_weights[:, -1:], out=out.view(m, top_k_num, -1)[:, -1])
        done.record()
    return done


# The router's bf16 GEMM by benchmarks/router_gemm.py's split-K prototype, as a custom op (the
# model's forward is traced by torch.compile; the choice depends on the token count).
ROUTER_MAX_TOKENS = 16
# BLOCK_N/SPLITS[/pdl] of the split-K prototype; an e2e variant sets it with
# set=benchmarks.prototypes.ROUTER_SPLIT_K="16/8/pdl".
ROUTER_SPLIT_K = "32/8"


def _router_config() -> tuple[int, int, bool]:
    """(BLOCK_N, SPLIT_K, PDL) from ROUTER_SPLIT_K."""
    parts = ROUTER_SPLIT_K.split("/")
    try:
        block_n, splits = int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        block_n = splits = 0
    if not (block_n and splits) or len(parts) > 3 or (len(parts) == 3 and parts[2] != "pdl"):
        raise ValueError(
            f"benchmarks.prototypes.ROUTER_SPLIT_K={ROUTER_SPLIT_K!r}: need BLOCK_N/SPLITS[/pdl]"
        )
    return block_n, splits, len(parts) == 3


@torch.library.custom_op("sef_prototypes::router_split_k", mutates_args=())
def router_split_k(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T in bf16: the split-K prototype up to ROUTER_MAX_TOKENS tokens, F.linear
    above."""
    if x.size(0) > ROUTER_MAX_TOKENS:
        return torch.nn.functional.linear(x, weight)
    from benchmarks.router_gemm import split_k_mm

    block_n, splits, pdl = _router_config()
    return split_k_mm(x, weight, block_n, splits, pdl=pdl)


@router_split_k.register_fake
def _(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.size(0), weight.size(0)))


def gate_linear_split_k(self, x):
    """GateLinear.forward where the gate runs F.linear in bf16 (DeepSeek-V3: no
    ``moe_router_dtype``, so no ``out_dtype``; no bias, an unquantized bf16 weight, CUDA) with
    the GEMM by ``router_split_k`` (bf16 logits, not bit-identical to cuBLAS's: another
    summation order); anything else runs the replaced method. For an engine A/B of the
    router GEMM (benchmarks/router_gemm.py measures the kernels):
    ``replace=vllm.model_executor.layers.fused_moe.router.gate_linear:GateLinear.forward=
    benchmarks.prototypes:gate_linear_split_k`` with ``set=benchmarks.prototypes.ROUTER_SPLIT_K=
    "32/8[/pdl]"``."""
    if not (
        x.is_cuda
        and x.dtype == torch.bfloat16
        and self.out_dtype is None
        and self.bias is None
        and getattr(self, "is_unquantized", False)
        and self.weight.dtype == torch.bfloat16
    ):
        return gate_linear_split_k.replaced(self, x)
    output = torch.ops.sef_prototypes.router_split_k(x, self.weight)
    return output if not self.return_bias else (output, None)


# The fused shared expert's weights prefetched into L2 on the auxiliary stream while the router's
# GEMM and routing run (docs/benchmarks.md, "sef17 as built against stock", next session's item
# 5): up to this many tokens (one: at 4 tokens the shared expert is 1 of ~30 experts read).
PREFETCH_SHARED_MAX_TOKENS = 1
# 128-byte lines per program of the prefetch kernel.
PREFETCH_LINES = 256


@triton.jit
def _prefetch_bytes_kernel(ptr, nbytes, LINES: tl.constexpr):
    """Prefetch bytes [0, nbytes) at ``ptr`` (uint8) into L2, LINES 128-byte lines a program."""
    lines = tl.program_id(0) * LINES + tl.arange(0, LINES)
    prefetch_l2(ptr + tl.minimum(lines.to(tl.int64) * 128, nbytes - 1))


def shared_expert_slices(layer, moe_config) -> list[torch.Tensor]:
    """The fused shared expert's weights in ``layer`` (vLLM's RoutedExperts): gate-up, down and
    their block scales, the slot after the ``num_experts`` routed ones; [] unless the layer has
    exactly one fused copy (VLLM_SHARED_EXPERT_FUSION_REPLICAS=1)."""
    if moe_config.num_fused_shared_experts != 1:
        return []
    slots = moe_config.num_experts + 1
    names = ("w13_weight", "w2_weight", "w13_weight_scale_inv", "w2_weight_scale_inv")
    tensors = [getattr(layer, name, None) for name in names]
    if not all(t is None or (t.dim() >= 1 and t.size(0) == slots) for t in tensors[:2]):
        return []
    return [
        t[moe_config.num_experts]
        for t in tensors
        if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.size(0) == slots
    ]


def _prefetch_targets(runner, hidden_states: torch.Tensor) -> list[torch.Tensor]:
    """What runner_forward_prefetch_shared prefetches for this call ([]: nothing)."""
    if (
        hidden_states.size(0) > PREFETCH_SHARED_MAX_TOKENS
        or not hidden_states.is_cuda
        or torch.compiler.is_compiling()
    ):
        return []
    return shared_expert_slices(runner.routed_experts, runner.moe_config)


def runner_forward_prefetch_shared(
    self, hidden_states, router_logits, shared_experts_input, input_ids=None
):
    """MoERunner._forward_impl with the fused shared expert's weights (one copy, 5.5 MB for
    DeepSeek-V3 at per-rank TP8 FP8) prefetched into L2 by a kernel on the auxiliary stream,
    forked before the router's GEMM (where stock vLLM forks its separate shared expert) and
    joined after the layer, up to PREFETCH_SHARED_MAX_TOKENS tokens. The layer's arithmetic is
    unchanged (bit-identical); only where its shared-expert reads come from. For an engine A/B:
    ``replace=vllm.model_executor.layers.fused_moe.runner.moe_runner:MoERunner._forward_impl=
    benchmarks.prototypes:runner_forward_prefetch_shared``; at layer level ``moe_layer.py
    prefetch-shared``. Rejected: the fused layer 9% slower at one token with L2 emptied per
    replay (H100, docs/benchmarks.md "The layer with L2 emptied")."""
    replaced = runner_forward_prefetch_shared.replaced
    targets = _prefetch_targets(self, hidden_states)
    if not targets:
        return replaced(self, hidden_states, router_logits, shared_experts_input, input_ids)
    from vllm.compilation.breakable_cudagraph import BreakableCUDAGraphCapture
    from vllm.utils.torch_utils import aux_stream

    stream = aux_stream()
    if stream is None or BreakableCUDAGraphCapture.is_active():
        return replaced(self, hidden_states, router_logits, shared_experts_input, input_ids)
    events = self.__dict__.get("_sef_prefetch_events")
    if events is None:
        events = self._sef_prefetch_events = (torch.cuda.Event(), torch.cuda.Event())
    start, done = events
    start.record()
    with torch.cuda.stream(stream):
        start.wait()
        for t in targets:
            data = t.reshape(-1).view(torch.uint8)
            grid = (triton.cdiv(data.numel(), 128 * PREFETCH_LINES),)
            _prefetch_bytes_kernel[grid](data, data.numel(), LINES=PREFETCH_LINES)
        done.record()
    try:
        return replaced(self, hidden_states, router_logits, shared_experts_input, input_ids)
    finally:
        done.wait()  # the current stream joins the prefetch before the graph's next node
