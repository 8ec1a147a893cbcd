"""Compare the outputs that sefkit/engine_run.py writes for two settings."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

# within_rounding: the fused run may be this much farther from the fp32 reference
# than the unfused run (relative, plus absolute in nats) before it counts as worse
# than rounding.
NOISE_RATIO = 1.25
NOISE_SLACK = 0.005
# Two equally noisy runs leave the fp32 reference's greedy path at different
# places: over a handful of sequences, one departure more than the unfused
# run's is chance (seen with a GLM-4 MoE checkpoint in bf16: 2 against 1, each
# where both runs' top tokens moved by over a nat; prompt logprobs were as
# close to fp32 as the unfused run's).
GREEDY_CHANCE = 1


@dataclass
class PromptLogprobDiff:
    """|logprob difference| of each prompt token between two runs."""

    diffs: list[float]

    @property
    def max(self) -> float:
        return max(self.diffs)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.diffs)

    def quantile(self, q: float) -> float:
        ordered = sorted(self.diffs)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> dict[str, float]:
        return {
            "positions": len(self.diffs),
            "max": self.max,
            "mean": self.mean,
            "p90": self.quantile(0.9),
        }


def prompt_logprob_diff(a: dict, b: dict) -> PromptLogprobDiff:
    """Differences of the logprob of every prompt token (after the first)."""
    diffs = []
    for sa, sb in zip(a["sequences"], b["sequences"], strict=True):
        assert sa["prompt"] == sb["prompt"], "runs used different prompts"
        for pos, (la, lb) in enumerate(
            zip(sa["prompt_logprobs"], sb["prompt_logprobs"], strict=False)
        ):
            if la is None:
                continue
            token = str(sa["prompt"][pos])
            diffs.append(abs(la[token] - lb[token]))
    return PromptLogprobDiff(diffs)


def greedy_mismatches(a: dict, b: dict) -> list[str]:
    """Greedy continuations compared the way vLLM's check_logprobs_close does.

    Two continuations may part at a position where the two runs' top
    choices are near-tied: then each run's token must be among the other
    run's top logprobs there, and the rest of the sequence is not compared.
    Returns a description of every violation (empty if none).
    """
    problems = []
    for i, (sa, sb) in enumerate(zip(a["sequences"], b["sequences"], strict=True)):
        for pos, (ta, tb) in enumerate(zip(sa["tokens"], sb["tokens"], strict=True)):
            if ta == tb:
                continue
            top_a, top_b = sa["logprobs"][pos], sb["logprobs"][pos]
            if str(tb) not in top_a or str(ta) not in top_b:
                problems.append(
                    f"sequence {i} position {pos}: tokens {ta} vs {tb}, "
                    f"not in each other's top logprobs"
                )
            break
    return problems


def greedy_identical(a: dict, b: dict) -> bool:
    return [s["tokens"] for s in a["sequences"]] == [s["tokens"] for s in b["sequences"]]


def within_rounding(fused: dict, unfused: dict, reference: dict) -> tuple[bool, str]:
    """Is the fused run as close to the unfused one as rounding allows?

    ``reference`` is an fp32 run of the same checkpoint: the unfused run's distance
    from it measures the rounding of the dtype under test. The fused run must be no
    farther from the unfused run than that, and no farther from the reference than
    the unfused run is (NOISE_RATIO, NOISE_SLACK). Greedy continuations must agree
    the way check_logprobs_close defines it, or, where rounding makes even the
    unfused run leave the reference's top tokens, the fused run must leave them no
    more often than the unfused run does, give or take GREEDY_CHANCE.
    """
    noise = prompt_logprob_diff(unfused, reference)
    apart = prompt_logprob_diff(fused, unfused)
    fused_err = prompt_logprob_diff(fused, reference)
    problems = greedy_mismatches(fused, unfused)
    fused_vs_ref = greedy_mismatches(fused, reference)
    unfused_vs_ref = greedy_mismatches(unfused, reference)
    checks = {
        "mean(fused-unfused) <= mean(unfused-fp32)": apart.mean <= noise.mean,
        "p90(fused-unfused) <= p90(unfused-fp32)": apart.quantile(0.9) <= noise.quantile(0.9),
        "mean(fused-fp32) within unfused's": fused_err.mean
        <= NOISE_RATIO * noise.mean + NOISE_SLACK,
        "p90(fused-fp32) within unfused's": fused_err.quantile(0.9)
        <= NOISE_RATIO * noise.quantile(0.9) + NOISE_SLACK,
        "greedy continuations": not problems
        or len(fused_vs_ref) <= len(unfused_vs_ref) + GREEDY_CHANCE,
    }
    detail = (
        f"fused-unfused {apart.summary()}, unfused-fp32 {noise.summary()}, "
        f"fused-fp32 {fused_err.summary()}, greedy: fused-unfused {problems}, "
        f"fused-fp32 {fused_vs_ref}, unfused-fp32 {unfused_vs_ref}; "
        f"failed: {[k for k, v in checks.items() if not v]}"
    )
    return all(checks.values()), detail
