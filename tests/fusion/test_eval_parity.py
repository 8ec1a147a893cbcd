"""lm-eval through its vLLM backend, fusion off vs on: the same outputs and the same metrics.

This runs `make eval`'s script, ci/eval.sh, offline: two lm-eval processes (``lm_eval --model
vllm``, through tools/lm_eval_run.py) with VLLM_SHARED_EXPERT_FUSION_REPLICAS=0 and =1 and
otherwise identical settings, then tools/eval_compare.py. The model is a tiny DeepSeek-V3-style
checkpoint (sefkit/tiny_deepseek.py: random weights, loaded through the real weight loader) in
float32, with a byte-level BPE tokenizer trained here on the tasks' text (sefkit/tiny_tokenizer.py).
The tasks are local (tests/eval_tasks/): sef_gsm_tiny, 32 GSM8K-style problems scored as lm-eval
scores gsm8k (generate_until, greedy, a regex filter for the final number, exact_match), and
sef_gsm_tiny_mc, the same questions as multiple choice (loglikelihoods of the options, acc).

Why equality and not closeness: in fp32 on vLLM's CPU backend the fused and the unfused paths
compute the same sums in a different order, and their logprobs agree to ~1e-5
(tests/test_fusion_cpu.py::test_fp32_equal measures it and bounds it by 1e-4), while the tiny
model's peaked next-token distributions (lm_head gain 3 in tiny_deepseek) keep greedy choices
far from ties that small. So every greedy token is the same, hence every generated text, filtered
answer and per-sample score, and the metrics are equal exactly; loglikelihoods may differ in the
last digits only, which the test bounds. Random weights make the answers gibberish and
exact_match 0 (acc of the multiple choice is chance): what is tested is parity, through the whole
harness path. It does not show accuracy on real weights, nor bf16/fp8 GPU numerics, where near
ties can flip a few greedy tokens (README: Accuracy parity).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sefkit.serving import FUSION_LOG, task_texts
from sefkit.tiny_deepseek import write_checkpoint
from sefkit.tiny_tokenizer import write_tokenizer
from tools import eval_compare

ROOT = Path(__file__).resolve().parents[2]
TASK_DIR = ROOT / "tests" / "eval_tasks"
TASKS = ["sef_gsm_tiny", "sef_gsm_tiny_mc"]
# fp32 fused vs unfused: logprobs agree to ~1e-5 (see the docstring).
LOGLIKELIHOOD_ATOL = 1e-4


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ci/eval.sh on the tiny model; returns its output directory."""
    root = tmp_path_factory.mktemp("eval-parity")
    model = root / "tiny-v3"
    vocab = write_tokenizer(model, task_texts(), vocab_size=512)
    write_checkpoint(model, "v3", dtype="float32", vocab_size=vocab)
    cores = os.cpu_count() or 1
    env = {
        **os.environ,
        "MODEL": str(model),
        "TASKS": ",".join(TASKS),
        "REPLICAS": "1",
        "TP": "1",
        # CPU_MLA on every CPU: vLLM picks AMX_MLA where the CPU has AMX, which has no fp32.
        "MODEL_ARGS": "dtype=float32,enforce_eager=True,gpu_memory_utilization=0.5,"
        "max_model_len=512,attention_backend=CPU_MLA",
        "EXTRA": f"--include_path {TASK_DIR}",
        "EVAL_PYTHON": sys.executable,
        "EVAL_DIR": str(root),
        "RUN_ID": "parity",
        # vLLM's CPU backend: a small KV cache, the engine in-process. With two cores, the runs
        # go at once, one core each (their imports and task indexing are single-threaded).
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CPU_OMP_THREADS_BIND": "0",
        "PARALLEL": "1" if cores >= 2 else "0",
        "ON_ENV": "VLLM_CPU_OMP_THREADS_BIND=1" if cores >= 2 else "",
        "OFF_ENV": "",
        # Nothing from the Hub: the model, tokenizer and tasks are local.
        "HF_HOME": str(root / "hf"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    for name in ("LIMIT", "FEWSHOT", "BATCH_SIZE", "SEED", "GEN_KWARGS"):
        env.pop(name, None)
    proc = subprocess.run(
        [str(ROOT / "ci" / "eval.sh")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    out = root / "parity"
    if proc.returncode != 0:
        pytest.fail(f"ci/eval.sh exited {proc.returncode}:\n{proc.stderr[-6000:]}")
    print(proc.stderr)
    return out


def _samples(run_dir: Path, task: str) -> list[dict]:
    """The logged samples of a task, by filter and document."""
    samples = eval_compare.Run(run_dir).samples[task]
    return [samples[key] for key in sorted(samples)]


def test_runs_used_fusion_as_set(evaluation: Path):
    assert FUSION_LOG in (evaluation / "on.log").read_text()
    assert "Shared-expert fusion" not in (evaluation / "off.log").read_text()
    assert "VLLM_SHARED_EXPERT_FUSION_REPLICAS=1 " in (evaluation / "on.cmd").read_text()
    assert "VLLM_SHARED_EXPERT_FUSION_REPLICAS=0 " in (evaluation / "off.cmd").read_text()


@pytest.mark.parametrize("task", TASKS)
def test_same_samples(evaluation: Path, task: str):
    """Every logged sample: same prompt, same generated text / scored answer, same scores."""
    off, on = _samples(evaluation / "off", task), _samples(evaluation / "on", task)
    assert len(off) == len(on) > 0
    for a, b in zip(off, on, strict=True):
        assert (a["filter"], a["doc_id"], a["prompt_hash"]) == (
            b["filter"],
            b["doc_id"],
            b["prompt_hash"],
        )
        assert {m: a[m] for m in a["metrics"]} == {m: b[m] for m in b["metrics"]}
        if task == "sef_gsm_tiny":
            assert a["resps"] == b["resps"], f"doc {a['doc_id']}"
            assert a["filtered_resps"] == b["filtered_resps"], f"doc {a['doc_id']}"
        else:
            lla = [float(r[0]) for r in a["filtered_resps"]]
            llb = [float(r[0]) for r in b["filtered_resps"]]
            assert lla == pytest.approx(llb, abs=LOGLIKELIHOOD_ATOL), f"doc {a['doc_id']}"
            assert lla.index(max(lla)) == llb.index(max(llb))


def test_generations_are_long_enough_to_matter(evaluation: Path):
    """Greedy continuations of real length, varied, and answers the filter extracts."""
    samples = [s for s in _samples(evaluation / "off", "sef_gsm_tiny")]
    texts = [s["resps"][0][0] for s in samples if s["filter"] == "flexible-extract"]
    assert len(texts) == 32
    assert sum(len(t) for t in texts) / len(texts) >= 40, texts
    assert len(set(texts)) >= 16, texts
    extracted = [s["filtered_resps"][0] for s in samples if s["filter"] == "flexible-extract"]
    assert sum(a != "[invalid]" for a in extracted) >= 8, extracted


def test_same_metrics(evaluation: Path):
    report = json.loads((evaluation / "comparison.json").read_text())
    assert report["problems"] == []
    assert report["fusion_check"]["ok"], report["fusion_check"]
    rows = {(r["task"], r["metric"], r["filter"]): r for r in report["metrics"]}
    assert set(rows) >= {
        ("sef_gsm_tiny", "exact_match", "strict-match"),
        ("sef_gsm_tiny", "exact_match", "flexible-extract"),
        ("sef_gsm_tiny_mc", "acc", "none"),
    }
    for key, row in rows.items():
        assert row["off"] == row["on"], key
        assert row["off_stderr"] == row["on_stderr"], key
        assert row["diff"] == 0, key
    # acc of four options on random weights: some right, some wrong.
    assert 0 < rows[("sef_gsm_tiny_mc", "acc", "none")]["off"] < 1
    assert report["totals"] == {
        "samples": 96,  # 32 docs x 2 filters + 32 multiple-choice docs
        "text_differs": 0,
        "answer_differs": 0,
        "correctness_differs": 0,
    }
    for row in report["samples"]:
        ll = row["max_abs_loglikelihood_diff"]
        assert ll is None or ll <= LOGLIKELIHOOD_ATOL, row
    text = (evaluation / "comparison.md").read_text()
    assert "| sef_gsm_tiny_mc | acc | none |" in text
    assert "Fusion check: **ok**" in text


def test_comparison_catches_differences(evaluation: Path, tmp_path: Path):
    """Negative control: the comparison counts a changed answer and a different prompt."""
    on = tmp_path / "on"
    shutil.copytree(evaluation / "on", on)
    (path,) = (p for p in on.rglob("samples_sef_gsm_tiny_*.jsonl") if "_mc_" not in p.name)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    changed = next(s for s in rows if s["filter"] == "flexible-extract")
    changed["resps"] = [[changed["resps"][0][0] + " #### -1"]]
    changed["filtered_resps"] = ["-1"]
    changed["exact_match"] = 1.0 - changed["exact_match"]
    path.write_text("".join(json.dumps(s) + "\n" for s in rows))
    report = eval_compare.compare(evaluation / "off", on, replicas=1)
    counts = {(r["task"], r["filter"]): r for r in report["samples"]}
    row = counts[("sef_gsm_tiny", "flexible-extract")]
    assert (row["text_differs"], row["answer_differs"], row["correctness_differs"]) == (1, 1, 1)
    assert report["problems"] == []

    rows[0]["prompt_hash"] = "0" * 64
    path.write_text("".join(json.dumps(s) + "\n" for s in rows))
    report = eval_compare.compare(evaluation / "off", on, replicas=1)
    assert any("prompt_hash differs" in p for p in report["problems"])

    check = eval_compare.fusion_check(evaluation / "on.log", evaluation / "on.log", 1)
    assert not check["ok"]
    check = eval_compare.fusion_check(evaluation / "off.log", evaluation / "on.log", 2)
    assert not check["ok"]


@pytest.mark.parametrize(
    "line",
    [
        "Shared-expert fusion (VLLM_SHARED_EXPERT_FUSION_REPLICAS=2): 2 MoE layers hold",
        "Shared-expert fusion (VLLM_SHARED_EXPERT_FUSION_REPLICAS=2, "
        "VLLM_SHARED_EXPERT_FUSION_MAX_TOKENS=64): 2 MoE layers hold",
    ],
)
def test_fusion_log_line_with_and_without_max_tokens(line: str):
    match = eval_compare.FUSION_LINE.search(line)
    assert match is not None
    assert match.group(1) == "2"
    assert eval_compare.FUSION_LINE.search(line.replace("=2", "=22", 1)).group(1) == "22"
