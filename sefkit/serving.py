"""The tiny model `vllm serve` tests serve, and what they ask it (tests/fusion/test_serve.py, the
serving image's tests/shipping/test_docker_serve.py), and how they start, wait for and stop a
server.

The checkpoint is tiny_deepseek's DeepSeek-V3 shape with a byte-level BPE tokenizer trained on the
texts of the tiny eval task (tests/eval_tasks/), so prompts from that task tokenize into a few
tokens each; a plain chat template sits beside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from sefkit.tiny_deepseek import write_checkpoint
from sefkit.tiny_tokenizer import write_tokenizer

TASK_DIR = Path(__file__).resolve().parents[1] / "tests" / "eval_tasks"
MODEL_NAME = "tiny-deepseek-v3"
MAX_MODEL_LEN = 256
FUSION_LOG = "Shared-expert fusion (VLLM_SHARED_EXPERT_FUSION_REPLICAS=1)"
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def task_texts() -> list[str]:
    """The tiny eval task's documents, as lm-eval's few-shot prompts show them."""
    texts = []
    for split in ("train", "test"):
        for line in (TASK_DIR / f"{split}.jsonl").read_text().splitlines():
            doc = json.loads(line)
            texts.append(f"Question: {doc['question']}\nAnswer: {doc['answer']}\n\n")
    return texts


def _questions(n: int) -> list[str]:
    lines = (TASK_DIR / "test.jsonl").read_text().splitlines()
    return [f"Question: {json.loads(line)['question']}\nAnswer:" for line in lines[:n]]


PROMPTS = [*_questions(3), "The"]
CONVERSATIONS = [
    [{"role": "user", "content": q.removeprefix("Question: ").removesuffix("\nAnswer:")}]
    for q in _questions(2)
]


def write_served_model(root: Path, **shapes: Any) -> Path:
    """root/tiny-v3 (float32 weights, tokenizer) and root/chat.jinja; returns the model folder.
    shapes override tiny_deepseek's V3 shapes (larger ones on GPUs)."""
    model = root / "tiny-v3"
    vocab = write_tokenizer(model, task_texts(), vocab_size=512)
    write_checkpoint(model, "v3", dtype="float32", **{**shapes, "vocab_size": vocab})
    (root / "chat.jinja").write_text(CHAT_TEMPLATE)
    return model


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> float:
    """Seconds until GET url/health answers 200; TimeoutError after timeout, RuntimeError as soon
    as proc exits."""
    import httpx

    t0 = time.monotonic()
    while True:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return time.monotonic() - t0
        if time.monotonic() > t0 + timeout:
            raise TimeoutError(f"/health did not answer 200 within {timeout:.0f} s")
        try:  # the pause between polls, which also notices an exit at once
            code = proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            continue
        raise RuntimeError(f"the server exited with {code} before /health answered")


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a server started with start_new_session=True and its whole process group (API server,
    engine core, workers): SIGTERM, then SIGKILL after timeout; whatever of the group outlived
    the leader (an orphaned worker) goes too."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
