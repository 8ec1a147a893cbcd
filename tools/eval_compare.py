"""Side by side: two lm-eval runs of one model, shared-expert fusion off and on (ci/eval.sh).

    python tools/eval_compare.py OFF_DIR ON_DIR OUT_DIR --replicas R \\
        [--off-log FILE --on-log FILE] [--setting KEY=VALUE ...]

OFF_DIR and ON_DIR are the ``--output_path`` directories of two lm-eval runs with
``--log_samples``; each holds one ``results_*.json`` and ``samples_<task>_*.jsonl`` files (in a
subdirectory named after the model). Writes OUT_DIR/comparison.json and OUT_DIR/comparison.md:

- every metric of the results (task, metric, filter): each run's value and stderr, the
  difference (on - off) and, for metrics that are means over samples, the paired standard error
  of that difference (the two runs score the same samples);
- per task and filter, over the logged samples: how many differ in the generated text
  (``resps``), in the answer that is scored (``filtered_resps``; for multiple choice the option
  chosen), and in correctness (a per-sample metric that is 0/1), and the largest difference of a
  loglikelihood (tasks scored by loglikelihood);
- with the logs: whether the fused run logged shared-expert fusion with R copies and the unfused
  run logged none.

Exits 1 if the two runs are not comparable (different samples, documents or prompts), 2 if the
fusion check fails; the files are written either way.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path

SETTING = "VLLM_SHARED_EXPERT_FUSION_REPLICAS"
# Start-up log of a fused model; with VLLM_SHARED_EXPERT_FUSION_MAX_TOKENS the setting follows R.
FUSION_LINE = re.compile(rf"Shared-expert fusion \({SETTING}=(\d+)[,)].*")
SAMPLES_FILE = re.compile(r"samples_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T[0-9.\-]+)\.jsonl")
LOGLIKELIHOOD_TYPES = {"loglikelihood", "loglikelihood_rolling", "multiple_choice"}
EXAMPLES = 5  # differing answers listed per task and filter in the markdown


class Run:
    """The results and logged samples of one lm-eval run (its --output_path)."""

    def __init__(self, path: Path):
        results = sorted(path.rglob("results_*.json"))
        if len(results) != 1:
            raise SystemExit(f"{path}: expected one results_*.json, found {len(results)}")
        self.results_file = results[0]
        self.results = json.loads(results[0].read_text())
        self.samples: dict[str, dict[tuple[str, int], dict]] = {}
        for f in sorted(path.rglob("samples_*.jsonl")):
            m = SAMPLES_FILE.fullmatch(f.name)
            task = m["task"] if m else f.stem.removeprefix("samples_")
            rows = (json.loads(line) for line in f.read_text().splitlines() if line.strip())
            self.samples[task] = {(s["filter"], s["doc_id"]): s for s in rows}

    def output_type(self, task: str) -> str | None:
        return self.results.get("configs", {}).get(task, {}).get("output_type")


def _number(value) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def metric_rows(off: Run, on: Run) -> list[dict]:
    """One row per (task, metric, filter) of either run's results."""
    rows = []
    tasks = list(off.results.get("results", {}))
    tasks += [t for t in on.results.get("results", {}) if t not in tasks]
    for task in tasks:
        a = off.results.get("results", {}).get(task, {})
        b = on.results.get("results", {}).get(task, {})
        keys = list(a) + [k for k in b if k not in a]
        for key in keys:
            # Metrics are "metric,filter"; other keys (alias, name, sample_len) are not.
            metric, comma, filt = key.partition(",")
            if not comma or metric.endswith("_stderr"):
                continue
            stderr_key = f"{metric}_stderr,{filt}"
            row = {
                "task": task,
                "metric": metric,
                "filter": filt,
                "off": _number(a.get(key)),
                "off_stderr": _number(a.get(stderr_key)),
                "on": _number(b.get(key)),
                "on_stderr": _number(b.get(stderr_key)),
            }
            if row["off"] is None and row["on"] is None:
                continue
            row["diff"] = (
                None if row["off"] is None or row["on"] is None else row["on"] - row["off"]
            )
            row["paired_stderr"] = _paired_stderr(off, on, row)
            rows.append(row)
    return rows


def _paired_stderr(off: Run, on: Run, row: dict) -> float | None:
    """Standard error of the mean of per-sample differences, where the metric is that mean."""
    a_samples, b_samples = off.samples.get(row["task"]), on.samples.get(row["task"])
    if not a_samples or not b_samples or row["off"] is None or row["on"] is None:
        return None
    keys = sorted(k for k in a_samples if k[0] == row["filter"] and k in b_samples)
    a = [_number(a_samples[k].get(row["metric"])) for k in keys]
    b = [_number(b_samples[k].get(row["metric"])) for k in keys]
    if len(keys) < 2 or None in a or None in b:
        return None
    for values, reported in ((a, row["off"]), (b, row["on"])):
        if not math.isclose(statistics.fmean(values), reported, rel_tol=1e-9, abs_tol=1e-12):
            return None  # aggregated otherwise than by the mean of the samples
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    return statistics.stdev(diffs) / math.sqrt(len(diffs))


def _floats(value) -> list[float]:
    """The numbers among the leaves of a response (lm-eval logs them as strings)."""
    if isinstance(value, list | tuple):
        return [x for item in value for x in _floats(item)]
    try:
        return [float(value)]
    except (TypeError, ValueError):
        return []


def _answer(sample: dict, output_type: str | None):
    """What is scored: the filtered response, or the option chosen by loglikelihood."""
    resps = sample["filtered_resps"]
    if output_type == "multiple_choice":
        lls = [_floats(r)[0] if _floats(r) else -math.inf for r in resps]
        return max(range(len(lls)), key=lls.__getitem__) if lls else None
    if output_type in LOGLIKELIHOOD_TYPES:
        # (loglikelihood, is_greedy) pairs: is_greedy is what acc scores.
        return [r[1] for r in resps if isinstance(r, list | tuple) and len(r) > 1]
    return resps


def _binary(value) -> bool:
    return isinstance(value, bool) or (isinstance(value, int | float) and value in (0, 1))


def sample_rows(off: Run, on: Run) -> tuple[list[dict], list[str]]:
    """Per (task, filter) agreement counts; and what makes the runs incomparable, if anything."""
    rows, problems = [], []
    for task in sorted(set(off.samples) | set(on.samples)):
        a, b = off.samples.get(task), on.samples.get(task)
        if a is None or b is None:
            problems.append(f"{task}: samples logged by one run only")
            continue
        if set(a) != set(b):
            problems.append(f"{task}: the runs logged different samples ({len(a)} vs {len(b)})")
        output_type = off.output_type(task) or on.output_type(task)
        for filt in sorted({k[0] for k in a}):
            keys = sorted(k for k in a if k[0] == filt and k in b)
            row = {
                "task": task,
                "filter": filt,
                "output_type": output_type,
                "samples": len(keys),
                "text_differs": 0 if output_type == "generate_until" else None,
                "answer_differs": 0,
                "correctness_differs": 0,
                "max_abs_loglikelihood_diff": None,
                "examples": [],
            }
            for key in keys:
                sa, sb = a[key], b[key]
                for field in ("doc_hash", "prompt_hash", "target_hash"):
                    if sa.get(field) != sb.get(field):
                        problems.append(f"{task} {filt} doc {key[1]}: {field} differs")
                if output_type == "generate_until" and sa["resps"] != sb["resps"]:
                    row["text_differs"] += 1
                if output_type in LOGLIKELIHOOD_TYPES:
                    fa, fb = _floats(sa["resps"]), _floats(sb["resps"])
                    if len(fa) == len(fb) and fa:
                        worst = max(abs(x - y) for x, y in zip(fa, fb, strict=True))
                        prev = row["max_abs_loglikelihood_diff"] or 0.0
                        row["max_abs_loglikelihood_diff"] = max(prev, worst)
                ans_a, ans_b = _answer(sa, output_type), _answer(sb, output_type)
                if ans_a != ans_b:
                    row["answer_differs"] += 1
                    if len(row["examples"]) < EXAMPLES:
                        row["examples"].append({"doc_id": key[1], "off": ans_a, "on": ans_b})
                if any(
                    sa.get(m) != sb.get(m) and (_binary(sa.get(m)) or _binary(sb.get(m)))
                    for m in sa.get("metrics", [])
                ):
                    row["correctness_differs"] += 1
            rows.append(row)
    return rows, problems


def fusion_check(off_log: Path | None, on_log: Path | None, replicas: int) -> dict:
    """Did the fused run log fusion with ``replicas`` copies, and the unfused run none?"""
    if off_log is None or on_log is None:
        return {"checked": False}
    on_lines = [m.group(0) for m in FUSION_LINE.finditer(on_log.read_text(errors="replace"))]
    off_lines = [m.group(0) for m in FUSION_LINE.finditer(off_log.read_text(errors="replace"))]
    on_ok = bool(on_lines) and all(
        FUSION_LINE.match(line).group(1) == str(replicas) for line in on_lines
    )
    # Otherwise, what the fused run said about the setting (e.g. "... has no effect: the model
    # has no shared experts"), if anything.
    notes = [
        line[line.index(SETTING) :]
        for line in on_log.read_text(errors="replace").splitlines()
        if SETTING in line and not FUSION_LINE.search(line)
    ]
    return {
        "checked": True,
        "ok": on_ok and not off_lines,
        "on_logged": on_lines[0] if on_lines else (notes[0] if notes else None),
        "off_logged": off_lines[0] if off_lines else None,
    }


def _fmt(value) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _signed(value) -> str:
    return "" if value is None else f"{value:+.4f}"


def _cell(text) -> str:
    text = json.dumps(text, ensure_ascii=False) if not isinstance(text, str) else text
    text = text.replace("|", "\\|").replace("\n", "\\n")
    return text if len(text) <= 80 else text[:77] + "..."


def markdown(report: dict) -> str:
    out = [f"# lm-eval: shared-expert fusion off vs on ({report['run_id']})", ""]
    settings = report["settings"]
    if settings:
        out += ["| setting | value |", "| --- | --- |"]
        out += [f"| {k} | `{_cell(v)}` |" for k, v in settings.items()]
        out.append("")
    fusion = report["fusion_check"]
    if fusion.get("checked"):
        verdict = "ok" if fusion["ok"] else "FAILED"
        out += [
            f"Fusion check: **{verdict}**. Fused run (R={report['replicas']}) logged: "
            f"`{fusion['on_logged'] or 'nothing about fusion'}`; unfused run (R=0) logged: "
            f"`{fusion['off_logged'] or 'nothing about fusion'}`.",
            "",
        ]
    for problem in report["problems"]:
        out.append(f"- **Not comparable:** {problem}")
    if report["problems"]:
        out.append("")
    out += [
        "## Metrics",
        "",
        "on - off, and its paired standard error where the metric is a mean over samples.",
        "",
        "| task | metric | filter | off | off stderr | on | on stderr | on - off | paired stderr |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["metrics"]:
        out.append(
            f"| {r['task']} | {r['metric']} | {r['filter']} | {_fmt(r['off'])} "
            f"| {_fmt(r['off_stderr'])} | {_fmt(r['on'])} | {_fmt(r['on_stderr'])} "
            f"| {_signed(r['diff'])} | {_fmt(r['paired_stderr'])} |"
        )
    out += [
        "",
        "## Per-sample agreement",
        "",
        "Samples whose generated text, scored answer (filtered response; for multiple choice "
        "the option chosen) or correctness (a 0/1 per-sample metric) differ between the runs.",
        "",
        "| task | filter | samples | text differs | answer differs | correctness differs "
        "| max abs loglikelihood diff |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["samples"]:
        ll = r["max_abs_loglikelihood_diff"]
        out.append(
            f"| {r['task']} | {r['filter']} | {r['samples']} | {_fmt(r['text_differs'])} "
            f"| {r['answer_differs']} | {r['correctness_differs']} "
            f"| {'' if ll is None else f'{ll:.3g}'} |"
        )
    t = report["totals"]
    out += [
        "",
        f"Total: {t['samples']} samples; text differs {t['text_differs']}, answer differs "
        f"{t['answer_differs']}, correctness differs {t['correctness_differs']}.",
    ]
    examples = [(r, e) for r in report["samples"] for e in r["examples"]]
    if examples:
        out += ["", "## Differing answers (first few per task and filter)", ""]
        out += ["| task | filter | doc | off | on |", "| --- | --- | ---: | --- | --- |"]
        for r, e in examples:
            out.append(
                f"| {r['task']} | {r['filter']} | {e['doc_id']} | {_cell(e['off'])} "
                f"| {_cell(e['on'])} |"
            )
    return "\n".join(out) + "\n"


def compare(
    off_dir: Path,
    on_dir: Path,
    replicas: int,
    run_id: str = "",
    off_log: Path | None = None,
    on_log: Path | None = None,
    settings: dict[str, str] | None = None,
) -> dict:
    """The comparison of two runs, as written to comparison.json."""
    off, on = Run(off_dir), Run(on_dir)
    samples, problems = sample_rows(off, on)
    totals = {
        key: sum(r[key] or 0 for r in samples)
        for key in ("samples", "text_differs", "answer_differs", "correctness_differs")
    }
    return {
        "run_id": run_id,
        "replicas": replicas,
        "settings": settings or {},
        "runs": {
            "off": {"replicas": 0, "results_file": str(off.results_file)},
            "on": {"replicas": replicas, "results_file": str(on.results_file)},
        },
        "fusion_check": fusion_check(off_log, on_log, replicas),
        "problems": problems,
        "metrics": metric_rows(off, on),
        "samples": samples,
        "totals": totals,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("off_dir", type=Path)
    parser.add_argument("on_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--replicas", type=int, required=True, help="R of the fused run")
    parser.add_argument("--run-id", default="")
    parser.add_argument("--off-log", type=Path)
    parser.add_argument("--on-log", type=Path)
    parser.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    settings = dict(s.partition("=")[::2] for s in args.setting)
    report = compare(
        args.off_dir, args.on_dir, args.replicas, args.run_id, args.off_log, args.on_log, settings
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "comparison.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.out_dir / "comparison.md").write_text(text)
    print(text)
    if report["problems"]:
        sys.exit(1)
    if report["fusion_check"].get("checked") and not report["fusion_check"]["ok"]:
        sys.exit(2)


if __name__ == "__main__":
    main()
