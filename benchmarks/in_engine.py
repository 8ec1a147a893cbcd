"""What benchmarks/e2e.py runs inside vLLM's engine process (LLM.apply_model sends a
function by reference, and the engine imports it from here: a module of its own, since the
worker's functions live in __main__).

realistic_routing: trained-scale routers for a model with vLLM's dummy weights. vLLM's dummy
loader fills every tensor with uniform(-1e-3, 1e-3) from one seed: router logits then differ by
~1e-5 while the correction bias differs by ~1e-3, so the bias picks the same ~9 experts for every
token. engine_constants: the module constants a variant's set= options gave other values
(benchmarks/constants_site), read where the kernels run.
"""

from __future__ import annotations

import json
import os
import sys

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


def wanted_replacements() -> dict[str, str]:
    """SEF_REPLACE (benchmarks/constants_site) as {"MODULE:PATH": "PACKAGE.MODULE:FUNCTION"}."""
    return {
        f"{module}:{path}": function
        for module, path, function in json.loads(os.environ.get("SEF_REPLACE", "[]"))
    }


def engine_replacements(model) -> dict[str, str | None]:
    """What SEF_REPLACE's paths hold in the process this runs in, as "MODULE:FUNCTION" of the
    function there; a module not imported there reads as None."""
    found: dict[str, str | None] = {}
    for key in wanted_replacements():
        module, _, path = key.partition(":")
        held = sys.modules.get(module)
        for part in path.split(".") if held else ():
            held = getattr(held, part)
        found[key] = f"{held.__module__}:{held.__name__}" if held else None
    return found


def wanted_constants() -> dict[str, object]:
    """SEF_SET_CONSTANTS (benchmarks/constants_site) as {"MODULE.NAME": value}."""
    return {
        f"{module}.{name}": value
        for module, name, value in json.loads(os.environ.get("SEF_SET_CONSTANTS", "[]"))
    }


def engine_constants(model) -> dict[str, object]:
    """The values of SEF_SET_CONSTANTS' module constants in the process this runs in; a module
    not imported there reads as None."""
    values = {}
    for key in wanted_constants():
        module, _, name = key.rpartition(".")
        loaded = sys.modules.get(module)
        values[key] = getattr(loaded, name) if loaded else None
    return values
