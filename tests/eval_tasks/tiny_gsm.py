"""The documents of the sef_gsm_tiny tasks: test.jsonl and train.jsonl beside this file.

lm-eval calls ``load`` through the tasks' ``custom_dataset: !function tiny_gsm.load``, with the
task's metadata (and lm-eval's model arguments) as keyword arguments, which it ignores. Reading the
files from here, not through ``dataset_path: json``, keeps the tasks independent of the working
directory and of the Hugging Face datasets cache.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(**_kwargs):
    import datasets

    def split(name: str) -> datasets.Dataset:
        lines = (HERE / f"{name}.jsonl").read_text().splitlines()
        return datasets.Dataset.from_list([json.loads(line) for line in lines if line.strip()])

    return datasets.DatasetDict({name: split(name) for name in ("train", "test")})
