"""The tiny model `vllm serve` tests serve, and what they ask it (tests/fusion/test_serve.py, the
serving image's tests/shipping/test_docker_serve.py).

The checkpoint is tiny_deepseek's DeepSeek-V3 shape with a byte-level BPE tokenizer trained on the
texts of the tiny eval task (tests/eval_tasks/), so prompts from that task tokenize into a few
tokens each; a plain chat template sits beside it.
"""

from __future__ import annotations

import json
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
