"""The committed benchmark results and the CPU-side logic of the GPU benchmark scripts.

benchmarks/results/summary.json must be exactly what benchmarks/summarize.py computes from the raw
files beside it, in the row format issue 4 asks for; tune_moe.py's completion of a tuned config
file must keep the tuned sizes and fill larger ones as documented; benchmarks/routing.py's variants
agree on a CPU (the Triton kernel interpreted), and its agreement check catches what it must.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from benchmarks import routing, summarize, tune_moe

ROW_KEYS = {"scenario", "dtype", "tp_equiv", "batch", "metric", "stock", "fused", "ratio"}
ROW_KEYS |= {"gpu", "vllm", "date"}


def test_summary_is_computed_from_the_raw_results() -> None:
    committed = json.loads((ROOT / "benchmarks" / "results" / "summary.json").read_text())
    assert committed == summarize.summary_rows()


def test_summary_rows_have_the_agreed_format() -> None:
    rows = json.loads((ROOT / "benchmarks" / "results" / "summary.json").read_text())
    for row in rows:
        assert set(row) >= ROW_KEYS, row
        assert row["metric"] in {"itl_ms", "ttft_ms", "moe_us", "tok_s", "step_us", "kernel_us"}
        assert row["ratio"] == pytest.approx(row["fused"] / row["stock"], abs=2e-3)
        if row["scenario"].startswith("e2e") or row["scenario"] == "throughput":
            assert row["routing"] in {"dummy", "realistic"}, row
        if row.get("routing") == "realistic" and row["scenario"].startswith("e2e"):
            # Decode rows carry the routing probe's distinct experts; prefill-step rows (no
            # decode step) their prompt length instead.
            if "prompt_tokens" in row:
                assert row["prompt_tokens"] > 0, row
            else:
                assert row["distinct_experts"] >= min(8 * row["batch"], 8), row
    scenarios = {(r["scenario"], r["dtype"], r["tp_equiv"]) for r in rows}
    # The layer at TP8 and TP1 shapes in both dtypes; end to end at TP8 rank shapes and TP=2.
    for dtype in ("bf16", "fp8"):
        for tp in (8, 1):
            assert ("moe_layer", dtype, tp) in scenarios
    assert ("e2e_dsv3_tp8_rank_fp8", "fp8", 8) in scenarios
    assert ("e2e_dsv3_tp2_full_16_layers_fp8_stock_tuned", "fp8", 2) in scenarios
    # The one-mechanism series with realistic routing: ITL and TTFT, and both throughput
    # workloads (tokens/s).
    assert ("e2e_dsv3_tp8_rank_fp8_realistic", "fp8", 8) in scenarios
    # Split-K (patch 0006): the layer with fusion off and on, and end to end.
    assert ("moe_layer_split_k", "fp8", 8) in scenarios
    assert ("e2e_dsv3_tp8_rank_fp8_realistic_split_k", "fp8", 8) in scenarios
    # sef3 as shipped: stock, fusion off and fused end to end; the rejected in-GEMM
    # quantization at layer level.
    assert ("e2e_dsv3_tp8_rank_fp8_realistic_sef3", "fp8", 8) in scenarios
    # sef14's patches: 0017 at layer level (both layers), 0018 per kernel shape; both end to end.
    for scenario in (
        "moe_layer_h100_configs_fused",
        "moe_layer_h100_configs_unfused",
        "norm_quant_input_norm_residual",
        "norm_quant_q_a_norm",
        "e2e_dsv3_tp8_rank_fp8_realistic_sef14proto_h100_l30",
        "throughput_sef14proto_h100_l30",
        # sef14 as built: the patch's kernel per shape to 512 tokens; the engine on defaults.
        "norm_quant_sef14_input_norm_residual",
        "norm_quant_sef14_q_a_norm",
        "e2e_dsv3_tp8_rank_fp8_realistic_sef14_h100_l30",
        "throughput_sef14_h100_l30",
    ):
        assert (scenario, "fp8", 8) in scenarios
    assert ("moe_layer_input_quant_rejected", "fp8", 8) in scenarios
    # sef5: patch 0008's fill at layer level, both layers; throughput, stock and fused.
    assert ("moe_layer_naive_fill_off", "fp8", 8) in scenarios
    assert ("moe_layer_naive_fill_fused", "fp8", 8) in scenarios
    assert ("throughput_sef5", "fp8", 8) in scenarios
    # sef6: patch 0009 (PDL) at layer level, both layers, as shipped and the rejected all-sizes
    # version; end to end and throughput.
    for variant in ("off", "fused"):
        assert (f"moe_layer_pdl_{variant}", "fp8", 8) in scenarios
        assert (f"moe_layer_pdl_all_sizes_rejected_{variant}", "fp8", 8) in scenarios
    assert ("e2e_dsv3_tp8_rank_fp8_realistic_sef6", "fp8", 8) in scenarios
    assert ("throughput_sef6", "fp8", 8) in scenarios
    # sef7: patch 0010 (the fused shared entries on the aux stream) at layer level, both
    # layers; end to end and throughput (fused, stock, fused, stock on one lease).
    for variant in ("off", "fused"):
        assert (f"moe_layer_shared_stream_{variant}", "fp8", 8) in scenarios
    assert ("e2e_dsv3_tp8_rank_fp8_realistic_sef7", "fp8", 8) in scenarios
    assert ("throughput_sef7", "fp8", 8) in scenarios
    # sef8: patches 0011-0012 (down-projection tiles) at layer level, both layers, and the
    # gate-up re-tune of the fused layer; end to end (ITL and TTFT).
    for variant in ("off", "fused"):
        assert (f"moe_layer_tiles_w2_{variant}", "fp8", 8) in scenarios
    assert ("moe_layer_tiles_w13_fused", "fp8", 8) in scenarios
    assert ("e2e_dsv3_tp8_rank_fp8_realistic_sef8", "fp8", 8) in scenarios
    # sef10 A B A B, with the engine's GPU busy time and span per decode step.
    assert ("e2e_dsv3_tp8_rank_fp8_realistic_sef10_abab", "fp8", 8) in scenarios
    assert ("e2e_step_sef10_busy", "fp8", 8) in scenarios
    for row in rows:
        if "off" in row:
            assert row["off_ratio"] == pytest.approx(row["off"] / row["stock"], abs=2e-3), row
    workloads = {r["workload"] for r in rows if r["scenario"] == "throughput"}
    assert workloads == {"decode_heavy", "mixed"}


FP8 = (257, 1024, 7168, 9, "fp8_w8a8", [128, 128])
BF16 = (257, 1024, 7168, 9, None, None)


def test_untuned_sizes_keep_the_routed_only_files_choice() -> None:
    tuned = {m: {"BLOCK_SIZE_M": 16} for m in (1, 2, 512)}
    seeded = {256: {"BLOCK_SIZE_M": 32}, 1024: {"BLOCK_SIZE_M": 64}, 4096: {"BLOCK_SIZE_M": 128}}
    out = tune_moe.with_untuned_sizes(tuned, seeded, FP8)
    assert list(out) == ["1", "2", "512", "1024", "4096"]
    assert out["512"] == {"BLOCK_SIZE_M": 16}
    assert out["4096"] == {"BLOCK_SIZE_M": 128}


def test_a_tuned_candidate_leaves_the_down_gemm_its_own_tile(monkeypatch) -> None:
    """tune_moe times a candidate as the engine would run its file entry: the
    gate-up GEMM takes the candidate, the down GEMM the `_down.json` tile over
    it (patches 0011-0012). vLLM's override_config gives both the candidate."""
    from vllm.model_executor.layers.fused_moe import fused_moe, override_config

    files = {
        False: {1: {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 32, "num_warps": 4, "num_stages": 3}},
        True: {1: {"BLOCK_SIZE_N": 128, "num_warps": 8, "num_stages": 2}},
    }
    monkeypatch.setattr(fused_moe, "get_moe_configs", lambda *a, down_moe=False: files[down_moe])
    candidate = {"BLOCK_SIZE_M": 16, "BLOCK_SIZE_N": 64, "BLOCK_SIZE_K": 128}
    candidate |= {"GROUP_SIZE_M": 1, "num_warps": 4, "num_stages": 5}
    w1, w2 = (257, 512, 7168), (257, 7168, 256)

    def lookups():
        config = fused_moe.try_get_optimal_moe_config(w1, w2, 9, "fp8_w8a8", 1, [128, 128])
        down = fused_moe.try_get_optimal_moe_down_config(config, w2, "fp8_w8a8", 1, [128, 128])
        return config, down

    with tune_moe.gate_up_config(candidate):
        config, down = lookups()
    assert config == candidate
    assert down == candidate | files[True][1]
    assert lookups()[0] == files[False][1]  # the file's entry again after the block
    with override_config(candidate):
        assert lookups() == (candidate, candidate)


@pytest.mark.parametrize("shape", [FP8, BF16], ids=["fp8", "bf16"])
def test_untuned_sizes_without_a_seed_get_vllms_default_tiles(shape) -> None:
    from vllm.model_executor.layers.fused_moe.fused_moe import get_default_config

    tuned = {m: {"BLOCK_SIZE_M": 16} for m in tune_moe.TOKENS}
    out = tune_moe.with_untuned_sizes(tuned, {}, shape)
    assert [int(m) for m in out] == tune_moe.TOKENS + tune_moe.LARGER
    experts, n, hidden, top_k, dtype, block = shape
    for m in tune_moe.LARGER:
        default = get_default_config(m, experts, n, hidden, top_k, dtype, block)
        assert "SPLIT_K" not in out[str(m)]
        assert out[str(m)] == {k: v for k, v in default.items() if k != "SPLIT_K"}


ENTRY = {
    "BLOCK_SIZE_M": 16,
    "BLOCK_SIZE_N": 64,
    "BLOCK_SIZE_K": 128,
    "GROUP_SIZE_M": 1,
    "num_warps": 4,
    "num_stages": 4,
    "SPLIT_K": 2,
}


def test_tile_sweep_changes_one_gemm_only() -> None:
    """moe_layer.py tiles: a candidate for one GEMM leaves the other GEMM's tile as the
    tuned files have it, and the `_down.json` entry is set only where the down tile differs
    from the entry's."""
    from vllm.model_executor.layers.fused_moe.fused_moe import _check_down_config

    from benchmarks import moe_layer

    up = {"BLOCK_SIZE_N": 64, "num_warps": 4, "num_stages": 4, "SPLIT_K": 2}
    assert moe_layer.tile_of(ENTRY, {}, "w13") == up
    assert moe_layer.tile_of(ENTRY, {}, "w2") == {
        "BLOCK_SIZE_N": 64,
        "num_warps": 4,
        "num_stages": 4,
    }
    # The entry's own tile: no down entry.
    assert moe_layer.with_tile(ENTRY, {}, "w2", moe_layer.tile_of(ENTRY, {}, "w2")) == (ENTRY, {})
    tile = {"BLOCK_SIZE_N": 256, "num_warps": 4, "num_stages": 2}
    entry, down = moe_layer.with_tile(ENTRY, {}, "w2", tile)
    assert (entry, down) == (ENTRY, tile)
    assert moe_layer.tile_of(entry, down, "w2") == tile
    assert moe_layer.tile_of(entry, down, "w13") == up
    # A gate-up candidate keeps the down GEMM's tile, whether it had one of its own or not.
    for start in ((ENTRY, {}), (entry, down)):
        new_up = {"BLOCK_SIZE_N": 128, "num_warps": 4, "num_stages": 6, "SPLIT_K": 1}
        changed = moe_layer.with_tile(*start, "w13", new_up)
        assert moe_layer.tile_of(*changed, "w13") == new_up
        assert moe_layer.tile_of(*changed, "w2") == moe_layer.tile_of(*start, "w2")
        assert "SPLIT_K" not in changed[0]  # SPLIT_K 1 is the kernel's default
    # Every candidate of the grids is a down entry vLLM accepts.
    for gemm, grid in moe_layer.TILE_GRID.items():
        for tile in grid:
            _check_down_config(moe_layer.with_tile(ENTRY, {}, gemm, tile)[1], "sweep")


def test_assignment_mode_replaces_the_function_tritonexperts_calls() -> None:
    """moe_layer.py assignment swaps the block assignment TritonExperts asks for: the name it
    patches is the one triton_moe calls, with the parameters its stand-in takes."""
    import inspect

    from vllm.model_executor.layers.fused_moe import fused_moe
    from vllm.model_executor.layers.fused_moe.experts import triton_moe

    from benchmarks import moe_layer

    assert triton_moe._prepare_expert_assignment is fused_moe._prepare_expert_assignment
    assert "_prepare_expert_assignment(" in inspect.getsource(triton_moe.TritonExperts.apply)
    params = inspect.signature(fused_moe._prepare_expert_assignment).parameters
    assert list(params)[:6] == [
        "topk_ids",
        "config",
        "num_tokens",
        "top_k_num",
        "global_num_experts",
        "expert_map",
    ]
    assert params["ignore_invalid_experts"].kind is inspect.Parameter.KEYWORD_ONLY
    assert "assignment" in inspect.getsource(moe_layer.main)


def test_quantize_align_mode_turns_off_what_tritonexperts_asks() -> None:
    """moe_layer.py quantize-align's "separate" setting answers the question apply() and
    expects_unquantized_inputs ask: TritonExperts then quantizes nothing itself."""
    import inspect

    from vllm.model_executor.layers.fused_moe.experts import triton_moe

    from benchmarks import moe_layer

    apply_src = inspect.getsource(triton_moe.TritonExperts.apply)
    assert "self._quantizes_block_fp8_input()" in apply_src
    assert "quantize_and_align_block_size(" in apply_src
    assert "_quantizes_block_fp8_input" in inspect.getsource(
        triton_moe.TritonExperts.expects_unquantized_inputs.fget
    )
    assert "quantize-align" in inspect.getsource(moe_layer.main)


def test_moe_sum_mode_turns_off_what_tritonexperts_asks() -> None:
    """moe_layer.py moe-sum's "ops_moe_sum" setting sets the limit TritonExperts.moe_sum reads
    (through _sums_with_triton: MOE_SUM_TRITON_MAX_TOKENS, imported into triton_moe's namespace)
    to 0 tokens."""
    import inspect

    from vllm.model_executor.layers.fused_moe.experts import triton_moe

    from benchmarks import moe_layer

    moe_sum_src = inspect.getsource(triton_moe.TritonExperts.moe_sum)
    assert "self._sums_with_triton(input, output)" in moe_sum_src
    assert "moe_sum_triton(" in moe_sum_src
    limit_src = inspect.getsource(triton_moe.TritonExperts._sums_with_triton)
    assert "<= MOE_SUM_TRITON_MAX_TOKENS" in limit_src
    assert isinstance(triton_moe.MOE_SUM_TRITON_MAX_TOKENS, int)
    assert '"MOE_SUM_TRITON_MAX_TOKENS", 0' in inspect.getsource(moe_layer.moe_sum)
    assert "moe-sum" in inspect.getsource(moe_layer.main)


def test_routing_variants_agree_on_cpu() -> None:
    """Every variant benchmarks/routing.py times on a GPU routes as vLLM's grouped top-k + the
    shared entries' append does (the Triton kernel at 1-8 warps in Triton's interpreter), two
    copies of the shared expert."""
    cmd = ["-m", "benchmarks.routing", "--device", "cpu", "--tokens", "1", "3", "--replicas", "2"]
    proc = subprocess.run(
        [sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "all variants agree (24 rows)" in proc.stdout, proc.stdout


def test_routing_agreement_catches_differences() -> None:
    weights = torch.tensor([[0.5, 0.3, 1.0], [0.6, 0.2, 1.0]])
    ids = torch.tensor([[4, 1, 8], [2, 3, 9]], dtype=torch.int32)
    assert routing.agree((weights, ids), (weights, ids)) is None
    # The same experts in another order, weights with them: equal.
    assert routing.agree((weights[:, [1, 0, 2]], ids[:, [1, 0, 2]]), (weights, ids)) is None
    other = ids.clone()
    other[1, 2] = 8  # the other copy of the shared expert
    assert routing.agree((weights, other), (weights, ids)) == "experts differ in 1 token(s)"
    assert "weights differ by" in routing.agree((weights + 1e-3, ids), (weights, ids))
    assert "shape" in routing.agree((weights[:, :2], ids[:, :2]), (weights, ids))


def _kernel(name: str, ts: float, dur: float, stream: int = 7) -> dict:
    return {
        "ph": "X",
        "cat": "kernel",
        "name": name,
        "ts": ts,
        "dur": dur,
        "args": {"stream": stream},
    }


def test_engine_step_profile_counts_steps_by_the_routing_kernel() -> None:
    from benchmarks import e2e

    # Two decode steps of a model with two MoE layers: per layer a routing launch and a GEMM,
    # the shared expert's GEMM beside it on another stream; a CPU event that must not count.
    events, t = (
        [{"ph": "X", "cat": "cuda_runtime", "name": "cudaGraphLaunch", "ts": 0, "dur": 9}],
        0.0,
    )
    for _step in range(2):
        for _layer in range(2):
            events.append(_kernel("void vllm::moe::grouped_topk_kernel", t, 2.0))
            events.append(_kernel("fused_moe_kernel", t + 2.0, 10.0))
            events.append(_kernel("shared_gemm", t + 3.0, 4.0, stream=9))
            t += 20.0  # 8 us idle per layer
    table = e2e.step_profile(events, moe_layers=2)
    assert table["steps"] == 2
    assert table["kernel_sum_us"] == pytest.approx(2 * (2 + 10 + 4))
    assert table["busy_us"] == pytest.approx(2 * 12)  # the shared GEMM overlaps
    assert table["span_us"] == pytest.approx((20 * 3 + 12) / 2)
    assert table["launches"] == 6
    assert table["streams_us"] == {"7": 24.0, "9": 8.0}
    # By busy share: the shared GEMM beside the routed one adds nothing to the busy time.
    assert [(k["kernel"], k["busy_us"]) for k in table["kernels"]] == [
        ("fused_moe_kernel", 20.0),
        ("void vllm::moe::grouped_topk_kernel", 4.0),
        ("shared_gemm", 0.0),
    ]
    assert table["kernels"][0]["us"] == 20.0
    assert table["kernels"][0]["launches"] == 2.0
    assert table["kernels"][2]["us"] == 8.0
    # A programmatic dependent starts while its primary runs and waits: its duration counts the
    # wait, its busy share only the work after the primary's end.
    pdl = [
        _kernel("grouped_topk", 0.0, 2.0),
        _kernel("gemm", 2.0, 10.0),
        _kernel("activation", 3.0, 10.0),  # waits 9 us, works 1 us
    ]
    shares = {k["kernel"]: k["busy_us"] for k in e2e.step_profile(pdl, 1)["kernels"]}
    assert shares == {"gemm": 10.0, "grouped_topk": 2.0, "activation": 1.0}
    # A window that cut a step shows as a fraction; less than a step is an error.
    assert e2e.step_profile(events[:-3], moe_layers=2)["steps"] == 1.5
    with pytest.raises(ValueError, match="routing launches"):
        e2e.step_profile(events[:4], moe_layers=2)


def test_prefill_profile_emits_the_first_step_of_the_ttft_requests(monkeypatch, capsys) -> None:
    from benchmarks import e2e

    calls = []
    prefill = [
        _kernel("void vllm::moe::grouped_topk_kernel", 0.0, 5.0),
        _kernel("fused_moe_kernel", 5.0, 40.0),
        _kernel("void vllm::moe::grouped_topk_kernel", 60.0, 5.0),
        _kernel("fused_moe_kernel", 65.0, 40.0),
    ]

    class Llm:
        def start_profile(self, **window):
            calls.append(("start", window))

        def stop_profile(self):
            calls.append(("stop",))

    def generate(llm, requests, tokens):
        calls.append(("generate", len(requests), len(requests[0]["prompt_token_ids"]), tokens))
        return 0.25, []

    monkeypatch.setattr(e2e, "generate", generate)
    monkeypatch.setattr(e2e, "read_trace", lambda folder, since: prefill)
    args = argparse.Namespace(
        profile_dir="/nonexistent", batches=[4], ttft_prompt=512, vocab=1000, tiny=False
    )
    e2e.profile_prefills(args, Llm(), {"variant": "off"}, moe_layers=2)
    # A warm-up at the shape, then the profiled generate of the same requests, one engine step.
    assert calls == [
        ("generate", 4, 512, 1),
        ("start", {"delay_iterations": 0, "max_iterations": 1}),
        ("generate", 4, 512, 1),
        ("stop",),
    ]
    (line,) = capsys.readouterr().out.splitlines()
    row = json.loads(line.removeprefix("RESULT "))
    assert row["scenario"] == "e2e_prefill_profile"
    assert (row["variant"], row["batch"], row["prompt_tokens"]) == ("off", 4, 512)
    assert row["wall_ms"] == 250.0
    assert (row["steps"], row["busy_us"], row["span_us"]) == (1, 90.0, 105.0)


def test_ttft_times_split_the_wall_time_at_the_engine_core(monkeypatch) -> None:
    from benchmarks import e2e

    def output(scheduled: float, first_token: float):
        stats = argparse.Namespace(scheduled_ts=scheduled, first_token_ts=first_token)
        return argparse.Namespace(metrics=stats)

    # Two requests scheduled 1 ms apart, first tokens 30 and 32 ms after the first one's
    # scheduling (the engine core's monotonic clock), in a generate of 50 ms wall time.
    outputs = [output(100.001, 100.030), output(100.000, 100.032)]
    calls = []

    def generate(llm, requests, tokens):
        calls.append((len(requests), tokens))
        return 0.05, outputs

    monkeypatch.setattr(e2e, "generate", generate)
    wall, engine = e2e.ttft_times(None, [{"prompt_token_ids": [2]}] * 2)
    assert calls == [(2, 1)]
    assert wall == pytest.approx(50.0)
    assert engine == pytest.approx(32.0)


def test_e2e_refuses_an_unknown_workload() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.e2e", "--workloads", "itl", "profiles"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "--workloads" in result.stderr
    assert "profiles" in result.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--batches", "1", "4", "16", "--capture-sizes", "1", "16"], "lacks the --batches [4]"),
        (
            ["--batches", "1", "--capture-sizes", "1", "--workloads", "itl", "throughput"],
            "keep the default",
        ),
    ],
)
def test_e2e_refuses_capture_sizes_that_would_change_what_it_measures(argv, message) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.e2e", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "--capture-sizes" in result.stderr
    assert message in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--engine", '{"max_num_batched_tokens": 8192}'],
        ["--model", "/tmp/m", "--round", "1"],
    ],
)
def test_e2e_refuses_the_workers_arguments(argv) -> None:
    """Given to the script itself they would be dropped: an engine argument must go in a
    variant (engine=), where every process of that variant gets it."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.e2e", "--batches", "1", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert argv[0] in result.stderr
    assert "engine=max_num_batched_tokens=8192" in result.stderr


def test_variant_set_options_parse_into_module_constants() -> None:
    from benchmarks import e2e

    variant = e2e.parse_variant("aux,replicas=1,set=a.b.LIMIT=1,set=a.c.NAME='x'")
    assert variant == {
        "name": "aux",
        "replicas": "1",
        "set": [["a.b", "LIMIT", 1], ["a.c", "NAME", "x"]],
    }
    for bad in ("v,set=LIMIT=1", "v,set=a.LIMIT=", "v,set=a.LIMIT=one", "v,sets=a.B=1"):
        with pytest.raises(SystemExit, match=r"set=MODULE\.NAME=VALUE"):
            e2e.parse_variant(bad)


def test_variants_that_set_or_replace_compile_into_a_cache_of_their_own(monkeypatch) -> None:
    from benchmarks import e2e

    monkeypatch.setenv("VLLM_CACHE_ROOT", "/cache")
    module = "vllm.model_executor.layers.fused_moe.experts.triton_moe"
    plain = e2e.worker_env(e2e.parse_variant("off"))
    assert plain["VLLM_CACHE_ROOT"] == "/cache"  # vLLM's key covers what plain variants change
    one, two, again = (
        e2e.worker_env(e2e.parse_variant(f"v,set={module}.FUSED_SHARED_STREAM_MIN_TOKENS={n}"))
        for n in (1, 16, 1)
    )
    assert one["VLLM_CACHE_ROOT"].startswith("/cache/sef-variants/v-")
    assert one["VLLM_CACHE_ROOT"] != two["VLLM_CACHE_ROOT"]
    assert one["VLLM_CACHE_ROOT"] == again["VLLM_CACHE_ROOT"]  # later rounds reuse it
    replaced = e2e.parse_variant(
        f"p,replace={module}:TritonExperts._apply_fused_shared_experts"
        "=benchmarks.prototypes:shared_expert_split_k"
    )
    assert e2e.worker_env(replaced)["VLLM_CACHE_ROOT"].startswith("/cache/sef-variants/p-")


def test_engine_arguments_add_to_the_scripts_own_dicts() -> None:
    from benchmarks import e2e

    variant = e2e.parse_variant(
        "v,engine=compilation_config={'pass_config':{'fuse_norm_quant':False}}"
    )
    kwargs = {"compilation_config": {"cudagraph_capture_sizes": [1, 4]}, "seed": 0}
    merged = e2e.with_engine_arguments(kwargs, variant["engine"])
    assert merged == {
        "compilation_config": {
            "cudagraph_capture_sizes": [1, 4],
            "pass_config": {"fuse_norm_quant": False},
        },
        "seed": 0,
    }
    assert kwargs["compilation_config"] == {"cudagraph_capture_sizes": [1, 4]}  # not modified
    replaced = {"compilation_config": {"cudagraph_capture_sizes": [8]}, "seed": 3}
    assert e2e.with_engine_arguments(kwargs, replaced) == {
        "compilation_config": {"cudagraph_capture_sizes": [8]},
        "seed": 3,
    }


def test_variant_engine_options_parse_into_engine_arguments() -> None:
    from benchmarks import e2e

    variant = e2e.parse_variant("m,site=/s,engine=linear_backend=marlin,engine=max_num_seqs=64")
    assert variant == {
        "name": "m",
        "site": "/s",
        "engine": {"linear_backend": "marlin", "max_num_seqs": 64},
    }
    assert e2e.parse_variant("q,engine=linear_backend='triton'")["engine"] == {
        "linear_backend": "triton"
    }
    for bad in ("v,engine=marlin", "v,engine=linear_backend=", "v,engine=a-b=1"):
        with pytest.raises(SystemExit, match=r"engine=ARG=VALUE"):
            e2e.parse_variant(bad)


def test_variant_env_options_parse_into_vllm_settings() -> None:
    from benchmarks import e2e

    variant = e2e.parse_variant("d,replicas=1,env=VLLM_BLOCK_FP8_SPLIT_K_MAX_TOKENS=16")
    assert variant == {
        "name": "d",
        "replicas": "1",
        "env": {"VLLM_BLOCK_FP8_SPLIT_K_MAX_TOKENS": "16"},
    }
    for bad in ("v,env=PATH=/x", "v,env=VLLM_X=", "v,env=VLLM-X=1"):
        with pytest.raises(SystemExit, match=r"env=NAME=VALUE"):
            e2e.parse_variant(bad)


SET_CHILD = """
import json, multiprocessing as mp, sys

def read(q):
    import colorsys
    q.put(colorsys.ONE_THIRD)

if __name__ == "__main__":
    import colorsys
    ctx = mp.get_context("spawn")  # a fresh interpreter, as vLLM's engine process can be
    q = ctx.Queue()
    p = ctx.Process(target=read, args=(q,))
    p.start()
    print(json.dumps([colorsys.ONE_THIRD, q.get(timeout=60)]))
    p.join()
"""


def _site_env(**settings: str) -> dict[str, str]:
    """A child's environment with benchmarks/constants_site on its path and ``settings``."""
    from benchmarks import e2e

    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(e2e.CONSTANTS_SITE), **settings}


def _run_child(tmp_path, source: str, env: dict[str, str]) -> str:
    """The stdout of ``source`` run as a script with ``env``; it must succeed."""
    script = tmp_path / "child.py"
    script.write_text(source)
    return subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, check=True
    ).stdout


def test_constants_site_sets_the_constant_in_every_process(tmp_path) -> None:
    from benchmarks import e2e

    env = _site_env(SEF_SET_CONSTANTS=json.dumps([["colorsys", "ONE_THIRD", 0.5]]))
    out = _run_child(tmp_path, SET_CHILD, env)
    assert json.loads(out) == [0.5, 0.5]
    # What the worker checks in the engine: the values where they are read.
    import colorsys

    from benchmarks import in_engine

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEF_SET_CONSTANTS", json.dumps([["colorsys", "ONE_THIRD", 0.5]]))
        assert in_engine.engine_constants(None) == {"colorsys.ONE_THIRD": colorsys.ONE_THIRD}
        assert e2e.engine_constants is in_engine.engine_constants  # sent by reference
    # A name the module does not define is an error that names it.
    env["SEF_SET_CONSTANTS"] = json.dumps([["colorsys", "ONE_THIRDS", 0.5]])
    failed = subprocess.run(
        [sys.executable, "-c", "import colorsys"], env=env, capture_output=True, text=True
    )
    assert failed.returncode != 0
    assert "colorsys defines no ONE_THIRDS" in failed.stderr


def test_variant_replace_options_parse_into_prototypes() -> None:
    from benchmarks import e2e

    target = "vllm.x.triton_moe:TritonExperts._apply"
    variant = e2e.parse_variant(f"p,replicas=1,replace={target}=benchmarks.prototypes:proto")
    assert variant["replace"] == [
        ["vllm.x.triton_moe", "TritonExperts._apply", "benchmarks.prototypes:proto"]
    ]
    for bad in (
        f"v,replace={target}=os:getcwd",  # only the prototypes module
        "v,replace=vllm.x=benchmarks.prototypes:proto",  # no attribute path
        f"v,replace={target}=benchmarks.prototypes:",
        "v,replace=vllm.x:A-b=benchmarks.prototypes:proto",
    ):
        with pytest.raises(SystemExit, match=r"replace=MODULE:PATH="):
            e2e.parse_variant(bad)


REPLACE_CHILD = """
import json, multiprocessing as mp

def read(q):
    import colorsys
    q.put([colorsys.rgb_to_hsv.__name__, colorsys.rgb_to_hsv.replaced.__module__])

if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=read, args=(q,))
    p.start()
    import colorsys
    print(json.dumps([colorsys.rgb_to_hsv.__name__, q.get(timeout=60)]))
    p.join()
"""


def test_constants_site_replaces_a_function_in_every_process(tmp_path) -> None:
    from benchmarks import e2e, in_engine

    env = _site_env(SEF_REPLACE=json.dumps([["colorsys", "rgb_to_hsv", "json:dumps"]]))
    out = _run_child(tmp_path, REPLACE_CHILD, env)
    assert json.loads(out) == ["dumps", ["dumps", "colorsys"]]
    # What the worker checks in the engine: the function where the path leads.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEF_REPLACE", json.dumps([["json", "decoder.JSONDecoder.decode", "x:y"]]))
        assert in_engine.engine_replacements(None) == {
            "json:decoder.JSONDecoder.decode": "json.decoder:decode"
        }
        assert e2e.engine_replacements is in_engine.engine_replacements  # sent by reference
    # A path the module does not have is an error that names it.
    env["SEF_REPLACE"] = json.dumps([["colorsys", "rgb_to_hsl", "json:dumps"]])
    failed = subprocess.run(
        [sys.executable, "-c", "import colorsys"], env=env, capture_output=True, text=True
    )
    assert failed.returncode != 0
    assert "colorsys has no rgb_to_hsl to replace" in failed.stderr


def test_prototypes_take_the_arguments_of_the_methods_they_replace() -> None:
    """A prototype is called where the series calls the method, positionally."""
    import inspect

    from vllm.model_executor.layers.fused_moe.experts.triton_moe import TritonExperts
    from vllm.model_executor.layers.fused_moe.router.gate_linear import GateLinear
    from vllm.model_executor.layers.fused_moe.runner.moe_runner import MoERunner

    from benchmarks import prototypes

    for method, prototype in (
        (TritonExperts._apply_fused_shared_experts, prototypes.shared_expert_split_k),
        (GateLinear.forward, prototypes.gate_linear_split_k),
        (MoERunner._forward_impl, prototypes.runner_forward_prefetch_shared),
    ):
        series = inspect.signature(method).parameters
        assert list(inspect.signature(prototype).parameters) == list(series)


def test_router_prototype_reads_its_setting_and_keeps_other_gates() -> None:
    """benchmarks.prototypes.gate_linear_split_k: ROUTER_SPLIT_K parsed or refused by name, and
    a gate it does not handle (here: on CPU) runs the method it replaced."""
    from unittest import mock

    from benchmarks import prototypes

    assert prototypes._router_config() == (32, 8, False)
    with mock.patch.object(prototypes, "ROUTER_SPLIT_K", "16/4/pdl"):
        assert prototypes._router_config() == (16, 4, True)
    for bad in ("32", "a/8", "0/8", "32/8/x", "32/8/pdl/1"):
        with (
            mock.patch.object(prototypes, "ROUTER_SPLIT_K", bad),
            pytest.raises(ValueError, match="ROUTER_SPLIT_K"),
        ):
            prototypes._router_config()
    gate = types.SimpleNamespace(out_dtype=None, bias=None, is_unquantized=True)
    gate.weight = torch.randn(8, 16).bfloat16()
    with mock.patch.object(
        prototypes.gate_linear_split_k, "replaced", create=True, side_effect=lambda s, x: "kept"
    ):
        assert prototypes.gate_linear_split_k(gate, torch.randn(2, 16).bfloat16()) == "kept"
    # The op's fake (meta tensors): the logits' shape and dtype.
    x = torch.empty(3, 16, device="meta", dtype=torch.bfloat16)
    out = torch.ops.sef_prototypes.router_split_k(x, torch.empty_like(gate.weight, device="meta"))
    assert out.shape == (3, 8)
    assert out.dtype == torch.bfloat16
    assert out.device.type == "meta"


def test_prefetch_prototype_picks_the_one_fused_copy_and_keeps_other_calls() -> None:
    """benchmarks.prototypes.runner_forward_prefetch_shared: the slices it would prefetch are the
    shared expert's slot (after the routed experts) of each weight and scale, none with two
    copies or none fused; a call it does not handle (here: on CPU, or more tokens than its
    limit) runs the method it replaced with the same arguments."""
    from unittest import mock

    from benchmarks import prototypes

    def layer(slots):
        return types.SimpleNamespace(
            w13_weight=torch.randn(slots, 8, 16),
            w2_weight=torch.randn(slots, 16, 4),
            w13_weight_scale_inv=torch.randn(slots, 1, 1),
            w2_weight_scale_inv=torch.randn(slots, 1, 1),
        )

    config = types.SimpleNamespace(num_experts=6, num_fused_shared_experts=1)
    one = layer(7)
    got = prototypes.shared_expert_slices(one, config)
    names = ("w13_weight", "w2_weight", "w13_weight_scale_inv", "w2_weight_scale_inv")
    assert [t.data_ptr() for t in got] == [getattr(one, n)[6].data_ptr() for n in names]
    assert [t.shape for t in got] == [(8, 16), (16, 4), (1, 1), (1, 1)]
    unquantized = types.SimpleNamespace(w13_weight=one.w13_weight, w2_weight=one.w2_weight)
    assert len(prototypes.shared_expert_slices(unquantized, config)) == 2
    assert prototypes.shared_expert_slices(layer(8), config) == []  # two copies (R = 2)
    off = types.SimpleNamespace(num_experts=7, num_fused_shared_experts=0)
    assert prototypes.shared_expert_slices(layer(7), off) == []
    runner = types.SimpleNamespace(routed_experts=one, moe_config=config)
    calls = []
    with mock.patch.object(
        prototypes.runner_forward_prefetch_shared,
        "replaced",
        create=True,
        side_effect=lambda *args: calls.append(args) or "kept",
    ):
        x = torch.randn(1, 16)
        assert prototypes.runner_forward_prefetch_shared(runner, x, x, None) == "kept"
        assert calls == [(runner, x, x, None, None)]
    assert prototypes._prefetch_targets(runner, x) == []  # CPU
    meta = types.SimpleNamespace(size=lambda dim: 2, is_cuda=True)  # two tokens, over the limit
    assert prototypes._prefetch_targets(runner, meta) == []
    with mock.patch.object(prototypes, "PREFETCH_SHARED_MAX_TOKENS", 2):
        assert len(prototypes._prefetch_targets(runner, meta)) == 4


def test_prefetch_prototype_kernel_compiles_for_hopper_into_l2_prefetches() -> None:
    """The prefetch kernel has no interpreter path (inline PTX): compiled here for sm_90 by the
    venv's Triton, it must issue L2 prefetches, one per line of its program's share."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from benchmarks import prototypes

    source = ASTSource(
        fn=prototypes._prefetch_bytes_kernel,
        signature={"ptr": "*u8", "nbytes": "i32"},
        constexprs={"LINES": 256},
    )
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32))
    # 256 lines over 4 warps of 32 threads: two prefetches per thread.
    assert kernel.asm["ptx"].count("prefetch.global.L2") == 2
    assert kernel.asm["cubin"]


def test_dense_fp8_step_totals_weigh_each_shape_by_its_launches_per_step() -> None:
    from benchmarks import dense_fp8

    rows = []
    for kernel, us in (("cutlass", 10.0), ("triton", 5.0)):
        for shape in ("qkv_a", "dense_down", "shared_down"):
            rows.append({"shape": shape, "m": 4, "kernel": kernel, "us": us, "floor_us": 2.0})
    totals = {(t["gemms"], t["kernel"]): t for t in dense_fp8.step_totals(rows)}
    main = totals[("attention + dense MLPs", "cutlass")]
    assert main["step_us"] == 10.0 * (61 + 3)
    assert main["floor_us"] == 2.0 * (61 + 3)
    assert main["x_floor"] == 5.0
    assert totals[("shared expert", "triton")]["step_us"] == 5.0 * 58
    assert len(totals) == 4
    # Copies whose bytes exceed twice the L2 cache, at least four.
    assert dense_fp8.copies_for(2112, 7168) == 7
    assert dense_fp8.copies_for(7168, 2048) == 8
    assert dense_fp8.copies_for(512, 256) > 100
    assert dense_fp8.copies_for(18432, 7168) == 4


DENSE_SPLIT_K_SCRIPT = """
import types
from unittest import mock

import torch

from benchmarks import dense_fp8

torch.manual_seed(0)
fp8 = torch.float8_e4m3fn


def dequantized(a, a_s, b, b_s):
    a_full = a.float() * a_s.repeat_interleave(128, 1)
    b_full = b.float() * b_s.repeat_interleave(128, 0)[: b.shape[0]].repeat_interleave(128, 1)
    return a_full @ b_full.T


checked = 0
# Ragged N and M, K of 3-8 groups: splits with one, several and no K blocks; both scale layouts.
for m, n, k in [(1, 200, 640), (3, 256, 384), (20, 96, 1024)]:
    a = (torch.randn(m, k) * 4).to(fp8)
    b = (torch.randn(n, k) * 0.5).to(fp8)
    a_s = torch.rand(m, k // 128) + 0.5
    b_s = torch.rand((n + 127) // 128, k // 128) + 0.5
    want = dequantized(a, a_s, b, b_s)
    for block_n, split_k in ((32, 1), (64, 2), (128, 8), (256, 3)):
        config = dict(BLOCK_N=block_n, SPLIT_K=split_k, num_warps=4, num_stages=3)
        for s in (a_s, a_s.t().contiguous().t()):
            got = dense_fp8.split_k_gemm(a, b, s, b_s, config, out_dtype=torch.float32)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)
            checked += 1
    # Row tiles other than the patch's 16 (one tile of 32 or 64 rows, or 16 in two), and the
    # module's own put back after each call.
    for block_m in (32, 64):
        config = dict(BLOCK_M=block_m, BLOCK_N=64, SPLIT_K=2)
        got = dense_fp8.split_k_gemm(a, b, a_s, b_s, config, out_dtype=torch.float32)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)
        assert dense_fp8._SPLIT_K["BLOCK_M"] == 16
        checked += 1
# Every tile's counter is back at zero for the next launch.
assert all(int(c.abs().sum()) == 0 for c in dense_fp8._SPLIT_K["_counters"].values())
checked += 1

# A config's warps and stages reach the kernel's launch (else the patch's four and four); the
# namespace's kernel is put back after each call.
kernel = dense_fp8._SPLIT_K["_block_fp8_split_k_kernel"]
seen = []


class Spy:
    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            seen.append((kwargs["num_warps"], kwargs["num_stages"]))
            return kernel[grid](*args, **kwargs)

        return launch


spy = Spy()
dense_fp8._SPLIT_K["_block_fp8_split_k_kernel"] = spy
try:
    tiles = dict(BLOCK_N=64, SPLIT_K=2, num_warps=2, num_stages=5), dict(BLOCK_N=64, SPLIT_K=2)
    for config in tiles:
        got = dense_fp8.split_k_gemm(a, b, a_s, b_s, config, out_dtype=torch.float32)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)
        assert dense_fp8._SPLIT_K["_block_fp8_split_k_kernel"] is spy
finally:
    dense_fp8._SPLIT_K["_block_fp8_split_k_kernel"] = kernel
assert seen == [(2, 5), (4, 4)], seen
checked += 1

# measure_shape's rows, with stand-ins for the CUDA-only pieces: the kernels compute the
# dequantized product, a graph is the function, its replay 1 us.
ops = types.SimpleNamespace(
    cutlass_scaled_mm=lambda a, bt, out_dtype, scale_a, scale_b: dequantized(
        a, scale_a, bt.T, scale_b.T
    ).to(out_dtype)
)


def quant(x, group, column_major_scales=False):
    g = x.float().view(x.shape[0], -1, group)
    scale = g.abs().amax(-1).clamp(min=1e-10) / 448.0
    q = (g / scale[..., None]).to(fp8).view(x.shape)
    return q, (scale.t().contiguous().t() if column_major_scales else scale)


fp8_utils = types.SimpleNamespace(
    get_w8a8_block_fp8_configs=lambda n, k, bn, bk: None,
    per_token_group_quant_fp8=quant,
    w8a8_triton_block_scaled_mm=lambda a, b, s, bs, block, output_dtype: dequantized(
        a, s, b, bs
    ).to(output_dtype),
)
timing = types.SimpleNamespace(
    capture=lambda run, inputs, warmup: [run(*inputs[0])], replay_us=lambda graphs, iters, reps: 1.0
)
sweep = [dict(BLOCK_N=64, SPLIT_K=sk, num_warps=4, num_stages=3) for sk in (1, 2, 4)]
triton_sweep = [dict(BLOCK_SIZE_N=bn) for bn in (16, 32)]
launch_sweep = [dict(num_warps=2, num_stages=3), dict(num_warps=8, num_stages=5)]
args = types.SimpleNamespace(
    tokens=[1, 5],
    sweep=sweep,
    launch_sweep=launch_sweep,
    triton_sweep=triton_sweep,
    iters=1,
    device="cpu",
)
with (
    mock.patch.dict(dense_fp8.SHAPES, {"tiny": (200, 256, 1)}),
    mock.patch.object(dense_fp8, "copies_for", lambda n, k: 2),
    mock.patch.dict(
        "sys.modules",
        {
            "vllm._custom_ops": ops,
            "vllm.model_executor.layers.quantization.utils.fp8_utils": fp8_utils,
            "sefkit.graph_timing": timing,
        },
    ),
):
    import vllm
    import vllm.model_executor.layers.quantization.utils as quant_utils

    vllm._custom_ops = ops
    quant_utils.fp8_utils = fp8_utils
    rows = dense_fp8.measure_shape(args, "tiny", 4e12)
assert [(r["m"], r["kernel"]) for r in rows] == [
    (m, kernel) for m in (1, 5) for kernel in dense_fp8.KERNELS
]
assert dense_fp8.KERNELS[-2:] == ("split_k", "split_k_launch")
# vLLM's config file per shape: the tuned tiles at the measured sizes, the shipped ones kept.
files = dense_fp8.config_files(rows, lambda n, k: {1: "shipped-1", 64: "shipped-64"})
device = rows[0]["device_name"]
name = f"N=200,K=256,device_name={device},dtype=fp8_w8a8,block_shape=[128,128].json"
assert list(files) == [name]
(entries,) = files.values()
assert list(entries) == ["1", "5", "64"] and entries["64"] == "shipped-64"
assert entries["1"] in triton_sweep and entries["5"] in triton_sweep
checked += 1
for r in rows:
    assert r["us"] == 0.5  # one replay of two copies
    assert r["floor_us"] == 200 * 256 / 4e12 * 1e6
    assert r["rel_diff_vs_cutlass"] < 1e-2, r
    if r["kernel"] == "split_k":
        # K = 256: two K blocks, so SPLIT_K = 4 is not swept
        assert [c["SPLIT_K"] for _, c in r["sweep"]] == [1, 2]
        assert r["config"] in sweep
    if r["kernel"] == "split_k_launch":
        # the fastest tile (all tie here: the first) with each warp and stage count
        tile = {k: v for k, v in sweep[0].items() if k not in ("num_warps", "num_stages")}
        assert [c for _, c in r["sweep"]] == [{**sweep[0], **launch} for launch in launch_sweep]
        assert {k: r["config"][k] for k in tile} == tile
    if r["kernel"] == "triton_tuned":
        assert [c for _, c in r["sweep"]] == triton_sweep
    checked += 1
print("checked", checked)
"""


def _in_triton_interpreter(script: str) -> subprocess.CompletedProcess:
    """``script`` run by a child Python with Triton's interpreter on; it must succeed."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    return proc


def test_dense_split_k_prototype_in_triton_interpreter() -> None:
    """The split-K kernel benchmarks/dense_fp8.py times (patch 0016's) against a float
    reference, and the benchmark's rows (CUDA-only kernels and timing stood in for), in Triton's
    interpreter."""
    proc = _in_triton_interpreter(DENSE_SPLIT_K_SCRIPT)
    assert "checked 43" in proc.stdout, proc.stdout


def _gpu_host(env: dict, *args: str) -> subprocess.CompletedProcess:
    """benchmarks/gpu_host.sh ARGS with ``env`` (this venv's python first on PATH)."""
    env = dict(env, PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
    return subprocess.run(
        ["bash", "benchmarks/gpu_host.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True
    )


def test_moe_configs_as_copies_another_gpus_files_under_this_name(tmp_path) -> None:
    import vllm.model_executor.layers.fused_moe as fused_moe

    src = Path(fused_moe.__file__).parent / "configs"
    env = dict(os.environ, OUT=str(tmp_path / "out"))

    def step(*args):
        return _gpu_host(env, "moe-configs-as", *args)

    dest = tmp_path / "configs"
    result = step("NVIDIA_H200", str(dest), "NVIDIA_H100_80GB_HBM3")
    assert result.returncode == 0, result.stderr
    fp8 = "dtype=fp8_w8a8,block_shape=[128,128]"
    for shape in (
        f"E=264,N=256,device_name=NVIDIA_H200,{fp8}",
        "E=264,N=512,device_name=NVIDIA_H200",
    ):
        copied = dest / f"{shape.replace('NVIDIA_H200', 'NVIDIA_H100_80GB_HBM3')}.json"
        assert copied.read_bytes() == (src / f"{shape}.json").read_bytes()
    # An H100 file the wheel has for a shape stays in charge: nothing copied over it (vLLM's own,
    # and patch 0017's for DeepSeek-V3 FP8, gate-up and down).
    for h200, own in (
        (
            "E=128,N=192,device_name=NVIDIA_H200.json",
            "E=128,N=192,device_name=NVIDIA_H100_80GB_HBM3.json",
        ),
        *(
            (
                f"E=257,N=256,device_name=NVIDIA_H200,{fp8}{kind}",
                f"E=257,N=256,device_name=NVIDIA_H100_80GB_HBM3,{fp8}{kind}",
            )
            for kind in (".json", "_down.json")
        ),
    ):
        assert (src / h200).exists()
        assert (src / own).exists()
        assert not (dest / own).exists()
    assert not list(dest.glob("*NVIDIA_H200*"))
    assert f"{len(list(dest.iterdir()))} MoE config files" in result.stdout
    result = step("NVIDIA_H999", str(tmp_path / "none"), "X")
    assert result.returncode == 2
    assert "no MoE config files for device_name=NVIDIA_H999" in result.stderr


def test_prepare_puts_what_a_gpu_session_carries_under_gpu_dir(tmp_path) -> None:
    """gpu_host.sh prepare: the host scripts copied, the wheel handed to bundle.sh, the in-tree
    CUDA tests copied from the patched tree; a missing script, wheel or test file is refused by
    name."""
    scripts = tmp_path / "gpu-host"
    scripts.mkdir()
    (scripts / "bundle.sh").write_text('mkdir -p "$2" && echo "$1" > "$2/wheel"\n')
    for name in ("stage.sh", "apply-patches.sh", "host-packages.txt"):
        (scripts / name).write_text(f"# {name}\n")
    wheel = tmp_path / "vllm-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl"
    wheel.write_bytes(b"not a wheel")
    gpu = tmp_path / "gpu"
    tree = tmp_path / "vllm"  # the series applied, as ci/test.sh's in-tree tests have it
    subprocess.run(["bash", "ci/scratch-tree.sh", str(tree)], cwd=ROOT, check=True)
    env = dict(
        os.environ,
        OUT=str(tmp_path / "out"),
        GPU_DIR=str(gpu),
        GPU_HOST_SCRIPTS=str(scripts),
        VLLM_DIR=str(tree),
    )

    def prepare(*args):
        return _gpu_host(env, "prepare", *args)

    result = prepare(str(wheel))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (gpu / "bin").iterdir()) == [
        "apply-patches.sh",
        "bundle.sh",
        "host-packages.txt",
        "stage.sh",
    ]
    assert (gpu / "bundle" / "wheel").read_text().strip() == str(wheel)
    intree = gpu / "intree" / "tests"
    assert (intree / "kernels" / "moe" / "test_moe.py").is_file()
    assert (intree / "kernels" / "quantization" / "test_rms_norm_group_quant_triton.py").is_file()
    assert "def workspace_init" in (intree / "conftest.py").read_text()

    result = prepare(str(tmp_path / "missing.whl"))
    assert result.returncode == 2
    assert f"no wheel {tmp_path / 'missing.whl'}" in result.stderr
    (scripts / "host-packages.txt").unlink()
    result = prepare(str(wheel))
    assert result.returncode == 2
    assert f"GPU_HOST_SCRIPTS={scripts} has no host-packages.txt" in result.stderr
    (scripts / "host-packages.txt").write_text("")
    env["VLLM_DIR"] = str(tmp_path / "empty")
    result = prepare(str(wheel))
    assert result.returncode == 2
    assert f"VLLM_DIR={tmp_path / 'empty'} has no tests/__init__.py" in result.stderr


NORM_QUANT_SCRIPT = """
import torch
import triton
import vllm.triton_utils

from benchmarks.norm_quant import reference, scales_buffer

# vLLM's CPU build turns Triton off (placeholders for triton.jit); here Triton's interpreter runs.
vllm.triton_utils.triton, vllm.triton_utils.tl = triton, triton.language
from vllm.kernels.triton.rms_norm_group_quant import rms_norm_per_block_quant_triton

def truncating(t, dtype):  # the interpreter casts float32 to bf16 by truncation, the GPU rounds
    assert dtype == torch.bfloat16
    return (t.float().view(torch.int32) & -65536).view(torch.float32).to(dtype)

torch.manual_seed(0)
checked = 0
# hidden (a ragged power of two of groups for 384 and 640), tokens, residual, scales transposed
for hidden, m, has_res, transposed in [(512, 3, True, True), (384, 2, False, False),
                                       (640, 5, True, False), (256, 1, False, True)]:
    x = torch.randn(m, hidden).bfloat16() * 3
    w = (1 + 0.1 * torch.randn(hidden)).bfloat16()
    r0 = torch.randn(m, hidden).bfloat16() if has_res else None
    q_ref, s_ref, r_ref = reference(x, w, 1e-6, r0, cast=truncating)
    out = torch.empty(m, hidden, dtype=torch.float8_e4m3fn)
    s = scales_buffer(m, hidden // 128, transposed, "cpu")
    r = r0.clone() if has_res else None
    rms_norm_per_block_quant_triton(out, x, w, s, 1e-6, None, r, 128, transposed)
    assert torch.equal(s, s_ref), (s, s_ref)
    assert r is None or torch.equal(r, r_ref)
    # The interpreter's FP8 cast is not the GPU's (it truncates, and near a power of two it
    # halves): most values agree, the others keep their sign within a factor of two.
    q, q_ref = out.float(), q_ref.float()
    assert (q == q_ref).float().mean() > 0.9
    assert ((q * q_ref >= 0) & (q.abs() <= q_ref.abs() * 1.125 + 2**-9)).all()
    assert (q.abs() >= q_ref.abs() / 2 - 2**-9).all()
    checked += 1
for bad, why in ((scales_buffer(3, 3, False, "cpu"), "need float32 \\[tokens, groups\\]"),
                 (scales_buffer(3, 4, True, "cpu"), "row-major")):
    try:
        rms_norm_per_block_quant_triton(torch.empty(3, 512, dtype=torch.float8_e4m3fn),
                                        torch.randn(3, 512).bfloat16(), torch.ones(512).bfloat16(),
                                        bad, 1e-6, None, None, 128, False)
    except ValueError as exc:
        import re
        assert re.search(why, str(exc)), exc
        checked += 1

# measure's rows, with stand-ins for the CUDA-only pieces: vLLM's op computed by the reference,
# a graph is the function, its replay 2 us for the op and 1 us for the Triton kernel.
import json
import os
import tempfile
import types
from unittest import mock

from benchmarks import norm_quant


def op_by_reference(out, x, weight, scales, eps, scale_ub, residual, group, transposed):
    q, s, r = reference(x, weight, eps, residual, group, cast=truncating)
    out.copy_(q)
    scales.copy_(s)
    if residual is not None:
        residual.copy_(r)


replays = iter([2.0, 1.0] * 8)
with (
    mock.patch.dict(norm_quant.SHAPES, {"a": (512, True, 3), "b": (256, False, 2)}, clear=True),
    mock.patch("sefkit.graph_timing.capture", lambda run, inputs, warmup: [run]),
    mock.patch("sefkit.graph_timing.replay_us", lambda graphs, iters, reps: next(replays)),
):
    out = os.path.join(tempfile.mkdtemp(), "norm_quant.json")
    args = types.SimpleNamespace(tokens=[1, 3], calls=2, iters=1, out=out)
    kernels = {"vllm_cuda": op_by_reference, "triton": rms_norm_per_block_quant_triton}
    rows = norm_quant.measure(args, kernels, device="cpu")
with open(out) as f:
    assert json.load(f) == {"gpu": "cpu", "rows": rows}  # written after each row, all of them
assert [(r["shape"], r["tokens"]) for r in rows] == [("a", 1), ("a", 3), ("b", 1), ("b", 3)]
for r in rows:
    assert (r["vllm_cuda_us"], r["triton_us"], r["ratio"]) == (1.0, 0.5, 0.5)  # per call
    assert r["scale_ratio_max"] == 0.0 and r["residual_equal"], r
    assert r["quantized_values_differing"] < 0.1, r
    checked += 1
print("checked", checked)
"""


DENSE_PDL_SCRIPT = """
import json
import os
import tempfile
import types
from unittest import mock

import torch
import triton
import vllm.triton_utils

vllm.triton_utils.triton, vllm.triton_utils.tl = triton, triton.language  # see NORM_QUANT_SCRIPT
from vllm.kernels.triton.rms_norm_group_quant import rms_norm_per_block_quant_triton

from benchmarks import dense_pdl

torch.manual_seed(0)
fp8 = torch.float8_e4m3fn
shipped_gemm = dense_pdl._installed()["block_fp8_split_k_mm"]
checked = 0
# The prototype kernels with PDL off are the patches' kernels: the same bits (norm: with and
# without the residual, both scale layouts; GEMM: one to several splits, ragged N, both layouts).
for hidden, m, has_res, transposed in [(512, 3, True, True), (640, 2, False, False)]:
    x = torch.randn(m, hidden).bfloat16() * 3
    w = (1 + 0.1 * torch.randn(hidden)).bfloat16()
    r0 = torch.randn(m, hidden).bfloat16() if has_res else None
    results = []
    for launch in (rms_norm_per_block_quant_triton, dense_pdl.norm_quant):
        out = torch.empty(m, hidden, dtype=fp8)
        s = torch.empty(hidden // 128, m).t() if transposed else torch.empty(m, hidden // 128)
        r = r0.clone() if has_res else None
        if launch is dense_pdl.norm_quant:
            launch(out, x, w, s, 1e-6, r, 128)
        else:
            launch(out, x, w, s, 1e-6, None, r, 128, transposed)
        results.append((out.view(torch.uint8), s, r))
    (q0, s0, r0_), (q1, s1, r1) = results
    assert torch.equal(q0, q1) and torch.equal(s0, s1)
    assert r0_ is None or torch.equal(r0_, r1)
    checked += 1
for m, n, k, config in [(1, 200, 640, (64, 2)), (3, 256, 384, (32, 1)), (20, 96, 1024, (128, 8))]:
    a = (torch.randn(m, k) * 4).to(fp8)
    b = (torch.randn(n, k) * 0.5).to(fp8)
    b_s = torch.rand((n + 127) // 128, k // 128) + 0.5
    for a_s in (torch.rand(m, k // 128) + 0.5, (torch.rand(k // 128, m) + 0.5).t()):
        want = shipped_gemm(a, b, a_s, b_s, torch.float32, split_k=config[1], block_n=config[0])
        got = dense_pdl.split_k_mm(a, b, a_s, b_s, torch.float32, config=config)
        assert torch.equal(got, want)
        checked += 1
assert all(int(c.abs().sum()) == 0 for c in dense_pdl._installed()["_counters"].values())
# fused_quant: the GEMM quantizes its bf16 input per row and 128-group itself (the interpreter's
# FP8 cast is not the GPU's, so against the float product, within FP8's error). Inputs far
# below and far above FP8's range: without the per-group scales the error is 1.0 and 0.69.
for m, n, k, magnitude in [(1, 200, 640, 1e-4), (5, 96, 384, 1e3)]:
    x = (torch.randn(m, k) * magnitude).bfloat16()
    b = (torch.randn(n, k) * 0.5).to(fp8)
    b_s = torch.rand((n + 127) // 128, k // 128) + 0.5
    b_full = b.float() * b_s.repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)
    want = x.float() @ b_full.T
    got = dense_pdl.split_k_mm(x, b, None, b_s, torch.float32)
    err = ((got - want).norm() / want.norm()).item()
    assert err < 0.1, err
    checked += 1

# measure's rows, base, shipped and fused_quant (PDL is CUDA-only: here shipped launches plainly):
# the shipped producers (patch 0018's kernel; a torch stand-in for vLLM's CUDA quantization), a
# graph is the function, 2 us a replay.
def quant(x):
    g = x.float().view(x.shape[0], -1, 128)
    scale = g.abs().amax(-1).clamp(min=1e-10) / 448.0
    return (g / scale[..., None]).to(fp8).view(x.shape), scale.t().contiguous().t()

pairs = {"n": ("norm", 512, True, 96, 512, 3), "q": ("quant", 256, False, 160, 256, 2)}
with (
    mock.patch.dict(dense_pdl.PAIRS, pairs, clear=True),
    mock.patch.object(dense_pdl, "VARIANTS", ("base", "shipped", "fused_quant")),
    mock.patch.object(dense_pdl, "copies_for", lambda n, k: 2),
    mock.patch("sefkit.graph_timing.capture", lambda run, inputs, warmup: [run]),
    mock.patch("sefkit.graph_timing.replay_us", lambda graphs, iters, reps: 2.0),
):
    out = os.path.join(tempfile.mkdtemp(), "dense_pdl.json")
    args = types.SimpleNamespace(
        pairs=["n", "q"], tokens=[1, 3], prefetch=2, iters=1, tile=None, out=out
    )
    producers = {"norm": rms_norm_per_block_quant_triton, "quant": quant}
    rows = dense_pdl.measure(args, producers, device="cpu")
    # --tile: every variant's GEMM on that tile, recorded in the rows.
    tiled = dense_pdl.measure(
        types.SimpleNamespace(**{**vars(args), "tile": (32, 4), "out": None}), producers, "cpu"
    )
with open(out) as f:
    assert json.load(f) == {"gpu": "cpu", "rows": rows}
split_k_config = dense_pdl._installed()["split_k_config"]
for r in rows:
    n, k = pairs[r["pair"]][3:5]
    assert r["tile"] == list(split_k_config(r["tokens"], n, k, 132)), r
for r in tiled:
    assert r["tile"] == [32, 4], r
    assert r["equal_to_base"]["base"] and r["equal_to_base"]["shipped"], r
    assert r["max_rel_diff_to_base"].get("fused_quant", 0.0) < 0.2, r
    checked += 1
assert [(r["pair"], r["tokens"]) for r in rows] == [("n", 1), ("n", 3), ("q", 1), ("q", 3)]
for r in rows:
    assert r["base_us"] == 1.0 and r["equal_to_base"]["base"], r  # 2 us per 2 pairs
    assert r["shipped_us"] == 1.0 and r["equal_to_base"]["shipped"], r
    assert r["pairs_per_step"] == (3 if r["pair"] == "n" else 2)
    # o_proj's pair only: the norm's quantization is fused with the norm already.
    assert ("fused_quant_us" in r) == (r["pair"] == "q"), r
    assert r["max_rel_diff_to_base"].get("fused_quant", 0.0) < 0.2, r
    checked += 1
print("checked", checked)
"""


def test_dense_pdl_prototype_kernels_in_triton_interpreter() -> None:
    """benchmarks/dense_pdl.py's prototype kernels with PDL off equal patches 0016's and 0018's
    kernels (from the installed wheel) bit for bit, its GEMM quantizing its own input computes
    the product, and its measure writes its rows, in Triton's interpreter (the PDL paths are
    CUDA-only: the GPU run checks them against the base)."""
    proc = _in_triton_interpreter(DENSE_PDL_SCRIPT)
    assert "checked 18" in proc.stdout, proc.stdout


@pytest.mark.parametrize("bad", ["100/2", "128", "64/3", "8/1", "a/b"])
def test_dense_pdl_refuses_a_tile_that_is_not_two_powers_of_two(bad) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.dense_pdl", "--tile", bad],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "argument --tile" in result.stderr
    assert repr(bad) in result.stderr


def test_dense_pdl_tile_parses_into_block_n_and_split_k() -> None:
    from benchmarks import dense_pdl

    assert dense_pdl.parse_tile("128/2") == (128, 2)
    assert dense_pdl.parse_tile("16/1") == (16, 1)


ROUTER_GEMM_SCRIPT = """
import json
import os
import tempfile
import types
from unittest import mock

import torch

from benchmarks import router_gemm

torch.manual_seed(0)
checked = 0
# The prototype's split-K against the float product: ragged N (masked columns), K of five
# blocks, one to eight splits (eight: three programs per tile with empty ranges), one and
# two-token rows. In float32: the interpreter's tl.dot multiplies bf16 operands' bits as
# integers (the bf16 rounding is the GPU run's logits_differing).
for m, n, k, block_n in [(1, 48, 640, 16), (2, 40, 640, 32)]:
    x = torch.randn(m, k)
    w = torch.randn(n, k) / k**0.5
    want = x.double() @ w.double().T
    for splits in (1, 2, 4, 8):
        got = router_gemm.split_k_mm(x, w, block_n, splits)
        assert got.dtype == torch.float32 and got.shape == (m, n)
        assert ((got.double() - want).abs() <= 1e-5).all(), (m, n, splits)
        checked += 1
assert all(int(c.abs().sum()) == 0 for c in router_gemm._installed()["_counters"].values())
try:
    router_gemm.split_k_mm(torch.randn(1, 64).bfloat16(), torch.randn(8, 32).bfloat16(), 16, 1)
    raise AssertionError("mismatched K accepted")
except ValueError as exc:
    assert "need [M, K], [N, K]" in str(exc)
# Top-k differing: none for the same logits, nor for a token whose two best swap; a token whose
# best expert drops to the last place differs.
logits = torch.randn(4, 16)
bias = torch.zeros(16)
assert router_gemm.topk_differing(logits, logits, bias, 2) == 0.0
changed = logits.clone()
best, second = logits[0].topk(2).indices
changed[0, best], changed[0, second] = logits[0, second], logits[0, best]
assert router_gemm.topk_differing(changed, logits, bias, 2) == 0.0
changed[1, logits[1].argmax()] = logits[1].min() - 10
assert router_gemm.topk_differing(changed, logits, bias, 2) == 0.25
checked += 1
# measure's rows (timing stood in for: a graph is the function, 3 us a replay of 4 copies).
with (
    mock.patch.dict(router_gemm.SHAPES, {"s": (48, 640, 4, 7)}, clear=True),
    mock.patch.object(router_gemm, "copies_for", lambda n, k: 4),
    mock.patch("sefkit.graph_timing.capture", lambda run, inputs, warmup: [run]),
    mock.patch("sefkit.graph_timing.replay_us", lambda graphs, iters, reps: 3.0),
):
    out = os.path.join(tempfile.mkdtemp(), "router_gemm.json")
    args = types.SimpleNamespace(shapes=["s"], tokens=[1, 3], block_n=[16], splits=[2, 8],
                                 iters=1, out=out)
    rows = router_gemm.measure(args, device="cpu")
with open(out) as f:
    assert json.load(f) == {"gpu": "cpu", "rows": rows}
# torch.mm's float32 epilogue is CUDA-only (skipped here); no PDL rows off Hopper.
names = ["producer", "linear", "split_k_16_2", "split_k_16_8"]
assert [(r["tokens"], r["variant"]) for r in rows] == [(m, v) for m in (1, 3) for v in names]
for r in rows:
    assert r["us"] == 0.75 and r["launches_per_step"] == 7 and r["copies"] == 4, r
    # (the split-K rows' bf16 products are the interpreter's, see above: not checked here)
    if r["variant"] in ("producer", "linear"):
        assert r["logits_differing"] == 0.0 and r["max_rel_diff"] == 0.0, r
        assert r["topk_differing"] == 0.0, r
    checked += 1
print("checked", checked)
"""


def test_router_gemm_prototype_in_triton_interpreter() -> None:
    """benchmarks/router_gemm.py's split-K bf16 GEMM against the float product (ragged N,
    empty splits, counters back at zero), its top-k comparison and its measure's rows, in
    Triton's interpreter."""
    proc = _in_triton_interpreter(ROUTER_GEMM_SCRIPT)
    assert "checked 17" in proc.stdout, proc.stdout


def test_norm_quant_kernel_in_triton_interpreter() -> None:
    """The series' Triton RMSNorm + FP8 group quantization (vllm/kernels/triton/
    rms_norm_group_quant.py, from the installed wheel) against benchmarks/norm_quant.py's torch
    reference of vLLM's op (the interpreter's casts stood in for), its refusals, and
    norm_quant.measure's rows."""
    proc = _in_triton_interpreter(NORM_QUANT_SCRIPT)
    assert "checked 10" in proc.stdout, proc.stdout


class _FakeClock:
    """A GPU stream for sefkit.graph_timing on a CPU: replays advance a clock by their cost,
    events read it (milliseconds, as torch.cuda.Event.elapsed_time)."""

    def __init__(self) -> None:
        self.now_ms = 0.0

    def graph(self, us: float):
        return types.SimpleNamespace(replay=lambda: setattr(self, "now_ms", self.now_ms + us / 1e3))

    def event(self, enable_timing: bool = False):
        clock = self
        event = types.SimpleNamespace(at=None)
        event.record = lambda: setattr(event, "at", clock.now_ms)
        event.elapsed_time = lambda other: other.at - event.at
        return event


def test_replay_us_cold_subtracts_the_l2_flush() -> None:
    """replay_us_cold times a flush before every replay and a flush alone, and returns the
    difference per replay: the graphs' own time (round-robin over them), whatever the flush
    costs."""
    from unittest import mock

    from sefkit import graph_timing

    clock = _FakeClock()
    with (
        mock.patch.object(graph_timing, "l2_flush_graph", return_value=clock.graph(40.0)),
        mock.patch.object(graph_timing.torch.cuda, "Event", clock.event),
        mock.patch.object(graph_timing.torch.cuda, "synchronize", return_value=None),
    ):
        graphs = [clock.graph(3.0), clock.graph(5.0)]
        assert graph_timing.replay_us_cold(graphs, iters=10, reps=3) == pytest.approx(4.0)
        assert graph_timing.replay_us(graphs, iters=10, reps=3) == pytest.approx(4.0)


def test_prefetch_shared_mode_swaps_the_runner_method_with_cold_l2() -> None:
    """moe_layer.py prefetch-shared alternates vLLM's MoERunner._forward_impl with the
    prototype (which calls the method it replaced), and times with L2 emptied per replay."""
    from unittest import mock

    from vllm.model_executor.layers.fused_moe.runner.moe_runner import MoERunner

    from benchmarks import moe_layer, prototypes

    plain = MoERunner._forward_impl
    seen = {}

    def fake_alternate(args, setup, settings, scenario):
        for name, setting in settings.items():
            with setting():
                seen[name] = MoERunner._forward_impl
        seen["scenario"], seen["cold_l2"] = scenario, setup.cold_l2
        return []

    setup = types.SimpleNamespace(cold_l2=False)
    with mock.patch.object(moe_layer, "alternate", fake_alternate):
        assert moe_layer.prefetch_shared(argparse.Namespace(), setup) == []
    assert MoERunner._forward_impl is plain
    assert seen["plain"] is plain
    assert seen["prefetch"] is prototypes.runner_forward_prefetch_shared
    assert prototypes.runner_forward_prefetch_shared.replaced is plain
    assert seen["cold_l2"] is True
    assert seen["scenario"] == "moe_layer_prefetch_shared"
    import inspect

    assert '"prefetch-shared": prefetch_shared' in inspect.getsource(moe_layer.main)
