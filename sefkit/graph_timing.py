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


def l2_flush_graph() -> torch.cuda.CUDAGraph:
    """A CUDA graph that reads a buffer of twice the GPU's L2 cache (at least 64 MiB): replayed
    before another graph, it leaves none of that graph's data in L2, and no dirty lines for the
    graph's reads to write back (it only reads; its one-value sum stays in L2)."""
    l2 = torch.cuda.get_device_properties(torch.cuda.current_device()).L2_cache_size
    buffer = torch.zeros(max(2 * l2, 64 << 20) // 4, dtype=torch.float32, device="cuda")
    total = torch.empty((), dtype=torch.float32, device="cuda")
    torch.sum(buffer, dim=0, out=total)  # outside the capture: the reduction's first call
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        torch.sum(buffer, dim=0, out=total)
    graph.tensors = (buffer, total)  # the graph's memory lives as long as the graph
    return graph


def replay_us_cold(graphs: Sequence, iters: int, reps: int) -> float:
    """replay_us with L2 emptied before every replay (l2_flush_graph): per repetition, the mean
    microseconds of a flush and a replay minus those of a flush alone, timed one after the other;
    the median over ``reps``. The regime of an engine's decode step, whose layers read more
    weights than L2 holds: a layer finds none of its weights there, where replay_us's back-to-back
    replays of one layer can find the weights every replay reads (a shared expert's)."""
    flush = l2_flush_graph()
    for graph in graphs:
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def mean_us(with_graphs: bool) -> float:
        torch.cuda.synchronize()
        start.record()
        for i in range(iters):
            flush.replay()
            if with_graphs:
                graphs[i % len(graphs)].replay()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) * 1e3 / iters

    return statistics.median(mean_us(True) - mean_us(False) for _ in range(reps))


def record(rows: list[dict], row: dict, out: str | None, device: str) -> None:
    """Print ``row``, append it to ``rows`` and, with ``out``, rewrite that file with every row so
    far and the GPU's name (``device`` off CUDA): a run cut short keeps what it measured."""
    print(json.dumps(row), flush=True)
    rows.append(row)
    if out:
        gpu = torch.cuda.get_device_name() if device == "cuda" else device
        with open(out, "w") as f:
            json.dump({"gpu": gpu, "rows": rows}, f, indent=1)
