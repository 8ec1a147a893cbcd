"""Timing of CUDA-graph replays, and writing their rows, shared by the benchmarks."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence

import torch


def capture(run: Callable[..., object], inputs: Sequence[tuple], warmup: int = 1) -> list:
    """One CUDA graph of ``run(*args)`` per input, after ``warmup`` eager calls each
    (Triton compiles, workspace allocations)."""
    graphs = []
    for args in inputs:
        for _ in range(warmup):
            run(*args)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run(*args)
        graphs.append(graph)
    return graphs


def replay_us(graphs: Sequence, iters: int, reps: int) -> float:
    """Median over ``reps`` of the mean microseconds per replay, going round-robin
    over the graphs so that consecutive replays touch different data."""
    for graph in graphs:
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        start.record()
        for i in range(iters):
            graphs[i % len(graphs)].replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / iters)
    return statistics.median(times)


def record(rows: list[dict], row: dict, out: str | None, device: str) -> None:
    """Print ``row``, append it to ``rows`` and, with ``out``, rewrite that file with every row so
    far and the GPU's name (``device`` off CUDA): a run cut short keeps what it measured."""
    print(json.dumps(row), flush=True)
    rows.append(row)
    if out:
        gpu = torch.cuda.get_device_name() if device == "cuda" else device
        with open(out, "w") as f:
            json.dump({"gpu": gpu, "rows": rows}, f, indent=1)
