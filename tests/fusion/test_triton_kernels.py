"""The series' CUDA-only Triton kernel, run by Triton's interpreter on the CPU.

Patch 0003 routes fused layers with ``_grouped_topk_fused_shared_kernel``
(vllm/model_executor/layers/fused_moe/router/grouped_topk_router.py), which
CI's CPU backend never runs: vLLM disables Triton without a GPU. Its source,
taken from the installed patched wheel (sefkit/routing_kernel.py), runs here in
Triton's interpreter (TRITON_INTERPRET=1, one subprocess) against a torch
reference of DeepSeek's grouped top-k followed by the fused shared experts'
entries, at Triton's default launch and with one warp.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import torch

    from sefkit.routing_kernel import fused_routing

    kernels = [fused_routing(), fused_routing(num_warps=1)]


    def reference(logits, bias, top_k, renorm, groups, topk_group, scoring, rsf):
        scores = logits.sigmoid() if scoring == "sigmoid" else logits.softmax(-1)
        m = len(logits)
        choice = scores if bias is None else scores + bias
        grouped = choice.view(m, groups, -1)
        if bias is None:
            group_scores = grouped.max(-1).values
        else:
            group_scores = grouped.topk(2, dim=-1).values.sum(-1)
        kept = torch.zeros_like(group_scores)
        kept.scatter_(1, group_scores.topk(topk_group, dim=-1).indices, 1)
        kept = kept.repeat_interleave(grouped.shape[-1], 1).bool()
        ids = choice.masked_fill(~kept, float("-inf")).topk(top_k, dim=-1).indices
        weights = scores.gather(1, ids)
        if renorm:
            weights = weights / weights.sum(-1, keepdim=True)
        return weights * rsf, ids


    torch.manual_seed(0)
    cases = [
        # experts, groups, topk_group, top_k, scoring, bias, renormalize
        (256, 8, 4, 8, "sigmoid", True, True),  # DeepSeek-V3 / R1
        (384, 1, 1, 8, "sigmoid", True, True),  # Kimi K2
        (160, 8, 3, 6, "softmax", False, False),  # DeepSeek-V2
        (20, 4, 2, 3, "sigmoid", True, True),  # groups of 5: masked lanes
    ]
    checked = 0
    for kernel in kernels:
        for experts, groups, topk_group, top_k, scoring, bias, renorm in cases:
            for tokens in (1, 5, 33):
                for n_shared, replicas in ((1, 1), (2, 3)):
                    logits = torch.randn(tokens, experts)
                    b = 0.1 * torch.randn(experts) if bias else None
                    args = (logits, logits, top_k, renorm, groups, topk_group, scoring, 2.5, b)
                    weights, ids = kernel(
                        *args,
                        num_fused_shared_experts=n_shared,
                        replicas=replicas,
                        first_shared_id=experts,
                        shared_expert_weight=0.4,
                    )
                    assert weights.shape == ids.shape == (tokens, top_k + n_shared)
                    ref_w, ref_ids = reference(
                        logits, b, top_k, renorm, groups, topk_group, scoring, 2.5
                    )
                    got = ids[:, :top_k].long().sort(1)
                    want = ref_ids.sort(1)
                    assert torch.equal(got.values, want.values), (experts, tokens)
                    torch.testing.assert_close(
                        weights[:, :top_k].gather(1, got.indices), ref_w.gather(1, want.indices)
                    )
                    for t in range(tokens):
                        first = experts + (t % replicas) * n_shared
                        assert ids[t, top_k:].tolist() == list(range(first, first + n_shared))
                    assert (weights[:, top_k:] == 0.4).all()
                    checked += 1
    print("checked", checked)
    """
)


def test_grouped_topk_kernel_writes_routing_and_shared_entries() -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert "checked 48" in proc.stdout, proc.stdout
