"""The series' CUDA-only Triton kernels, run by Triton's interpreter on the CPU.

Patch 0003 routes fused layers with ``_grouped_topk_fused_shared_kernel``
(vllm/model_executor/layers/fused_moe/router/grouped_topk_router.py), which
CI's CPU backend never runs: vLLM disables Triton without a GPU. Its source,
taken from the installed patched wheel (sefkit/triton_kernels.py), runs here in
Triton's interpreter (TRITON_INTERPRET=1, one subprocess) against a torch
reference of DeepSeek's grouped top-k followed by the fused shared experts'
entries, as vLLM launches it (one warp) and with four (Triton's default).

Patch 0006 splits the K loop of ``fused_moe_kernel`` (SPLIT_K > 1: one partial
product per range of K blocks) and sums the partials in
``_split_k_silu_and_mul_per_block_quant_kernel``; the split GEMM's partials must
add up to the unsplit product, with ragged and empty last ranges, and the
activation kernel's per-group scales must be those of the summed partials. Patch
0008 lets the naive (one token per block) assignment pass no padded token count:
the kernel must not read it there, and must still stop at it in the aligned
layout. (The
interpreter's own FP8 and bf16 casts are not the GPU's, so the quantized values
and the bf16 rounding are checked by vLLM's in-tree CUDA test,
tests/kernels/moe/test_moe_split_k.py, on a GPU.)

Patch 0013 quantizes the MoE input and assigns the expert blocks in one launch
(``quantize_and_align_block_size``): its scales must be per_token_group_fp8_quant's
and its blocks moe_align_block_size's (each expert's entries in their order, padded
to the block size, in moe_align's buffer sizes); the input is chosen so that no value
rounds in the FP8 cast, which the interpreter does not do as the GPU does (the
GPU's values: tests/kernels/moe/test_moe_quantize_and_align.py).

Patch 0014 sums the top-k outputs in a Triton launch at decode sizes
(``moe_sum_triton``): float32 sums from zero in the slots' order, as ops.moe_sum,
over strided rows and a ragged last block; bf16 inputs are small integers, whose
sums round nothing (the interpreter truncates where the GPU rounds; the GPU's bits
against ops.moe_sum: tests/kernels/moe/test_moe_sum_triton.py).

Patch 0015 puts the fused shared experts on the auxiliary stream at decode sizes: the one launch
leaves their entries (ids from the routed experts' count on) out of the assignment, naive with
expert id -1 in expert ids of its own, aligned in no block (the routed experts' blocks as
moe_align_block_size's, in its buffer sizes), and moe_sum_triton reads each token's last row from
another buffer (the GPU's bits against the one-launch layer: tests/kernels/moe/
test_fused_shared_stream.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import torch

    from sefkit.triton_kernels import fused_routing

    kernels = [fused_routing(), fused_routing(num_warps=4)]


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


def interpret(script: str, cases: int) -> None:
    """Run ``script`` in a subprocess with Triton's interpreter; it must check ``cases`` cases."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert f"checked {cases}" in proc.stdout, proc.stdout


def test_grouped_topk_kernel_writes_routing_and_shared_entries() -> None:
    interpret(SCRIPT, 48)


SPLIT_K_SCRIPT = textwrap.dedent(
    """
    import torch
    import triton
    import triton.language as tl

    from sefkit.triton_kernels import split_k

    kernels = split_k()
    gemm, act = kernels["fused_moe_kernel"], kernels["_split_k_silu_and_mul_per_block_quant_kernel"]
    torch.manual_seed(0)


    def split_gemm(a, b, expert_ids, top_k, split, aligned=None):
        m, k = a.shape
        e, n, _ = b.shape
        num_tokens = m * top_k
        bm, bn, bk = 16, 32, 32
        # naive block assignment: one token per M block, no padded count (None: the kernel
        # must not read it); else (sorted token ids, padded count, EM) of an aligned one
        sorted_ids, padded, em = aligned or (None, None, num_tokens * bm)
        c = torch.full((split, m, top_k, n), float("nan"))
        # By name: newer vLLMs add arguments (0.34: TMA descriptors b_desc, a_desc, None here).
        descriptors = {name: None for name in gemm.arg_names if name.endswith("_desc")}
        gemm[(triton.cdiv(em, bm) * triton.cdiv(n, bn), split)](
            a_ptr=a, b_ptr=b, c_ptr=c[0], b_bias_ptr=None, a_scale_ptr=None, b_scale_ptr=None,
            topk_weights_ptr=None, sorted_token_ids_ptr=sorted_ids, expert_ids_ptr=expert_ids,
            num_tokens_post_padded_ptr=padded, N=n, K=k, EM=em, num_valid_tokens=num_tokens,
            stride_am=a.stride(0), stride_ak=a.stride(1), stride_be=b.stride(0),
            stride_bk=b.stride(2), stride_bn=b.stride(1), stride_cm=c.stride(2),
            stride_cn=c.stride(3), stride_ck=c.stride(0), stride_asm=0, stride_ask=0,
            stride_bse=0, stride_bsk=0, stride_bsn=0, stride_bbe=0, stride_bbn=0, group_n=0,
            group_k=0, **descriptors,
            naive_block_assignment=aligned is None, BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn,
            BLOCK_SIZE_K=bk,
            GROUP_SIZE_M=1, SPLIT_K=split, MUL_ROUTED_WEIGHT=False, top_k=top_k,
            compute_type=tl.float32, use_fp8_w8a8=False, use_int8_w8a8=False,
            use_int8_w8a16=False, per_channel_quant=False, HAS_BIAS=False, SWAP_AB=False,
        )
        return c


    checked = 0
    m, k, e, n, top_k = 3, 200, 4, 64, 2  # K = 7 blocks of 32, the last one partial
    a, b = torch.randn(m, k), torch.randn(e, n, k)
    ids = torch.randint(0, e, (m, top_k), dtype=torch.int32)
    want = torch.einsum("mk,mtnk->mtn", a, b[ids.long()])
    # SWAP_AB (FP8 on Hopper only) is covered by the in-tree CUDA test.
    for split in (1, 2, 3, 4, 7, 8):  # 3: ragged last range; 8: an empty one
        c = split_gemm(a, b, ids.flatten(), top_k, split)
        assert not c.isnan().any(), (split, "a partial left unwritten")
        torch.testing.assert_close(c.sum(0), want, rtol=1e-4, atol=1e-4)
        checked += 1

    # Aligned assignment (moe_align_block_size's layout: each expert's token slots padded to
    # 16 with the sentinel num_tokens), then two more blocks past the padded count that name
    # token slot 0 and an expert it is not routed to: the kernel must stop at the padded
    # count, not overwrite that slot.
    flat = ids.flatten()
    blocks, experts = [], []
    for expert in range(e):
        slots = (flat == expert).nonzero().flatten().tolist()
        for i in range(0, len(slots), 16):
            chunk = slots[i : i + 16]
            blocks.append(chunk + [len(flat)] * (16 - len(chunk)))
            experts.append(expert)
    padded = 16 * len(blocks)
    blocks += [[0] * 16] * 2
    experts += [(int(flat[0]) + 1) % e] * 2
    sorted_ids = torch.tensor(sum(blocks, []), dtype=torch.int32)
    aligned = (sorted_ids, torch.tensor([padded], dtype=torch.int32), len(sorted_ids))
    for split in (1, 3):
        c = split_gemm(a, b, torch.tensor(experts, dtype=torch.int32), top_k, split, aligned)
        torch.testing.assert_close(c.sum(0), want, rtol=1e-4, atol=1e-4)
        checked += 1

    quant_max, min_scale = 448.0, 1 / (448.0 * 512)
    for split, rows in ((2, 1), (3, 5), (8, 9)):
        partials = torch.randn(split, rows, 2 * 256) * 3
        partials[:, 0, :128] = 0  # a group of zeros: the minimum scale
        out = torch.empty(rows, 256, dtype=torch.float8_e4m3fn)
        scales = torch.empty(rows, 2)
        act[(rows, 2)](
            partials, out, scales, 256, partials.stride(0), partials.stride(1),
            quant_max, min_scale, SPLIT_K=split, GROUP_SIZE=128, round_type=tl.float32,
        )
        total = partials.sum(0)
        gate, up = total[:, :256], total[:, 256:]
        result = (gate * torch.sigmoid(gate) * up).view(rows, 2, 128)
        want_scales = (result.abs().amax(-1) / quant_max).clamp(min=min_scale)
        torch.testing.assert_close(scales, want_scales, rtol=1e-5, atol=0)
        checked += 1
    print("checked", checked)
    """
)


def test_split_k_gemm_partials_and_activation_scales() -> None:
    interpret(SPLIT_K_SCRIPT, 11)


QUANTIZE_ALIGN_SCRIPT = """
import torch
from sefkit.triton_kernels import quantize_and_align

qa = quantize_and_align()
torch.manual_seed(0)


def reference_layout(ids, block, experts):
    # moe_align_block_size's blocks; entries of ids outside [0, experts) in none.
    flat = ids.flatten().tolist()
    numel = len(flat)
    sorted_ids, expert_ids = [], []
    for e in range(experts):
        entries = [i for i, x in enumerate(flat) if x == e]
        if not entries:
            continue
        padded = -(-len(entries) // block) * block
        entries += [numel] * (padded - len(entries))
        sorted_ids += entries
        expert_ids += [e] * (padded // block)
    return sorted_ids, expert_ids


def check_aligned(sorted_ids, expert_ids, padded, ids, block, experts):
    # moe_align_block_size's blocks of the ids in [0, experts), in its buffer sizes for them.
    want_sorted, want_experts = reference_layout(ids, block, experts)
    total = int(padded.item())
    assert total == len(want_sorted), (total, len(want_sorted))
    assert sorted_ids[:total].tolist() == want_sorted
    assert expert_ids[: total // block].tolist() == want_experts
    numel = ids.numel()
    size = numel + experts * (block - 1)
    if numel < experts:
        size = min(numel * block, size)
    assert sorted_ids.numel() == size and expert_ids.numel() == -(-size // block)


cases = 0
for tokens, top_k, experts, block, dtype in [
    (1, 9, 257, 16, torch.int32), (2, 9, 257, 16, torch.int32), (4, 9, 257, 16, torch.int64),
    (7, 9, 257, 64, torch.int32), (16, 9, 257, 16, torch.int32), (28, 9, 257, 32, torch.int32),
    (3, 3, 9, 16, torch.int32), (20, 8, 256, 16, torch.int32), (5, 2, 4, 4, torch.int32),
]:
    k = 512
    # FP8 values times a power of two per group, each group's largest magnitude 448: x / scale
    # is exact, so the interpreter's own FP8 cast (not the GPU's) rounds nothing.
    q_ref = torch.randn(tokens, k // 128, 128).clamp(-448, 448).to(torch.float8_e4m3fn).float()
    q_ref[:, :, 0] = 448.0
    s_ref = 2.0 ** torch.randint(-12, 4, (tokens, k // 128)).float()
    q_ref[0, 0], s_ref[0, 0] = 0, 1e-10 / 448.0  # a group of zeros: scale eps / 448
    x = (q_ref * s_ref[..., None]).view(tokens, k).to(torch.bfloat16)
    ids = torch.stack([torch.randperm(experts)[:top_k] for _ in range(tokens)]).to(dtype)
    if tokens > 3:
        ids[1] = ids[0]  # duplicates
    for align in (False, True):
        xq, xs, sorted_ids, expert_ids, padded = qa(x, ids, block, experts, 128, align=align)
        assert torch.equal(xs, s_ref), (xs - s_ref).abs().max()
        assert torch.equal(xq.float(), q_ref.view(tokens, k))
        if not align:
            assert sorted_ids is None and padded is None and torch.equal(expert_ids, ids.view(-1))
        else:
            check_aligned(sorted_ids, expert_ids, padded, ids, block, experts)
        cases += 1

# Patch 0015: fused shared entries (ids from experts on) left out of the assignment: naive, with
# expert id -1 (in expert ids of their own: topk_ids stays as it is); aligned, in no block.
for tokens, top_k, experts, replicas, block in [
    (1, 8, 256, 1, 16), (4, 8, 256, 1, 16), (7, 8, 256, 2, 64), (5, 3, 64, 1, 16),
    (16, 8, 256, 1, 16), (28, 8, 256, 3, 32), (20, 3, 64, 1, 8),
]:
    x = torch.randn(tokens, 256).to(torch.bfloat16)
    routed = torch.stack([torch.randperm(experts)[:top_k] for _ in range(tokens)])
    shared = experts + torch.arange(tokens)[:, None] % replicas
    ids = torch.cat([routed, shared], 1).to(torch.int32)
    before = ids.clone()
    for align in (False, True):
        # The assignment's int32 buffers filled beforehand: nothing may be written past its blocks.
        real_empty = torch.empty

        def prefilled(*a, **kw):
            t = real_empty(*a, **kw)
            return t.fill_(-7) if kw.get("dtype") == torch.int32 else t

        torch.empty = prefilled
        try:
            got = qa(x, ids, block, experts, 128, align=align, num_ids=experts + replicas)
        finally:
            torch.empty = real_empty
        want = qa(x, ids, block, experts + replicas, 128, align=align)
        assert torch.equal(got[0].float(), want[0].float()) and torch.equal(got[1], want[1])
        assert torch.equal(ids, before)
        if not align:
            flat = ids.flatten()
            want_ids = torch.where(flat < experts, flat, -1)
            assert got[2] is None and got[4] is None and got[3].dtype == torch.int32
            assert torch.equal(got[3], want_ids) and got[3].data_ptr() != ids.data_ptr()
        else:
            check_aligned(*got[2:], ids, block, experts)
            total = int(got[4].item())
            assert bool((got[2][total:] == -7).all())
            assert bool((got[3][total // block :] == -7).all())
        cases += 1
try:
    qa(x, ids, 16, experts, 128, align=False, num_ids=experts)
except ValueError as e:
    assert "num_ids" in str(e)
    cases += 1
print("checked", cases)
"""


def test_quantize_and_align_writes_scales_values_and_blocks() -> None:
    interpret(QUANTIZE_ALIGN_SCRIPT, 33)


MOE_SUM_SCRIPT = """
import torch
from sefkit.triton_kernels import moe_sum

moe_sum_triton = moe_sum()
torch.manual_seed(0)
cases = 0
for tokens, top_k, hidden in [(1, 9, 7168), (3, 8, 300), (16, 1, 256), (2, 10, 513), (5, 3, 100)]:
    for dtype in (torch.float32, torch.bfloat16):
        # rows of a wider buffer: strides that are not the shape's
        x = torch.randn(tokens, top_k + 1, hidden)
        if dtype == torch.bfloat16:
            x = x.mul(4).round()
        x = x.to(dtype)[:, 1:]
        out = torch.full((tokens, hidden), float("nan"), dtype=dtype)
        moe_sum_triton(x, out)
        acc = torch.zeros(tokens, hidden)
        for k in range(top_k):
            acc += x[:, k].float()
        assert torch.equal(out, acc.to(dtype)), (tokens, top_k, hidden, dtype)
        cases += 1
        # Patch 0015: each token's last row read from another buffer (strided rows too).
        last = torch.randn(tokens, 2, hidden).mul(4).round().to(dtype)[:, 1]
        out = torch.full((tokens, hidden), float("nan"), dtype=dtype)
        moe_sum_triton(x, out, last=last)
        acc = torch.zeros(tokens, hidden)
        for k in range(top_k - 1):
            acc += x[:, k].float()
        acc += last.float()
        assert torch.equal(out, acc.to(dtype)), (tokens, top_k, hidden, dtype)
        cases += 1
for bad in (torch.empty(2, 9), torch.empty(2, 8, dtype=torch.bfloat16)):
    try:
        moe_sum_triton(torch.randn(2, 3, 8), bad)
    except ValueError as e:
        assert "output" in str(e)
        cases += 1
for bad in (torch.empty(2, 9), torch.empty(2, 8, dtype=torch.bfloat16)):
    try:
        moe_sum_triton(torch.randn(2, 3, 8), torch.empty(2, 8), last=bad)
    except ValueError as e:
        assert "last" in str(e)
        cases += 1
print("checked", cases)
"""


def test_moe_sum_sums_in_the_slots_order() -> None:
    interpret(MOE_SUM_SCRIPT, 24)


DENSE_SPLIT_K_SCRIPT = """
import torch
from sefkit.triton_kernels import dense_split_k

ns = dense_split_k()
mm, config = ns["block_fp8_split_k_mm"], ns["split_k_config"]
torch.manual_seed(0)
checked = 0
fp8 = torch.float8_e4m3fn


def operands(m, n, k, values):
    # Small integers times powers of two: every product and sum below is exact in float32.
    kb, nb = -(-k // 128), -(-n // 128)
    a = torch.randint(-values, values + 1, (m, k)).to(fp8)
    b = torch.randint(-values, values + 1, (n, k)).to(fp8)
    a_s = torch.empty(kb, m).T  # column-major, as cutlass's activation scales
    a_s.copy_(2.0 ** torch.randint(-3, 3, (m, kb)).float())
    b_s = 2.0 ** torch.randint(-3, 3, (nb, kb)).float()
    ref = torch.zeros(m, n, dtype=torch.float64)
    for i in range(kb):
        cols = slice(i * 128, (i + 1) * 128)
        a_blk = a[:, cols].double() * a_s[:, i : i + 1].double()
        b_blk = b[:, cols].double() * b_s[:, i].double().repeat_interleave(128)[:n, None]
        ref += a_blk @ b_blk.T
    return a, b, a_s, b_s, ref


# (M, N, K, BLOCK_N, SPLIT_K): ragged N and K, uneven and empty last splits, two M tiles.
for m, n, k, block_n, split_k in [
    (1, 192, 512, 64, 1), (1, 192, 512, 64, 4), (3, 160, 640, 32, 2), (5, 96, 384, 32, 8),
    (17, 128, 1024, 64, 4), (16, 72, 256, 32, 2), (2, 64, 320, 32, 2),
]:
    a, b, a_s, b_s, ref = operands(m, n, k, 4)
    for _ in range(2):  # the second launch finds the tiles' counters back at zero
        out = mm(a, b, a_s, b_s, torch.float32, split_k=split_k, block_n=block_n)
        assert out.shape == (m, n) and out.dtype == torch.float32
        assert torch.equal(out.double(), ref), (m, n, k, split_k, (out.double() - ref).abs().max())
        assert all(int(c.abs().sum()) == 0 for c in ns["_counters"].values())
        checked += 1
# bf16 output: sums of at most 256 units, exact in bf16.
a, b, _, _, _ = operands(4, 96, 256, 1)
ones_a, ones_b = torch.ones(4, 2), torch.ones(1, 2)
out = mm(a, b, ones_a, ones_b, torch.bfloat16, split_k=2, block_n=32)
assert out.dtype == torch.bfloat16 and torch.equal(out.float(), a.float() @ b.float().T)
checked += 1
# Scales that are not per (row, 128) and per 128 x 128 block are refused.
for bad in (torch.ones(4, 3), torch.ones(2, 2)):
    try:
        mm(a, b, bad, ones_b, torch.bfloat16, split_k=2, block_n=32)
    except ValueError as e:
        assert "scales" in str(e)
        checked += 1
# The split and tile per shape (H100: 132 SMs; DeepSeek-V3's TP8 widths).
for (m, n, k), want in {
    (1, 2112, 7168): (64, 8), (4, 2112, 7168): (32, 8), (16, 2112, 7168): (32, 8),
    (4, 3072, 1536): (32, 4), (1, 7168, 2048): (64, 4), (16, 7168, 2048): (32, 2),
    (4, 4608, 7168): (32, 4), (4, 512, 7168): (32, 8), (4, 7168, 256): (32, 1),
    (32, 2112, 7168): (32, 4),
}.items():
    assert config(m, n, k, 132) == want, ((m, n, k), config(m, n, k, 132), want)
    checked += 1
print("checked", checked)
"""


def test_dense_split_k_gemm_sums_the_splits() -> None:
    interpret(DENSE_SPLIT_K_SCRIPT, 27)
