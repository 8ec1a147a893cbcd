"""Helpers shared by the tests (tests/) and the benchmarks (benchmarks/).

- tiny_deepseek: tiny DeepSeek/GLM-shaped checkpoints with real random weights
- tiny_tokenizer: a byte-level BPE tokenizer for them
- engine_run: one vLLM engine process over tiny checkpoints (a script)
- fusion_harness: launch engine_run processes, read their outputs
- compare: fused vs unfused outputs (logprobs, greedy continuations, rounding)
- graph_timing: CUDA-graph replay timing, and writing a benchmark's rows
- serving: the tiny model `vllm serve` tests serve, their requests, starting and stopping a server
- triton_kernels: the series' Triton kernels from the installed vLLM's source (routing,
  split-K), for Triton's interpreter on a CPU and the benchmarks

Importable from the repository root (pytest.ini's pythonpath; `python -m benchmarks.<script>`).
"""
