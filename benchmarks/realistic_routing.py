"""Trained-scale routers for a model with vLLM's dummy weights (benchmarks/e2e.py).

vLLM's dummy loader fills every tensor with uniform(-1e-3, 1e-3) from one
seed: router logits then differ by ~1e-5 while the correction bias differs by
~1e-3, so the bias picks the same ~9 experts for every token. A module of its
own, so that LLM.apply_model can send the function to vLLM's engine process,
which imports it from here.
"""

from __future__ import annotations

# Logits of the unit-RMS MoE input spread with this std, as a trained router's.
ROUTER_LOGIT_STD = 1.5
# The correction bias, small against the scores.
BIAS_STD = 0.05


def realistic_routing(model) -> dict[str, int]:
    """Give every MoE router seeded trained-scale values and every RMSNorm
    weight 1 (runs inside the engine). Returns the MoE layers and the gates
    reset (vLLM's CPU backend prepacks small gates and drops their weight)."""
    import torch

    counts = {"moe_layers": 0, "gates_reset": 0}
    for name, module in model.named_modules():
        if type(module).__name__.endswith("RMSNorm") and hasattr(module, "weight"):
            module.weight.data.fill_(1.0)
        gate = getattr(module, "gate", None)
        if gate is None or not hasattr(module, "experts"):
            continue
        counts["moe_layers"] += 1
        seed = sum(name.encode())  # per layer, the same in every process
        gen = torch.Generator(device=gate.weight.device).manual_seed(seed)
        bias = gate.e_score_correction_bias
        if bias is not None:
            noise = torch.randn(bias.shape, generator=gen, device=bias.device)
            bias.data.copy_((BIAS_STD * noise).to(bias.dtype))
        if gate.weight.dim() != 2:
            continue
        hidden = gate.weight.shape[1]
        weight = torch.randn(gate.weight.shape, generator=gen, device=gate.weight.device)
        gate.weight.data.copy_((weight * (ROUTER_LOGIT_STD / hidden**0.5)).to(gate.weight.dtype))
        counts["gates_reset"] += 1
    return counts
