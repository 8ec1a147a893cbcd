"""Turn the raw GPU results in benchmarks/results/raw/ into the committed summary.

    python -m benchmarks.summarize          # needs matplotlib for the plots

Writes benchmarks/results/summary.json (one row per scenario, dtype, TP
equivalent, batch and metric: stock, fused, ratio = fused / stock) and the
plots under docs/img/. docs/benchmarks.md quotes these files.

End-to-end timings (benchmarks/e2e.py, formerly e2e_latency.py): ITL from vLLM's request
stats, which leave the prefill out, TTFT as the wall time of a one-token
generation; each engine process measures every batch size --reps times. A
scenario's stock and fused values are the medians over all its runs' values
(every value is kept in the row). raw/e2e_v1_difference_method.jsonl is the
first session's run, whose ITL was a difference of two timed generations
(prefill noise made some negative); it is kept, not summarized.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "benchmarks" / "results" / "raw"
GPU, VLLM = "NVIDIA H200", "0.32.0"
DAY1, DAY2 = "2026-11-29", "2026-11-30"  # the first GPU sessions (series sef1)
DAY4 = "2026-12-02"  # the one-mechanism series (sef2), realistic routing
DAY5 = "2026-12-02"  # the seventh session: sef5 (patch 0008), throughput
DAY6 = "2026-12-03"  # the ninth session: sef5 without prefix caching
DAY7 = "2026-12-03"  # the tenth session: sef6 (patch 0009, PDL)
DAY8 = "2026-12-03"  # the eleventh session: sef6 as shipped, stock / fused / off completed
DAY9 = "2026-12-03"  # the twelfth session: sef7 (patch 0010, shared entries on the aux stream)
DAY10 = "2026-12-03"  # the thirteenth session: sef8 (patches 0011-0012, down-projection tiles)
DAY11 = "2026-12-03"  # the fourteenth session: sef8 throughput, in-GEMM input quantization re-tried
DAY12 = "2026-12-04"  # the fifteenth session: sef9 (patch 0013, quantize + align in one launch)
DAY13 = "2026-12-04"  # sixteenth session: sef9 A B A B, sef10 (patch 0014, moe_sum in Triton)
DAY14 = "2026-12-04"  # seventeenth session: sef10 A B A B with the engine-step profile
DAY15 = "2026-12-05"  # nineteenth session: sef11 on an H100, dense FP8 GEMMs, the 0010 race
DAY16 = "2026-12-06"  # twentieth session: sef12 on an H100, patch 0016 in the engine
DAY17 = "2026-12-06"  # twenty-first session: sef13 on an H100, stock / fused / off with throughput
DAY18 = "2026-12-06"  # twenty-second session: H100 MoE configs and the Triton norm + quant (sef14)
DAY19 = "2026-12-06"  # twenty-third session: sef14 as built on an H100
DAY20 = "2026-12-06"  # twenty-fourth session: sef15's 512-token threshold in the engine, PDL pairs
DAY21 = "2026-12-06"  # twenty-fifth session: patch 0019 and the router prototype in the engine
DAY22 = "2026-12-06"  # twenty-sixth session: sef17 against stock, 0018 to 4,096 tokens, launches
DAY23 = "2026-12-06"  # twenty-seventh session: cold L2, the prefetch prototype, 0018 at 16,384
DAY24 = "2026-12-07"  # twenty-eighth session: patch 0018 to 16,384 tokens in the engine
DAY25 = "2026-12-07"  # thirtieth session: 0018 at vllm serve's chunk, sef17 with fusion off
DAY26 = "2026-12-07"  # thirty-first session: sef18 against stock, the TTFT prefill's profile


def layer_rows() -> list[dict]:
    # The first FP8 run loaded bf16 tensors into FP8 parameters (a bug of the
    # script since fixed): its timings stand, as the kernels' work does not
    # depend on the values, but its floor counted bf16 bytes. Its inputs and
    # routing equal the second run's, so that run's floor applies.
    fp8_floor = {
        r["batch"]: r["floor_us"]
        for r in json.loads((RAW / "layer_bench_tp8_fp8_tuned.json").read_text())["rows"]
    }
    rows = []
    # "moe_layer": fused with the E=257 configs patch 5 ships, stock with vLLM's own files (it has
    # none for E=256 in bf16 on H200, nor for FP8 at N=2048); "_default_tiles": no E=257 file.
    sources = [
        ("layer_bench_tp8_fp8_tuned.json", {"fp8": "moe_layer"}, DAY1),
        ("layer_bench_tp8_bf16_tuned.json", {"bf16": "moe_layer"}, DAY2),
        ("layer_bench_tp1_fp8.json", {"fp8": "moe_layer"}, DAY2),
        ("layer_bench_tp1_bf16.json", {"bf16": "moe_layer"}, DAY2),
        ("layer_bench_tp8_default_tiles.json", {"bf16": "moe_layer_default_tiles"}, DAY1),
        ("layer_bench_tp8_default_tiles.json", {"fp8": "moe_layer_default_tiles"}, DAY1),
        # The one-mechanism series (sef2): one-launch routing, router-side scaling.
        ("layer_bench_tp8_fp8_sef2.json", {"fp8": "moe_layer_sef2"}, DAY4),
    ]
    for name, scenarios, date in sources:
        for r in json.loads((RAW / name).read_text())["rows"]:
            scenario = scenarios.get(r["dtype"])
            if scenario is None:
                continue
            if name == "layer_bench_tp8_default_tiles.json" and r["dtype"] == "fp8":
                r["floor_us"] = fp8_floor[r["batch"]]
            rows.append(bench_row(r, scenario, GPU, date))
    return rows


def bench_row(r: dict, scenario: str, gpu: str, date: str, **more) -> dict:
    """A row of ``benchmarks/moe_layer.py bench``: stock and fused layer, their floor; ``more``
    goes in before the GPU."""
    return {
        "scenario": scenario,
        "dtype": r["dtype"],
        "tp_equiv": r["tp_equiv"],
        "batch": r["batch"],
        "metric": "moe_us",
        "stock": round(r["stock"], 2),
        "fused": round(r["fused"], 2),
        "ratio": round(r["fused"] / r["stock"], 3),
        "floor_us": round(r["floor_us"], 2),
        "fused_over_floor": round(r["fused"] / r["floor_us"], 3),
        **more,
        "gpu": gpu,
        "vllm": VLLM,
        "date": date,
    }


E2E_SCENARIOS = [
    # scenario, TP equivalent, date, (raw files, setting) of stock, then of fused
    (
        "e2e_dsv3_tp8_rank_fp8",
        8,
        DAY1,
        (["e2e_tp8rank_a", "e2e_tp8rank_b"], "0"),
        (["e2e_tp8rank_a", "e2e_tp8rank_b"], "1"),
    ),
    (
        "e2e_dsv3_tp8_rank_fp8_max_tokens_128",
        8,
        DAY1,
        (["e2e_tp8rank_a", "e2e_tp8rank_b"], "0"),
        (["e2e_tp8rank_max128"], "1:128"),
    ),
    # Real TP=2 (N=1024 per rank). Stock with vLLM's files (none for E=256 at N=1024 on H200),
    # fused with patch 5's tuned E=257 file; then stock with an E=256 file tuned the same way
    # (tune_moe.py, not shipped), which is the fair comparison; and day 1's run with default
    # tiles for both.
    (
        "e2e_dsv3_tp2_full_16_layers_fp8",
        2,
        DAY2,
        (["e2e_tp2_tuned257"], "0"),
        (["e2e_tp2_tuned257"], "1"),
    ),
    (
        "e2e_dsv3_tp2_full_16_layers_fp8_stock_tuned",
        2,
        DAY2,
        (["e2e_tp2_stock_tuned256"], "0"),
        (["e2e_tp2_tuned257"], "1"),
    ),
    (
        "e2e_dsv3_tp2_full_16_layers_fp8_default_tiles",
        2,
        DAY1,
        (["e2e_tp2_full16"], "0"),
        (["e2e_tp2_full16"], "1"),
    ),
]


def e2e_values(files: list[str], setting: str) -> dict[tuple[str, int], list[float]]:
    values: dict[tuple[str, int], list[float]] = defaultdict(list)
    for name in files:
        for line in (RAW / f"{name}.jsonl").read_text().splitlines():
            r = json.loads(line)
            if r["setting"] == setting:
                values[(r["metric"], r["batch"])].extend(r["values"])
    return values


def e2e_rows() -> list[dict]:
    rows = []
    for scenario, tp, date, stock_side, fused_side in E2E_SCENARIOS:
        fused_by_key = e2e_values(*fused_side)
        for (metric, batch), stock_values in sorted(e2e_values(*stock_side).items()):
            fused_values = fused_by_key[(metric, batch)]
            stock, fused = statistics.median(stock_values), statistics.median(fused_values)
            rows.append(
                {
                    "scenario": scenario,
                    "dtype": "fp8",
                    "tp_equiv": tp,
                    "batch": batch,
                    "metric": metric,
                    "stock": round(stock, 3),
                    "fused": round(fused, 3),
                    "ratio": round(fused / stock, 3),
                    "fused_setting": fused_side[1],
                    "stock_values": [round(v, 3) for v in stock_values],
                    "fused_values": [round(v, 3) for v in fused_values],
                    "routing": "dummy",
                    "gpu": GPU,
                    "vllm": VLLM,
                    "date": date,
                }
            )
            if metric == "ttft_ms":  # e2e_latency.py warmed up with the prompts it timed
                rows[-1]["prefix_cache"] = CACHED_TTFT
    return (
        rows
        + realistic_rows(REALISTIC, "e2e_dsv3_tp8_rank_fp8_realistic", COLD_FIRST)
        + realistic_rows(REALISTIC_SPLIT_K, "e2e_dsv3_tp8_rank_fp8_realistic_split_k", set())
        + realistic_rows(REALISTIC_SEF3, "e2e_dsv3_tp8_rank_fp8_realistic_sef3", set())
        + realistic_rows(
            REALISTIC_SEF5,
            "e2e_dsv3_tp8_rank_fp8_realistic_sef5",
            set(),
            throughput="throughput_sef5",
            date=DAY5,
        )
        + realistic_rows(
            REALISTIC_SEF5B,
            "e2e_dsv3_tp8_rank_fp8_realistic_sef5b",
            set(),
            throughput="throughput_sef5b",
            date=DAY6,
            prefix_caching=False,
        )
        + realistic_rows(
            REALISTIC_SEF6,
            "e2e_dsv3_tp8_rank_fp8_realistic_sef6",
            set(),
            throughput="throughput_sef6",
            date=DAY7,
            prefix_caching=False,
        )
        + realistic_rows(
            REALISTIC_SEF7,
            "e2e_dsv3_tp8_rank_fp8_realistic_sef7",
            set(),
            throughput="throughput_sef7",
            date=DAY9,
            prefix_caching=False,
        )
        + realistic_rows(
            REALISTIC_SEF8,
            "e2e_dsv3_tp8_rank_fp8_realistic_sef8",
            set(),
            throughput="throughput_sef8",
            date=DAY10,
            prefix_caching=False,
        )
        + realistic_rows(
            REALISTIC_SEF9,
            "e2e_dsv3_tp8_rank_fp8_realistic_sef9",
            set(),
            throughput="throughput_sef9",
            date=DAY12,
            prefix_caching=False,
        )
        + realistic_rows(
            REALISTIC_SEF9_ABAB,
            "e2e_dsv3_tp8_rank_fp8_realistic_sef9_abab",
            set(),
            date=DAY13,
            prefix_caching=False,
        )
        + realistic_rows(
            REALISTIC_SEF10_ABAB,
            "e2e_dsv3_tp8_rank_fp8_realistic_sef10_abab",
            set(),
            date=DAY14,
            prefix_caching=False,
        )
        + engine_step_rows(REALISTIC_SEF10_ABAB, "e2e_step_sef10", DAY14)
        + realistic_rows(
            REALISTIC_SEF11_H100,
            "e2e_dsv3_tp8_rank_fp8_realistic_sef11_h100_l30",
            set(),
            date=DAY15,
            prefix_caching=False,
            gpu=H100,
            extra=H100_L30,
        )
        + engine_step_rows(REALISTIC_SEF11_H100, "e2e_step_sef11_h100_l30", DAY15, H100, H100_L30)
        + [
            row
            for name, sides_of in SEF12_H100_SIDES.items()
            for row in realistic_rows(
                REALISTIC_SEF12_H100,
                f"e2e_dsv3_tp8_rank_fp8_realistic_{name}_h100_l30",
                set(),
                date=DAY16,
                prefix_caching=False,
                gpu=H100,
                extra=SEF12_H100_NOTE,
                sides_of=sides_of,
            )
            + engine_step_rows(
                REALISTIC_SEF12_H100,
                f"e2e_step_{name}_h100_l30",
                DAY16,
                H100,
                SEF12_H100_NOTE,
                sides_of,
            )
        ]
        + realistic_rows(
            REALISTIC_SEF13_H100,
            "e2e_dsv3_tp8_rank_fp8_realistic_sef13_abc_h100_l30",
            set(),
            throughput="throughput_sef13_h100_l30",
            date=DAY17,
            prefix_caching=False,
            gpu=H100,
            extra=SEF13_H100_NOTE,
        )
        + realistic_rows(
            REALISTIC_SEF14_PROTO_H100,
            "e2e_dsv3_tp8_rank_fp8_realistic_sef14proto_h100_l30",
            set(),
            throughput="throughput_sef14proto_h100_l30",
            date=DAY18,
            prefix_caching=False,
            gpu=H100,
            extra=SEF14_PROTO_NOTE,
            sides_of={"stock": "stock", "fused_new": "fused", "off_new": "off"},
        )
        + realistic_rows(
            REALISTIC_SEF14_H100,
            "e2e_dsv3_tp8_rank_fp8_realistic_sef14_h100_l30",
            set(),
            throughput="throughput_sef14_h100_l30",
            date=DAY19,
            prefix_caching=False,
            gpu=H100,
            extra=SEF14_H100_NOTE,
        )
        + cut_rows(
            THRESHOLD_SEF15_H100,
            "norm_quant_threshold_sef15_h100_l30",
            DAY20,
            THRESHOLD_SEF15_NOTE,
            THRESHOLD_SEF15_SIDES,
            throughput=True,
        )
        + cut_rows(
            PDL_SEF16_H100, "split_k_pdl_sef16_h100_l30", DAY21, PDL_SEF16_NOTE, PDL_SEF16_SIDES
        )
        + cut_rows(
            PDL_SEF16_H100,
            "router_split_k_sef16_h100_l30",
            DAY21,
            ROUTER_SEF16_NOTE,
            ROUTER_SEF16_SIDES,
        )
        + realistic_rows(
            SEF17_H100,
            "e2e_dsv3_tp8_rank_fp8_realistic_sef17_h100_l30",
            set(),
            date=DAY22,
            prefix_caching=False,
            gpu=H100,
            extra=SEF17_H100_NOTE,
        )
        + engine_step_rows(SEF17_H100, "e2e_step_sef17_h100_l30", DAY22, H100, SEF17_H100_NOTE)
        + cut_rows(
            NORM_QUANT_4K_SEF17,
            "norm_quant_4k_sef17_h100_l30",
            DAY22,
            NORM_QUANT_4K_SEF17_NOTE,
            NORM_QUANT_4K_SEF17_SIDES,
            throughput=True,
        )
        + cut_rows(
            NORM_QUANT_16K_SEF17,
            "norm_quant_16k_sef17_h100_l30",
            DAY24,
            NORM_QUANT_16K_SEF17_NOTE,
            NORM_QUANT_16K_SEF17_SIDES,
        )
        + cut_rows(
            NORM_QUANT_16K_CHUNK8K,
            "norm_quant_16k_chunk8k_sef17_h100_l30",
            DAY25,
            NORM_QUANT_16K_CHUNK8K_NOTE,
            NORM_QUANT_16K_CHUNK8K_SIDES,
        )
        + realistic_rows(
            SEF17_OFF_H100,
            "e2e_dsv3_tp8_rank_fp8_realistic_sef17_off_h100_l30",
            set(),
            date=DAY25,
            prefix_caching=False,
            gpu=H100,
            extra=SEF17_OFF_NOTE,
            sides_of=SEF17_OFF_SIDES,
        )
        + realistic_rows(
            SEF18_H100,
            "e2e_dsv3_tp8_rank_fp8_realistic_sef18_h100_l30",
            set(),
            throughput="throughput_sef18_h100_l30",
            date=DAY26,
            prefix_caching=False,
            gpu=H100,
            extra=SEF18_H100_NOTE,
        )
        + engine_step_rows(
            SEF18_H100,
            "e2e_prefill_step_sef18_h100_l30",
            DAY26,
            H100,
            SEF18_H100_NOTE,
            prefill=True,
        )
    )


# benchmarks/e2e.py on the one-mechanism series, realistic routing. In this session every
# throughput workload and every TTFT batch was timed first without a warm-up at its shapes (the
# script warmed up the ITL prompts and 32 requests only; fixed since): each process's first
# value of those is a cold start and is left out. ITL values were all warm.
REALISTIC = ["e2e_realistic_sef2_a", "e2e_realistic_sef2_b"]
COLD_FIRST = {"ttft_ms", "tok_s"}
# The series with patch 0006 (split-K of the gate-up GEMM at decode sizes), same model and routing,
# ITL/TTFT only, processes stock, stock, fused, fused over three device calls (stock 0; fused 0,
# stock 1; fused 1); every shape warmed up first, so every value counts.
REALISTIC_SPLIT_K = ["e2e_realistic_split_k"]
# The shipped sef3 series (patch 0003's routing kernel at one warp, patch 0006), same model and
# routing, ITL/TTFT only: processes stock, fused (one device call), fused, stock (the next), then
# one of the series with fusion off ("off": patch 0006's SPLIT_K for E=256 applies to it too).
REALISTIC_SEF3 = ["e2e_realistic_sef3b"]
# sef5 (sef4 + patch 0008), throughput: processes stock, fused, stock, fused, one device call each
# (the first stock process also measured ITL/TTFT, which has no fused side here); the last fused
# process ran out of device time after its decode-heavy row. The script still had vLLM's default
# prefix caching on: repetitions after the first found the mixed workload's prompts cached, in
# part, so its values spread.
REALISTIC_SEF5 = ["e2e_realistic_sef5"]
# sef5 again with prefix caching off (uncached TTFT and mixed prefill), ITL/TTFT and both
# throughput workloads in every process, two repetitions each: processes stock, fused, stock, one
# device call each, on one lease (the machine was taken back before the second fused process). The
# eighth session's stock process (three repetitions, an earlier lease) is kept apart in
# e2e_realistic_sef5b_stock_prev and out of the ratios.
REALISTIC_SEF5B = ["e2e_realistic_sef5b"]
# sef6 (sef5 + patch 0009: PDL of the Triton MoE kernels at decode sizes), prefix caching off,
# two repetitions per process, one device call per process. Tenth session, one lease: fused
# (ITL/TTFT and both throughput workloads), stock (the same), fused (ITL/TTFT only: the device
# time left); these engines ran the routing kernel with PDL at every batch size. Eleventh session
# (e2e_realistic_sef6b), the patch as shipped (routing with PDL up to 16 tokens): stock, then,
# on a fresh machine after the first was taken back, fused and the series with fusion off, each
# with ITL/TTFT and both throughput workloads.
REALISTIC_SEF6 = ["e2e_realistic_sef6", "e2e_realistic_sef6b"]
# sef7 (sef6 + patch 0010: the fused shared entries on the auxiliary stream at 256 tokens),
# prefix caching off, ITL/TTFT and both throughput workloads, two repetitions per process, one
# device call per process, processes fused, stock, fused, stock on one lease.
REALISTIC_SEF7 = ["e2e_realistic_sef7"]
# sef8 (sef7 + patches 0011-0012: the down-projection GEMM's own tile in the Triton configs), ITL
# and TTFT only (device time), two repetitions per process, one device call per process,
# processes fused, stock, fused, stock on one lease. The fused engines read the E=257 file the
# tile sweep of the same lease wrote (VLLM_TUNED_CONFIG_FOLDER): the file patch 0011 ships.
# Then (fourteenth session, sef8 as shipped) both throughput workloads, two repetitions per
# process, one pair of processes (stock, fused): the device time did not stretch to A B A B.
REALISTIC_SEF8 = ["e2e_realistic_sef8", "e2e_realistic_sef8_throughput"]
# sef9 (sef8 + patch 0013: the MoE input quantized and the blocks assigned in one launch), ITL and
# TTFT only, two repetitions per process, processes fused, stock on one lease (one pair: the
# device time did not stretch further).
REALISTIC_SEF9 = ["e2e_realistic_sef9"]
# sef9 again (sixteenth session, another machine), batches 1, 4 and 16 (where 0013 acts), ITL and
# TTFT, two repetitions per process, one device call per process but the last pair (one call),
# processes fused, stock, fused, stock, off, fused, stock, off on one lease.
REALISTIC_SEF9_ABAB = ["e2e_realistic_sef9_abab"]
# sef10 (sef9 + patch 0014: the top-k sum in a Triton launch), batches 1, 4 and 16, ITL and TTFT
# (two repetitions per process), then the profile workload (24 decode steps per batch under
# torch.profiler in the engine) in the same process: processes fused, stock, fused, stock, off on
# one lease (fused 0 alone in a call, then two per call); the call of a second off process and a
# third fused one was lost with the machine (it stopped answering).
REALISTIC_SEF10_ABAB = ["e2e_realistic_sef10_abab"]
# sef11 on an H100 (eighteenth-nineteenth session, no H200 lent): the model cut to 30 layers (27
# MoE) to fit 80 GB, ITL/TTFT (two repetitions) and the profile per process, `--capture-sizes 1
# 4 16`; processes fused, fused_aux, fused, fused_aux, stock, stock, off, off. The fused_aux
# processes (patch 0015's window opened to 1 token) ran with patch 0010's buffer race (fixed in
# sef12) and stay out of the rows: only stock, off and fused count.
REALISTIC_SEF11_H100 = ["e2e_realistic_sef11_h100_l30"]
H100 = "NVIDIA H100 80GB HBM3"
# The 61-layer model cut to fit the H100 (the H100 engine runs since sef12): their rows' note.
CUT_NOTE = (
    "61-layer model cut to 30 layers to fit the H100's 80 GB; distinct_experts is the 61-layer "
    "model's probe (the same seeded routers); "
)


def cut_note(note: str, series: str = "") -> dict:
    """The notes of an engine run on the 30-layer H100 cut: ``note`` after CUT_NOTE, and what
    the series side ran where it was not the series as shipped."""
    return {"layers": 30, **({"series": series} if series else {}), "note": CUT_NOTE + note}


H100_L30 = {
    "layers": 30,
    "note": "61-layer model cut to 30 layers to fit the H100's 80 GB; distinct_experts is the "
    "61-layer model's probe (the same seeded routers), not probed on this cut; stock and off "
    "processes ran after the fused ones, not interleaved",
}


# sef12 on an H100 (twentieth session), the same 30-layer cut, ITL/TTFT (two repetitions) and
# the profile per process; four device calls of alternating processes: fused, fused_dense,
# fused, fused_dense; stock, off_dense, stock, off_dense; fused_aux, fused, fused_aux, fused;
# stock, fused_dense. *_dense: VLLM_BLOCK_FP8_SPLIT_K_MAX_TOKENS=16, patch 0016's split-K GEMM,
# sef13's default on Hopper. Rows "sef12": the series as shipped in sef12 (cutlass) against
# stock; rows "sef13": with the split-K GEMM, fusion on and off, against stock. fused_aux (0015's
# window opened to 1 token) is in docs/benchmarks.md only.
REALISTIC_SEF12_H100 = ["e2e_realistic_sef12_h100_l30"]
SEF12_H100_SIDES = {
    "sef12": {"stock": "stock", "fused": "fused"},
    "sef13": {"stock": "stock", "fused_dense": "fused", "off_dense": "off"},
}
SEF12_H100_NOTE = cut_note(
    "processes alternate within each device call, not across calls (stock ran 0.8-1.8% faster "
    "in its last call than in its first)"
)


# sef13 as shipped on an H100 (twenty-first session), the same 30-layer cut, ITL/TTFT at 1, 4
# and 16 and both throughput workloads (two repetitions each), e2e.py's default capture sizes
# (the throughput workload decodes at every size up to 256); processes stock, fused, off in one
# device call, then off, fused, stock in the next.
REALISTIC_SEF13_H100 = ["e2e_realistic_sef13_h100_l30"]
SEF13_H100_NOTE = cut_note("processes stock, fused, off, off, fused, stock over two device calls")


# sef14's two patches before they were patches (twenty-second session), the same 30-layer cut,
# ITL/TTFT at 1, 4 and 16 and both throughput workloads (two repetitions each): sef13 with the
# H200 MoE files under the H100's name (VLLM_TUNED_CONFIG_FOLDER, what patch 0017 ships) and
# the Triton norm + quant kernel up to 16 tokens (a replace= prototype of patch 0018's op; the
# patch runs it up to 64). Processes fused, stock (one call; off cut off by the call's time
# limit), stock, fused (the next), off (ITL/TTFT only, a third call).
REALISTIC_SEF14_PROTO_H100 = ["e2e_realistic_sef13_tnorm_h100cfg_h100_l30"]
SEF14_PROTO_NOTE = cut_note(
    "processes fused, stock, stock, fused over two device calls, off once in a third (ITL/TTFT "
    "only)",
    "sef13 + patch 0017's files (VLLM_TUNED_CONFIG_FOLDER) + patch 0018's kernel up to 16 tokens "
    "(benchmarks/prototypes.py hook, since removed); stock: vLLM 0.32.0 as released",
)
REALISTIC_SEF14_H100 = ["e2e_realistic_sef14_h100_l30"]
SEF14_H100_NOTE = cut_note(
    "processes stock, fused | fused, stock | off | fused over four device calls (the last fused: "
    "ITL/TTFT only, with the profile)",
    "sef14 as built (patches' defaults, no environment); stock: vLLM 0.32.0 as released",
)


def fused_ab_note(series: str, compares: str, stock_column: str, more: str = "") -> dict:
    """The note of an engine A/B on the 30-layer H100 cut where both sides run the series fused
    and the "stock" column is ``stock_column``, not stock vLLM."""
    return {
        "layers": 30,
        "series": f"{series}, shared experts fused",
        "compares": compares,
        "note": CUT_NOTE + "both sides are the series fused: the 'stock' column is "
        f"{stock_column}, not stock vLLM{more}",
    }


# sef15's default threshold of patch 0018 (512 tokens) against sef14's (64) in the engine
# (twenty-fourth session), the same cut: ITL/TTFT at 64 and 256 with the profile, three
# repetitions; processes fused64, fused | fused, fused64 (with both throughput workloads) |
# fused64, fused (throughput only), one device call each pair.
THRESHOLD_SEF15_H100 = ["e2e_threshold_sef15_h100_l30"]
THRESHOLD_SEF15_SIDES = {"fused64": "stock", "fused": "fused"}
THRESHOLD_SEF15_NOTE = fused_ab_note(
    "sef15",
    "VLLM_RMS_NORM_QUANT_TRITON_MAX_TOKENS=64 (sef14's default) / unset (sef15's 512)",
    "patch 0018 up to 64 tokens",
)

# Patch 0019 (sef16: PDL of the split-K GEMM up to 16 tokens) in the engine (twenty-fifth session),
# the same cut, fused on sef16's defaults against fused with PDL_MAX_TOKENS=0 (set=): ITL/TTFT at
# 1 / 4 / 16 with the profile, three repetitions; processes fused, fused_nopdl, fused_router |
# fused_nopdl, fused | fused_router (ITL only). fused_router: the router's GEMM by the split-K
# Triton prototype (benchmarks/prototypes.py:gate_linear_split_k, ROUTER_SPLIT_K="16/8/pdl").
PDL_SEF16_H100 = ["e2e_pdl_router_sef16_h100_l30"]
PDL_SEF16_SIDES = {"fused_nopdl": "stock", "fused": "fused"}
PDL_SEF16_NOTE = fused_ab_note(
    "sef16",
    "split_k.PDL_MAX_TOKENS=0 (no PDL) / sef16's 16 (patch 0019)",
    "patch 0019 turned off",
)
ROUTER_SEF16_SIDES = {"fused": "stock", "fused_router": "fused"}
ROUTER_SEF16_NOTE = fused_ab_note(
    "sef16",
    "GateLinear's F.linear (cuBLAS) / the split-K Triton prototype with PDL (16/8/pdl), "
    "not shipped",
    "the series as shipped",
    "; the prototype's two processes ran last in their calls (the first with the profile, the "
    "second ITL only)",
)

# sef17 as built on an H100 (twenty-sixth session), the same cut: ITL/TTFT at 1 / 4 / 16, three
# repetitions; processes fused, stock (both with the profile) | stock, fused (ITL/TTFT only).
SEF17_H100 = ["e2e_sef17_vs_stock_h100_l30"]
SEF17_H100_NOTE = cut_note(
    "processes fused, stock | stock, fused over two device calls (the profile in the first only)",
    "sef17 as built (patches' defaults, no environment); stock: vLLM 0.32.0 as released",
)
# Patch 0018 to 4,096 tokens against sef17's 512, the same session and cut: ITL/TTFT at 256 and
# both throughput workloads; processes fused4k, fused | fused, fused4k (throughput only). Its
# prefill steps were 16,384 tokens, above both thresholds (docs/benchmarks.md, "sef17 as built").
NORM_QUANT_4K_SEF17 = ["e2e_fused4k_sef17_h100_l30"]
NORM_QUANT_4K_SEF17_SIDES = {"fused": "stock", "fused4k": "fused"}
NORM_QUANT_4K_SEF17_NOTE = fused_ab_note(
    "sef17",
    "VLLM_RMS_NORM_QUANT_TRITON_MAX_TOKENS unset (512) / 4096",
    "patch 0018 up to 512 tokens (sef17's default)",
    "; inconclusive by design: the engine's steps held up to 16,384 tokens (vLLM's offline "
    "default on this GPU), so the prefill steps ran vLLM's op in both variants",
)
# Patch 0018 to 16,384 tokens (the offline engine's whole prefill chunk on this GPU) against
# sef17's 512, the same cut: ITL/TTFT at 256, three repetitions; three pairs of processes, one
# per device call and session: fused16k then fused (twenty-eighth), fused then fused16k
# (twenty-ninth), fused16k then fused (thirtieth).
NORM_QUANT_16K_SEF17 = [
    "e2e_fused16k_sef17_h100_l30",
    "e2e_fused16k_order2_sef17_h100_l30",
    "e2e_fused16k_order3_sef17_h100_l30",
]
NORM_QUANT_16K_SEF17_SIDES = {"fused": "stock", "fused16k": "fused"}
NORM_QUANT_16K_SEF17_NOTE = fused_ab_note(
    "sef17",
    "VLLM_RMS_NORM_QUANT_TRITON_MAX_TOKENS unset (512) / 16384",
    "patch 0018 up to 512 tokens (sef17's default)",
    "; three pairs of processes (fused16k first, fused first, fused16k first), each on its own "
    "H100 lease",
)
# The same A/B at `vllm serve`'s prefill chunk (thirtieth session): both variants with
# engine=max_num_batched_tokens=8192; one pair of processes, fused8k (512) then fused8k16.
NORM_QUANT_16K_CHUNK8K = ["e2e_fused16k_chunk8k_sef17_h100_l30"]
NORM_QUANT_16K_CHUNK8K_SIDES = {"fused8k": "stock", "fused8k16": "fused"}
NORM_QUANT_16K_CHUNK8K_NOTE = fused_ab_note(
    "sef17",
    "VLLM_RMS_NORM_QUANT_TRITON_MAX_TOKENS unset (512) / 16384, max_num_batched_tokens=8192",
    "patch 0018 up to 512 tokens (sef17's default)",
    "; the engine's prefill chunk 8,192 tokens (vllm serve's default); one pair of processes",
)
# sef17 with fusion off beside fused and stock (thirtieth session), the same cut: ITL/TTFT at
# 1 / 4 / 16, three repetitions; processes unfused, fused | fused, unfused | stock, one device
# call each on one lease.
SEF17_OFF_H100 = ["e2e_sef17_off_h100_l30"]
SEF17_OFF_SIDES = {"stock": "stock", "fused": "fused", "unfused": "off"}
SEF17_OFF_NOTE = cut_note(
    "processes unfused, fused | fused, unfused | stock over three device calls, one lease; "
    "one stock process",
    "sef17 as built (patches' defaults); off: the series with the setting unset; stock: vLLM "
    "0.32.0 as released",
)

# sef18 as built against stock (thirty-first session), the same cut: ITL/TTFT and both throughput
# workloads at 1 / 4 / 16 (two repetitions), processes stock, fused | fused, stock; then ITL/TTFT
# at 1 / 4 (three repetitions) with the TTFT requests' step profiled, stock, fused; then ITL/TTFT
# at 64 / 256 (two repetitions), fused, stock; one device call each, one lease.
SEF18_H100 = ["e2e_sef18_vs_stock_h100_l30"]
SEF18_H100_NOTE = cut_note(
    "processes stock, fused | fused, stock | stock, fused (1 / 4, the prefill profiled) | fused, "
    "stock (64 / 256) over four device calls, one lease",
    "sef18 as built (patches' defaults, no environment); stock: vLLM 0.32.0 as released",
)


def probe_distinct() -> dict[int, float]:
    """The mean distinct experts per MoE layer per decode step by batch size, from the routing
    probe of the realistic routers (``benchmarks/e2e.py --probe``)."""
    return {
        r["batch"]: round(r["mean"], 1)
        for r in map(json.loads, (RAW / "routing_probe_sef2.jsonl").read_text().splitlines())
    }


def side_columns(sides: dict[str, list[float]], digits: int) -> dict:
    """``stock`` and ``fused``: the medians of each variant's repetitions, their ratio and the
    values, rounded to ``digits``."""
    stock, fused = statistics.median(sides["stock"]), statistics.median(sides["fused"])
    return {
        "stock": round(stock, digits),
        "fused": round(fused, digits),
        # tokens/s: higher is better, the ratio stays fused / stock.
        "ratio": round(fused / stock, 3),
        "fused_setting": "1",
        "stock_values": [round(v, digits) for v in sides["stock"]],
        "fused_values": [round(v, digits) for v in sides["fused"]],
    }


def realistic_rows(
    files: list[str],
    name: str,
    cold_first: set[str],
    throughput: str = "throughput",
    date: str = "",
    prefix_caching: bool = True,
    gpu: str = GPU,
    extra: dict | None = None,
    sides_of: dict[str, str] | None = None,
) -> list[dict]:
    """Summary rows of benchmarks/e2e.py's raw files: e2e rows named ``name``, throughput
    rows named ``throughput``. ``prefix_caching``: the run had vLLM's prefix caching on (the
    script did until sef5), so its TTFT repetitions after each batch's first were cache hits:
    those rows say so. ``sides_of``: the raw variants that count, by the side (stock, off,
    fused) each stands for; default: each variant its own name."""
    distinct = probe_distinct()
    values: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    processes: dict[tuple, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for file in files:
        for r in map(json.loads, (RAW / f"{file}.jsonl").read_text().splitlines()):
            if r["scenario"].endswith("_profile"):  # engine_step_rows, docs
                continue
            side = side_of(r["variant"], sides_of)
            if side is None:
                continue
            key = (r["scenario"], r["metric"], r.get("batch"), r.get("workload"))
            kept = r["values"][1:] if r["metric"] in cold_first else r["values"]
            values[key][side].extend(kept)
            processes[key][side] += 1
    rows = []
    for key in sorted(values, key=lambda k: (k[0], k[1], k[2] or 0, k[3] or "")):
        scenario, metric, batch, workload = key
        sides = values[key]
        if "stock" not in sides or "fused" not in sides:
            continue
        row = {
            "scenario": name if scenario == "e2e" else throughput,
            "dtype": "fp8",
            "tp_equiv": 8,
            "batch": batch if batch is not None else WORKLOAD_REQUESTS[workload],
            "metric": metric,
            **side_columns(sides, 3),
            "processes": dict(processes[key]),
            **off_columns(sides["off"], statistics.median(sides["stock"])),
            "routing": "realistic",
            "gpu": gpu,
            "vllm": VLLM,
            "date": date or DAY4,
            **(extra or {}),
        }
        if workload is not None:
            row["workload"] = workload
        if prefix_caching and metric == "ttft_ms":
            row["prefix_cache"] = CACHED_TTFT
        if prefix_caching and workload == "mixed":
            row["prefix_cache"] = "partial hits: the same prompts each repetition"
        if scenario == "e2e":
            row["distinct_experts"] = distinct[batch]
        rows.append(row)
    return rows


def cut_rows(
    files: list[str], name: str, date: str, note: dict, sides: dict, throughput: bool = False
) -> list[dict]:
    """The rows of an engine A/B on the 30-layer H100 cut (fused against fused, ``sides`` says
    which variant is which column): e2e_NAME (ITL, TTFT), throughput_NAME where ``throughput``,
    and e2e_step_NAME_busy / _span where the processes ran the profile."""
    return realistic_rows(
        files,
        f"e2e_{name}",
        set(),
        throughput=f"throughput_{name}" if throughput else "throughput",
        date=date,
        prefix_caching=False,
        gpu=H100,
        extra=note,
        sides_of=sides,
    ) + engine_step_rows(files, f"e2e_step_{name}", date, H100, note, sides)


def side_of(variant: str, sides_of: dict[str, str] | None) -> str | None:
    """The side (stock, off, fused) a raw variant's rows count for; None: left out."""
    return variant if sides_of is None else sides_of.get(variant)


def engine_step_rows(
    files: list[str],
    name: str,
    date: str,
    gpu: str = GPU,
    extra: dict | None = None,
    sides_of: dict[str, str] | None = None,
    prefill: bool = False,
) -> list[dict]:
    """Rows of benchmarks/e2e.py's profile workload: per decode step, the GPU's busy time (the
    union of the kernels' intervals; ``measure`` "busy") and the span from the first kernel's start
    to the last one's end ("span"), median over processes; scenario ``name``_busy / _span.
    ``prefill``: the prefill_profile workload's instead (the TTFT requests' one engine step), with
    "wall" beside them: the host's time for that one-token generation, under the profiler."""
    distinct = probe_distinct()
    scenario = "e2e_prefill_profile" if prefill else "e2e_profile"
    measures = ("busy", "span", "wall") if prefill else ("busy", "span")
    values: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    prompt_tokens: dict[int, int] = {}  # the prefill's prompt length by batch
    for file in files:
        for r in map(json.loads, (RAW / f"{file}.jsonl").read_text().splitlines()):
            side = side_of(r["variant"], sides_of)
            if r["scenario"] != scenario or side is None:
                continue
            if prefill:
                prompt_tokens[r["batch"]] = r["prompt_tokens"]
            for measure in measures:
                us = r["wall_ms"] * 1e3 if measure == "wall" else r[f"{measure}_us"]
                values[(measure, r["batch"])][side].append(us)
    rows = []
    for (measure, batch), sides in sorted(values.items()):
        rows.append(
            {
                "scenario": f"{name}_{measure}",
                "dtype": "fp8",
                "tp_equiv": 8,
                "batch": batch,
                "metric": "step_us",
                "measure": measure,
                **side_columns(sides, 1),
                **off_columns(sides["off"], statistics.median(sides["stock"])),
                "routing": "realistic",
                **(
                    {"prompt_tokens": prompt_tokens[batch]}
                    if prefill
                    else {"distinct_experts": distinct[batch]}
                ),
                "gpu": gpu,
                "vllm": VLLM,
                "date": date,
                **(extra or {}),
            }
        )
    return rows


def off_columns(values: list[float], stock: float) -> dict:
    """The series with fusion off beside stock and fused, where a run measured it."""
    if not values:
        return {}
    off = statistics.median(values)
    return {
        "off": round(off, 3),
        "off_ratio": round(off / stock, 3),
        "off_values": [round(v, 3) for v in values],
    }


WORKLOAD_REQUESTS = {"decode_heavy": 256, "mixed": 512}
# The label of a TTFT row timed with prefix caching on and the same prompts in each repetition.
CACHED_TTFT = "hits: the same prompts each repetition, prefix caching on"


RATIO_LINES = [
    # scenario, dtype, TP equivalent, label
    (
        "e2e_dsv3_tp8_rank_fp8_realistic_sef10_abab",
        "fp8",
        8,
        "end-to-end decode ITL, FP8, TP8 rank, realistic routing, sef10, A B A B (1-16)",
    ),
    (
        "e2e_dsv3_tp8_rank_fp8_realistic_sef9_abab",
        "fp8",
        8,
        "end-to-end decode ITL, FP8, TP8 rank, realistic routing, sef9, A B A B A B (1-16)",
    ),
    (
        "e2e_dsv3_tp8_rank_fp8_realistic_sef9",
        "fp8",
        8,
        "end-to-end decode ITL, FP8, TP8 rank, realistic routing, sef9 (quantize + align), 1 pair",
    ),
    (
        "e2e_dsv3_tp8_rank_fp8_realistic_sef8",
        "fp8",
        8,
        "end-to-end decode ITL, FP8, TP8 rank, realistic routing, sef8 (down tiles)",
    ),
    (
        "e2e_dsv3_tp8_rank_fp8_realistic_sef7",
        "fp8",
        8,
        "end-to-end decode ITL, FP8, TP8 rank, realistic routing, sef7 (aux stream at 256)",
    ),
    (
        "e2e_dsv3_tp8_rank_fp8_realistic_sef6",
        "fp8",
        8,
        "end-to-end decode ITL, FP8, TP8 rank, realistic routing, sef6 (PDL)",
    ),
    (
        "e2e_dsv3_tp8_rank_fp8_realistic_sef5b",
        "fp8",
        8,
        "end-to-end decode ITL, FP8, TP8 rank, realistic routing, sef5",
    ),
    ("moe_layer", "fp8", 8, "MoE layer, FP8 block, TP8 rank (tuned E=257)"),
    ("moe_layer", "bf16", 8, "MoE layer, bf16, TP8 rank (tuned E=257)"),
    ("moe_layer", "fp8", 1, "MoE layer, FP8 block, TP1 (tuned E=257)"),
    ("moe_layer", "bf16", 1, "MoE layer, bf16, TP1 (tuned E=257)"),
    ("moe_layer_sef2", "fp8", 8, "MoE layer, FP8 block, TP8 rank, one-mechanism series"),
    ("moe_layer_split_k", "fp8", 8, "MoE layer, FP8 block, TP8 rank, split-K (patch 0006)"),
    (
        "e2e_dsv3_tp8_rank_fp8_realistic_sef3",
        "fp8",
        8,
        "end-to-end decode ITL, FP8, TP8 rank, realistic routing, sef3 (1-warp routing)",
    ),
    (
        "e2e_dsv3_tp8_rank_fp8_realistic_split_k",
        "fp8",
        8,
        "end-to-end decode ITL, FP8, TP8 rank, realistic routing, split-K",
    ),
    (
        "e2e_dsv3_tp8_rank_fp8_realistic",
        "fp8",
        8,
        "end-to-end decode ITL, FP8, TP8 rank, realistic routing (sef2)",
    ),
    ("e2e_dsv3_tp8_rank_fp8", "fp8", 8, "end-to-end decode ITL, FP8, TP8 rank (dummy routing)"),
    (
        "e2e_dsv3_tp8_rank_fp8_max_tokens_128",
        "fp8",
        8,
        "end-to-end decode ITL, FP8, TP8 rank, MAX_TOKENS=128",
    ),
    ("e2e_dsv3_tp2_full_16_layers_fp8", "fp8", 2, "end-to-end decode ITL, FP8, TP=2 (2 GPUs)"),
    (
        "e2e_dsv3_tp2_full_16_layers_fp8_stock_tuned",
        "fp8",
        2,
        "end-to-end decode ITL, FP8, TP=2, stock with a tuned E=256 file",
    ),
]


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    for scenario, dtype, tp, label in RATIO_LINES:
        metric = "itl_ms" if scenario.startswith("e2e") else "moe_us"
        pts = sorted(
            (r["batch"], r["ratio"])
            for r in rows
            if (r["scenario"], r["dtype"], r["tp_equiv"], r["metric"])
            == (scenario, dtype, tp, metric)
        )
        style = "-" if scenario.startswith("e2e") else ":"
        ax.plot(*zip(*pts, strict=False), marker="o", ls=style, label=label)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.axhline(0.9, color="gray", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch (tokens per step)")
    ax.set_ylabel("fused / stock time")
    ax.set_title("H200, DeepSeek-V3 shapes")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out / "ratio_vs_batch.png", dpi=110)

    fig, ax = plt.subplots(figsize=(7, 4))
    for dtype, tp in (("bf16", 8), ("fp8", 8), ("bf16", 1), ("fp8", 1)):
        pts = sorted(
            (r["batch"], r["fused_over_floor"])
            for r in rows
            if (r["scenario"], r["dtype"], r["tp_equiv"]) == ("moe_layer", dtype, tp)
        )
        label = f"fused MoE layer / HBM floor, {dtype}, TP{tp}"
        ax.plot(*zip(*pts, strict=False), marker="o", label=label)
    ax.axhline(1.3, color="gray", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch (tokens per step)")
    ax.set_ylabel("time / floor")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "floor_vs_batch.png", dpi=110)


def split_k_rows() -> list[dict]:
    """Patch 0006 at layer level: the whole MoE layer (CUDA-graph replay) per variant with the
    gate-up GEMM unsplit and with the SPLIT_K the series' configs ship. "stock" is the series
    with fusion off and SPLIT_K 1, which runs stock vLLM's kernels and tiles."""
    runs = json.loads((RAW / "layer_split_k_sef3.json").read_text())["rows"]
    by = {(r["variant"], r["batch"]): r for r in runs}
    rows = []
    for m in sorted({r["batch"] for r in runs}):
        off, fused = by[("off", m)], by[("fused", m)]
        off_k, fused_k = off["file_split_k"], fused["file_split_k"]
        stock = off["us_by_split_k"]["1"]
        off_us, fused_us = off["us_by_split_k"][str(off_k)], fused["us_by_split_k"][str(fused_k)]
        rows.append(
            {
                "scenario": "moe_layer_split_k",
                "dtype": "fp8",
                "tp_equiv": 8,
                "batch": m,
                "metric": "moe_us",
                "stock": round(stock, 2),
                "off": round(off_us, 2),
                "fused": round(fused_us, 2),
                "fused_unsplit": round(fused["us_by_split_k"]["1"], 2),
                "ratio": round(fused_us / stock, 3),
                "off_ratio": round(off_us / stock, 3),
                "split_k": {"off": off_k, "fused": fused_k},
                "gpu": GPU,
                "vllm": VLLM,
                "date": DAY4,
            }
        )
    return rows


def input_quant_rows() -> list[dict]:
    """A rejected variant, kept measured: the gate-up GEMM quantizing the FP8 activations itself
    (a patch 0007 tried in this repository's history, commit 4b20b8b) instead of the separate
    per_token_group_quant launch. stock / fused are the series as shipped (fusion off / on,
    separate quantization); *_in_gemm the same layers with the quantization in the GEMM."""
    runs = json.loads((RAW / "layer_input_quant_rejected.json").read_text())["rows"]
    by = {(r["variant"], r["batch"]): r for r in runs}
    rows = []
    for m in sorted({r["batch"] for r in runs}):
        off, fused = by[("off", m)], by[("fused", m)]
        rows.append(
            {
                "scenario": "moe_layer_input_quant_rejected",
                "dtype": "fp8",
                "tp_equiv": 8,
                "batch": m,
                "metric": "moe_us",
                "stock": round(off["separate_us"], 2),
                "fused": round(fused["separate_us"], 2),
                "ratio": round(fused["separate_us"] / off["separate_us"], 3),
                "off_in_gemm": round(off["in_gemm_us"], 2),
                "fused_in_gemm": round(fused["in_gemm_us"], 2),
                "in_gemm_over_separate": {
                    "off": round(off["ratio"], 3),
                    "fused": round(fused["ratio"], 3),
                },
                "gpu": GPU,
                "vllm": VLLM,
                "date": DAY4,
            }
        )
    return rows


def input_quant_sef8_rows() -> list[dict]:
    """The same variant re-tried on sef8 (commit 7e52c79, reverted in 6f7019a: patch 0013, the
    quantization in the gate-up GEMM up to 256 tokens, fused shared experts' aux-stream launches
    included), in one process (``benchmarks/moe_layer.py input-quant`` in that commit): each layer
    with the input quantized in a launch before the GEMM (``stock``) and in the GEMM (``fused``),
    alternating three times. Rejected again: 1.36-3.19x slower."""
    compares = "MoE input quantized before the gate-up GEMM / in it (rejected, patch 0013 tried)"
    return ab_rows(
        "layer_input_quant_rejected_sef8.json",
        "moe_layer_input_quant_rejected_sef8",
        "before_gemm",
        "in_gemm",
        compares,
        DAY11,
    )


def quantize_align_rows() -> list[dict]:
    """Patch 0013 in one process (``benchmarks/moe_layer.py quantize-align``): each layer with
    the MoE input quantized by the prepare step and the blocks assigned as before (``stock``:
    ``separate``) and both in one launch (``fused``: ``one_launch``), alternating twice. First
    as shipped (the assignment naive or aligned as vLLM picks it), then the first version, which
    aligned from 2 tokens (rejected: slower at 2-4 tokens). Also the layer with the naive and the
    aligned assignment (moe_align_block_size's launches) on sef8, the measurement that preceded
    it (``benchmarks/moe_layer.py assignment``)."""
    return (
        ab_rows(
            "layer_quantize_align_sef9.json",
            "moe_layer_quantize_align",
            "separate",
            "one_launch",
            "MoE input quantized and blocks assigned apart / in one launch (patch 0013)",
            DAY12,
        )
        + ab_rows(
            "layer_quantize_align_aligned_rejected_sef9.json",
            "moe_layer_quantize_align_aligned_rejected",
            "separate",
            "one_launch",
            "apart / in one launch aligned from 2 tokens (rejected first version of 0013)",
            DAY12,
        )
        + ab_rows(
            "layer_assignment_sef8.json",
            "moe_layer_assignment",
            "naive",
            "aligned",
            "naive / aligned block assignment (moe_align_block_size), sef8",
            DAY12,
        )
    )


def moe_sum_rows() -> list[dict]:
    """Patch 0014 in one process (``benchmarks/moe_layer.py moe-sum``): each layer with the
    top-k outputs summed by ops.moe_sum (``stock``) and by moe_sum_triton (``fused``),
    alternating twice."""
    return ab_rows(
        "layer_moe_sum_sef10.json",
        "moe_layer_moe_sum",
        "ops_moe_sum",
        "triton",
        "top-k outputs summed by ops.moe_sum / by the Triton launch (patch 0014)",
        DAY13,
    )


def gate_routing_rows() -> list[dict]:
    """A rejected variant, kept measured (sixteenth session): the router GEMM in the fused
    routing's launch. ``stock``: F.linear (cuBLAS) then patch 0003's routing kernel; ``fused``:
    the fastest one-launch configuration of three grids at each batch size. Microbenchmark of
    the router alone (CUDA-graph replays), not the layer."""
    raw = json.loads((RAW / "routing_gate_in_launch_rejected_sef9.json").read_text())
    best: dict[int, tuple[float, str]] = {}
    stock: dict[int, list[float]] = defaultdict(list)
    for run in raw["runs"]:
        for r in run["rows"]:
            m = r["batch"]
            stock[m].append(r["stock"]["median_us"])
            for name, v in r.items():
                full = name.startswith("one ") and '"stop"' not in name
                if full and v["median_us"] < best.get(m, (float("inf"), ""))[0]:
                    best[m] = (v["median_us"], name[4:])
    return [
        {
            "scenario": "routing_gate_in_launch_rejected",
            "dtype": "bf16",
            "tp_equiv": 8,
            "batch": m,
            "metric": "moe_us",
            "stock": round(statistics.median(stock[m]), 2),
            "fused": round(best[m][0], 2),
            "ratio": round(best[m][0] / statistics.median(stock[m]), 3),
            "compares": "router GEMM + routing: F.linear then the routing kernel / one launch",
            "config": json.loads(best[m][1]),
            "stock_values": stock[m],
            "gpu": GPU,
            "vllm": VLLM,
            "date": DAY13,
        }
        for m in sorted(best)
    ]


def ab_rows(
    file: str, scenario: str, before: str, after: str, compares: str, date: str, gpu: str = GPU
):
    """Rows of a ``benchmarks/moe_layer.py`` A/B in one process (``alternate``): ``stock`` is the
    setting ``before``, ``fused`` the setting ``after``; one scenario per layer variant."""
    return [
        {
            "scenario": f"{scenario}_{r['variant']}",
            "dtype": "fp8",
            "tp_equiv": 8,
            "batch": r["batch"],
            "metric": "moe_us",
            "stock": round(r[before], 2),
            "fused": round(r[after], 2),
            "ratio": round(r[after] / r[before], 3),
            "compares": compares,
            "stock_values": [round(v, 2) for v in r[f"{before}_values"]],
            "fused_values": [round(v, 2) for v in r[f"{after}_values"]],
            "gpu": gpu,
            "vllm": VLLM,
            "date": date,
        }
        for r in json.loads((RAW / file).read_text())["rows"]
    ]


def naive_fill_rows() -> list[dict]:
    """Patch 0008 at layer level, in one process: each layer with the padded-count fill that stock
    vLLM launches on its naive assignment path (``stock``) and without it, as the series runs
    (``fused``), alternating; one scenario per layer, fusion off and on. At 8 tokens the fused
    layer (9 slots of 257 experts) is past the naive path's limit: no fill either way."""
    compares = "with stock's padded-count fill / without it (patch 0008)"
    return ab_rows(
        "layer_naive_fill_sef5.json",
        "moe_layer_naive_fill",
        "with_fill",
        "without_fill",
        compares,
        DAY5,
    )


def pdl_rows() -> list[dict]:
    """Patch 0009 at layer level, in one process: each layer with programmatic dependent launch
    off (``stock``) and on (``fused``), alternating; one scenario per layer, fusion off and on. The
    GEMMs with PDL on the naive assignment path only and the routing at every size
    (``layer_pdl_sef6``), the patch as shipped, routing up to 16 tokens (``layer_pdl_sef6b``,
    eleventh session), and the first version, PDL for every batch size (rejected: 1-5% slower
    from 16 tokens up)."""
    compares = "programmatic dependent launch off / on (patch 0009)"
    return [
        row
        for file, scenario, day in (
            ("layer_pdl_sef6.json", "moe_layer_pdl", DAY7),
            ("layer_pdl_sef6b.json", "moe_layer_pdl_shipped", DAY8),
            ("layer_pdl_all_sizes_rejected.json", "moe_layer_pdl_all_sizes_rejected", DAY7),
        )
        for row in ab_rows(file, scenario, "pdl_off", "pdl_on", compares, day)
    ]


def shared_stream_rows() -> list[dict]:
    """Patch 0010 at layer level, in one process: each layer with the fused shared entries in
    the routed GEMMs' launches (``stock``) and in launches of their own on the auxiliary stream
    (``fused``) at every batch size up to vLLM's stream threshold (256; at 512 neither moves
    them), alternating twice; one scenario per layer (the unfused layer has nothing to move: its
    ratio is the alternation's noise). Two runs: 32-512 tokens, then 160-224."""
    compares = "fused shared entries in the routed launches / on the aux stream (patch 0010)"
    return [
        row
        for file in ("layer_shared_stream_sef7.json", "layer_shared_stream_sef7_refine.json")
        for row in ab_rows(
            file, "moe_layer_shared_stream", "one_launch", "aux_stream", compares, DAY9
        )
    ] + ab_rows(
        "layer_shared_stream_proto_split_k_h100.json",
        "moe_layer_shared_stream_proto_split_k",
        "one_launch",
        "aux_stream",
        "sef13, the shared entries in the routed launches / benchmarks/prototypes.py"
        ":shared_expert_split_k on the aux stream (patch 0016's GEMM; rejected)",
        DAY17,
        H100,
    )


def tile_rows() -> list[dict]:
    """Patches 0011-0012 at layer level (``benchmarks/moe_layer.py tiles``), in one process: the
    layer with the config file's tile (``stock``) and the sweep's fastest (``fused``) for one GEMM,
    alternating three times; one scenario per GEMM and layer (fused E=257, unfused E=256). Where the
    file's tile was the fastest, one timing of it stands on both sides."""
    return [
        row
        for file, scenario, gemm in (
            ("layer_tiles_w2_sef8.json", "moe_layer_tiles_w2", "down-projection"),
            ("layer_tiles_w2_off_sef8.json", "moe_layer_tiles_w2", "down-projection"),
            ("layer_tiles_w13_sef8.json", "moe_layer_tiles_w13", "gate-up (down tiles in place)"),
        )
        for row in ab_rows(
            file, scenario, "file", "best", f"{gemm} tile: the file's / the sweep's best", DAY10
        )
    ]


def dense_fp8_rows() -> list[dict]:
    """``benchmarks/dense_fp8.py`` (sef11, H100): per batch size, the decode step's dense block-FP8
    GEMMs (attention's projections and the first layers' MLPs, 189 launches; the unfused shared
    expert's two, 116) with vLLM's cutlass kernel (``stock``) against vLLM's Triton kernel with
    tuned tiles and against the split-K prototype (``fused``), each in CUDA graphs over weight
    copies larger than L2; ``floor_us``: the weights' bytes at the measured copy bandwidth."""
    data = json.loads((RAW / "dense_fp8_sef11_h100.json").read_text())
    step = {(r["gemms"], r["m"], r["kernel"]): r for r in data["step"]}
    rows = []
    for (gemms, m, kernel), r in sorted(step.items()):
        if kernel not in ("triton_tuned", "split_k"):
            continue
        cutlass = step[(gemms, m, "cutlass")]["step_us"]
        rows.append(
            {
                "scenario": f"dense_fp8_step_{kernel}"
                + ("_shared_expert" if gemms == "shared expert" else ""),
                "dtype": "fp8",
                "tp_equiv": 8,
                "batch": m,
                "metric": "step_us",
                "stock": round(cutlass, 1),
                "fused": round(r["step_us"], 1),
                "ratio": round(r["step_us"] / cutlass, 3),
                "compares": f"{gemms}: vLLM's cutlass block-FP8 kernel / {kernel}",
                "floor_us": round(r["floor_us"], 1),
                "gpu": H100,
                "vllm": VLLM,
                "date": DAY15,
            }
        )
    return rows


def h100_config_rows() -> list[dict]:
    """Patch 0017 at layer level (``benchmarks/moe_layer.py bench``, sef13, H100): the fused and
    the unfused layer with vLLM's default tiles (``stock``; no H100 file for these shapes) and
    with the H200 files under the H100's name (``fused``: what patch 0017 ships), two processes
    in consecutive device calls; one scenario per layer."""
    default, files = (
        json.loads((RAW / f"layer_bench_sef13_h100_{name}_configs.json").read_text())["rows"]
        for name in ("default", "h200")
    )
    return [
        {
            "scenario": f"moe_layer_h100_configs_{layer}",
            "dtype": "fp8",
            "tp_equiv": 8,
            "batch": before["batch"],
            "metric": "moe_us",
            "stock": round(before[side], 2),
            "fused": round(after[side], 2),
            "ratio": round(after[side] / before[side], 3),
            "compares": f"{layer} layer: default tiles / patch 0017's H100 files",
            "floor_us": round(after["floor_us"], 2),
            "gpu": H100,
            "vllm": VLLM,
            "date": DAY18,
        }
        for before, after in zip(default, files, strict=True)
        for layer, side in (("unfused", "stock"), ("fused", "fused"))
    ]


def norm_quant_rows(file: str, prefix: str, date: str, kernel: str) -> list[dict]:
    """Patch 0018 at kernel level (``benchmarks/norm_quant.py``, H100): vLLM's
    ``_C.rms_norm_per_block_quant`` (``stock``) and the Triton kernel (``fused``), us per call in
    CUDA graphs of back-to-back calls; one scenario ``prefix``_shape per DeepSeek-V3 shape.
    ``kernel``: whose Triton kernel ran (the prototype, the patch's)."""
    return [
        {
            "scenario": f"{prefix}_{r['shape']}",
            "dtype": "fp8",
            "tp_equiv": 8,
            "batch": r["tokens"],
            "metric": "kernel_us",
            "stock": round(r["vllm_cuda_us"], 2),
            "fused": round(r["triton_us"], 2),
            "ratio": round(r["ratio"], 3),
            "compares": f"hidden {r['hidden']}"
            + (" with the residual add" if r["residual"] else "")
            + f": vLLM's CUDA op / {kernel}",
            "launches_per_step": r["launches_per_step"],
            "quantized_values_differing": round(r["quantized_values_differing"], 5),
            "residual_equal": r["residual_equal"],
            "gpu": H100,
            "vllm": VLLM,
            "date": date,
        }
        for r in json.loads((RAW / f"{file}.json").read_text())["rows"]
    ]


def dense_pdl_rows(file: str, date: str) -> list[dict]:
    """Attention's producer -> split-K GEMM pairs (``benchmarks/dense_pdl.py``, H100), us per
    pair in CUDA graphs: as shipped (``stock``) against the prototype kernels with programmatic
    dependent launch (scenario dense_pdl_pN_PAIR_pdl), with PDL and the first N K blocks of the
    weights prefetched into L2 (..._pdl_prefetch; one run per N), and for o_proj the GEMM
    quantizing its own input (..._fused_quant, not bit-equal: rejected)."""
    data = json.loads((RAW / f"{file}.json").read_text())
    rows = []
    for r in data["rows"]:
        pair = r["pair"].replace("->", "_")
        variants = ["pdl", "pdl_prefetch"] + (["fused_quant"] if "fused_quant_us" in r else [])
        for variant in variants:
            rows.append(
                {
                    "scenario": f"dense_pdl_p{r['prefetch_blocks']}_{pair}_{variant}",
                    "dtype": "fp8",
                    "tp_equiv": 8,
                    "batch": r["tokens"],
                    "metric": "kernel_us",
                    "stock": round(r["base_us"], 2),
                    "fused": round(r[f"{variant}_us"], 2),
                    "ratio": round(r[f"{variant}_us"] / r["base_us"], 3),
                    "compares": f"{r['pair']} (N {r['n']}, K {r['k']}): patches 0016/0018 as "
                    f"shipped / prototype {variant}",
                    "equal_to_shipped": r["equal_to_base"][variant],
                    "pairs_per_step": r["pairs_per_step"],
                    "gpu": data["gpu"],
                    "vllm": VLLM,
                    "date": date,
                }
            )
    return rows


def router_gemm_rows(file: str, date: str) -> list[dict]:
    """The router's bf16 GEMM (``benchmarks/router_gemm.py``, H100), us per producer -> GEMM
    pair in CUDA graphs: cuBLAS's F.linear (``stock``, what GateLinear runs) against the split-K
    Triton prototype with PDL, the engine A/B's tile (16/8) and the fastest of the kernel rows
    per shape and size (not shipped)."""
    data = json.loads((RAW / f"{file}.json").read_text())
    by_case: dict[tuple[str, int], dict[str, dict]] = {}
    for r in data["rows"]:
        by_case.setdefault((r["shape"], r["tokens"]), {})[r["variant"]] = r
    rows = []
    for (shape, tokens), variants in by_case.items():
        linear = variants["linear"]
        split_k = {v: r for v, r in variants.items() if v.startswith("split_k_")}
        fastest = min(split_k, key=lambda v: split_k[v]["us"])
        for variant in dict.fromkeys(["split_k_16_8_pdl", fastest]):
            r = split_k[variant]
            kind = "engine" if variant == "split_k_16_8_pdl" else "fastest"
            rows.append(
                {
                    "scenario": f"router_gemm_{shape}_{kind}",
                    "dtype": "bf16",
                    "tp_equiv": 8,
                    "batch": tokens,
                    "metric": "kernel_us",
                    "stock": round(linear["us"], 2),
                    "fused": round(r["us"], 2),
                    "ratio": round(r["us"] / linear["us"], 3),
                    "compares": f"router GEMM N {r['n']}, K {r['k']} after its producer: "
                    f"F.linear (cuBLAS) / prototype {variant}",
                    "logits_differing": r["logits_differing"],
                    "topk_differing": r["topk_differing"],
                    "gpu": data["gpu"],
                    "vllm": VLLM,
                    "date": date,
                }
            )
    return rows


def split_k_launch_rows(file: str, date: str) -> list[dict]:
    """Patch 0016's split-K GEMM on the sweep's fastest tile (``benchmarks/dense_fp8.py``
    ``split_k_launch``, H100): launched as the patch does (four warps, four stages; ``stock``)
    against the fastest warp / stage count of LAUNCH_SWEEP (not shipped)."""
    data = json.loads((RAW / f"{file}.json").read_text())
    rows = []
    for r in data["rows"]:
        if r["kernel"] != "split_k_launch":
            continue
        shipped = next(us for us, c in r["sweep"] if (c["num_warps"], c["num_stages"]) == (4, 4))
        tile = {key: r["config"][key] for key in ("BLOCK_N", "SPLIT_K")}
        launch = {key: r["config"][key] for key in ("num_warps", "num_stages")}
        rows.append(
            {
                "scenario": f"dense_fp8_split_k_launch_{r['shape']}",
                "dtype": "fp8",
                "tp_equiv": 8,
                "batch": r["m"],
                "metric": "kernel_us",
                "stock": round(shipped, 2),
                "fused": round(r["us"], 2),
                "ratio": round(r["us"] / shipped, 3),
                "compares": f"N {r['n']}, K {r['k']}, tile {tile}: 4 warps / 4 stages (as "
                f"shipped) / the fastest launch, {launch}",
                "floor_us": round(r["floor_us"], 2),
                "gpu": H100,
                "vllm": VLLM,
                "date": date,
            }
        )
    return rows


def cold_l2_rows() -> list[dict]:
    """The MoE layer (``benchmarks/moe_layer.py bench``, sef17, H100) with L2 emptied before every
    replay (``--cold-l2``, the engine's regime) and replayed back to back as before (warm), in
    consecutive processes of one device call: stock vLLM's layer (``stock``) and the fused one."""
    return [
        bench_row(
            r,
            f"moe_layer_sef17_h100_{l2}_l2",
            H100,
            DAY23,
            experts_read=r["experts_read"],
            l2=r["l2"],
        )
        for l2 in ("cold", "warm")
        for r in json.loads((RAW / f"layer_bench_sef17_h100_{l2}.json").read_text())["rows"]
    ]


def prefetch_shared_rows() -> list[dict]:
    """The fused shared expert's weights prefetched into L2 during routing
    (``benchmarks/prototypes.py:runner_forward_prefetch_shared``, one token) at layer level, in
    one process with L2 emptied before every replay: vLLM's MoERunner._forward_impl (``stock``)
    and the prototype (``fused``), alternating; one scenario per layer (the unfused layer runs
    vLLM's method in both: the alternation's noise). Rejected: the fused layer 9% slower."""
    compares = "vLLM's MoE runner / the fused shared expert prefetched into L2 (cold L2)"
    return ab_rows(
        "layer_prefetch_shared_sef17_h100.json",
        "moe_layer_prefetch_shared",
        "plain",
        "prefetch",
        compares,
        DAY23,
        H100,
    )


def o_proj_tile_rows() -> list[dict]:
    """o_proj's quant -> split-K GEMM pair (``benchmarks/dense_pdl.py --tile``, H100) as the
    engine launches it (``shipped_us``: PDL at one token), on patch 0016's tile (``stock``: 64/4
    at one token, 32/2 at 16) and on the candidate (``fused``): 128/2 at one token, 32/1 at 16.
    Under the 0.5 us bar: not shipped."""
    data = json.loads((RAW / "dense_pdl_o_proj_tiles_sef17_h100.json").read_text())
    shipped = {(64, 4): 1, (32, 2): 16}
    base = {r["tokens"]: r for r in data["rows"] if shipped.get(tuple(r["tile"])) == r["tokens"]}
    return [
        {
            "scenario": "dense_pdl_o_proj_tile_sef17_h100",
            "dtype": "fp8",
            "tp_equiv": 8,
            "batch": r["tokens"],
            "metric": "kernel_us",
            "stock": round(base[r["tokens"]]["shipped_us"], 2),
            "fused": round(r["shipped_us"], 2),
            "ratio": round(r["shipped_us"] / base[r["tokens"]]["shipped_us"], 3),
            "compares": "quant -> o_proj as shipped: patch 0016's tile "
            + "/".join(map(str, base[r["tokens"]]["tile"]))
            + " / "
            + "/".join(map(str, r["tile"])),
            "pairs_per_step": r["pairs_per_step"],
            "gpu": data["gpu"],
            "vllm": VLLM,
            "date": DAY23,
        }
        for r in data["rows"]
        if r not in base.values()
    ]


def summary_rows() -> list[dict]:
    """Every row of summary.json, in its order."""
    return (
        layer_rows()
        + split_k_rows()
        + input_quant_rows()
        + input_quant_sef8_rows()
        + quantize_align_rows()
        + moe_sum_rows()
        + gate_routing_rows()
        + naive_fill_rows()
        + pdl_rows()
        + shared_stream_rows()
        + tile_rows()
        + dense_fp8_rows()
        + h100_config_rows()
        + norm_quant_rows("norm_quant_h100", "norm_quant", DAY18, "the prototype (moved into 0018)")
        + norm_quant_rows("norm_quant_sef14_h100", "norm_quant_sef14", DAY19, "patch 0018's kernel")
        + norm_quant_rows(
            "norm_quant_sef15_h100_large", "norm_quant_sef15", DAY20, "patch 0018's kernel"
        )
        + dense_pdl_rows("dense_pdl_sef15_h100_p2", DAY20)
        + dense_pdl_rows("dense_pdl_sef15_h100_p4", DAY20)
        + router_gemm_rows("router_gemm_sef16_h100", DAY21)
        + split_k_launch_rows("dense_fp8_launch_sef17_h100", DAY22)
        + cold_l2_rows()
        + prefetch_shared_rows()
        + norm_quant_rows(
            "norm_quant_sef17_h100_prefill", "norm_quant_sef17", DAY23, "patch 0018's kernel"
        )
        + o_proj_tile_rows()
        + e2e_rows()
    )


def main() -> None:
    rows = summary_rows()
    out = ROOT / "benchmarks" / "results" / "summary.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"{len(rows)} rows -> {out}")
    plot(rows, ROOT / "docs" / "img")


if __name__ == "__main__":
    main()
