"""Turn the raw GPU results in benchmarks/results/raw/ into the committed summary.

    python benchmarks/summarize.py          # needs matplotlib for the plots

Writes benchmarks/results/summary.json (one row per scenario, dtype, TP
equivalent, batch and metric: stock, fused, ratio = fused / stock) and the
plots under docs/img/. docs/benchmarks.md quotes these files.

End-to-end timings (benchmarks/e2e_latency.py): ITL from vLLM's request
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
GPU, VLLM, DATE = "NVIDIA H200", "0.32.0", "2026-11-29"


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
    sources = [
        ("layer_bench_tp8_default_tiles.json", {"bf16": "moe_layer", "fp8": None}),
        ("layer_bench_tp8_fp8_tuned.json", {"fp8": "moe_layer"}),
        ("layer_bench_tp8_default_tiles.json", {"fp8": "moe_layer_default_tiles"}),
    ]
    for name, scenarios in sources:
        for r in json.loads((RAW / name).read_text())["rows"]:
            scenario = scenarios.get(r["dtype"])
            if scenario is None:
                continue
            if r["dtype"] == "fp8":
                r["floor_us"] = fp8_floor[r["batch"]]
            rows.append(
                {
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
                    "gpu": GPU,
                    "vllm": VLLM,
                    "date": DATE,
                }
            )
    return rows


E2E_SCENARIOS = [
    # scenario, TP equivalent, raw files, stock setting, fused setting
    ("e2e_dsv3_tp8_rank_fp8", 8, ["e2e_tp8rank_a", "e2e_tp8rank_b"], "0", "1"),
    (
        "e2e_dsv3_tp8_rank_fp8_max_tokens_128",
        8,
        ["e2e_tp8rank_a", "e2e_tp8rank_b", "e2e_tp8rank_max128"],
        "0",
        "1:128",
    ),
    ("e2e_dsv3_tp2_full_16_layers_fp8", 2, ["e2e_tp2_full16"], "0", "1"),
]


def e2e_rows() -> list[dict]:
    rows = []
    for scenario, tp, files, stock_setting, fused_setting in E2E_SCENARIOS:
        values: dict[tuple[str, int], dict[str, list[float]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for name in files:
            for line in (RAW / f"{name}.jsonl").read_text().splitlines():
                r = json.loads(line)
                values[(r["metric"], r["batch"])][r["setting"]].extend(r["values"])
        for (metric, batch), by_setting in sorted(values.items()):
            stock_values, fused_values = by_setting[stock_setting], by_setting[fused_setting]
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
                    "fused_setting": fused_setting,
                    "stock_values": [round(v, 3) for v in stock_values],
                    "fused_values": [round(v, 3) for v in fused_values],
                    "gpu": GPU,
                    "vllm": VLLM,
                    "date": DATE,
                }
            )
    return rows


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    for scenario, dtype, label in [
        ("moe_layer", "bf16", "MoE layer, bf16 (default tiles both)"),
        ("moe_layer", "fp8", "MoE layer, FP8 block (tuned E=257)"),
        (
            "moe_layer_default_tiles",
            "fp8",
            "MoE layer, FP8 block (default E=257 tiles)",
        ),
        ("e2e_dsv3_tp8_rank_fp8", "fp8", "end-to-end decode ITL, FP8, TP8 rank"),
        (
            "e2e_dsv3_tp8_rank_fp8_max_tokens_128",
            "fp8",
            "end-to-end decode ITL, FP8, TP8 rank, MAX_TOKENS=128",
        ),
        ("e2e_dsv3_tp2_full_16_layers_fp8", "fp8", "end-to-end decode ITL, FP8, TP=2 (2 GPUs)"),
    ]:
        metric = "itl_ms" if scenario.startswith("e2e") else "moe_us"
        pts = sorted(
            (r["batch"], r["ratio"])
            for r in rows
            if r["scenario"] == scenario and r["dtype"] == dtype and r["metric"] == metric
        )
        ax.plot(*zip(*pts, strict=False), marker="o", label=label)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.axhline(0.9, color="gray", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch (tokens per step)")
    ax.set_ylabel("fused / stock time")
    ax.set_title("H200, DeepSeek-V3 shapes (per-rank TP8 unless noted)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "ratio_vs_batch.png", dpi=110)

    fig, ax = plt.subplots(figsize=(7, 4))
    for dtype in ("bf16", "fp8"):
        pts = sorted(
            (r["batch"], r["fused_over_floor"])
            for r in rows
            if r["scenario"] == "moe_layer" and r["dtype"] == dtype
        )
        ax.plot(*zip(*pts, strict=False), marker="o", label=f"fused MoE layer / HBM floor, {dtype}")
    ax.axhline(1.3, color="gray", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch (tokens per step)")
    ax.set_ylabel("time / floor")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "floor_vs_batch.png", dpi=110)


def main() -> None:
    rows = layer_rows() + e2e_rows()
    out = ROOT / "benchmarks" / "results" / "summary.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"{len(rows)} rows -> {out}")
    plot(rows, ROOT / "docs" / "img")


if __name__ == "__main__":
    main()
