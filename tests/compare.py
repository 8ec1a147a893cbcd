"""Compare the outputs that tests/engine_run.py writes for two settings."""

from __future__ import annotations

import statistics
from dataclasses import dataclass


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
