"""A small byte-level BPE tokenizer trained here, for the tiny checkpoints of tiny_deepseek.py.

lm-eval works on text, so the tiny models it evaluates need a tokenizer; none can be downloaded.
This one is trained with the ``tokenizers`` library on a few texts (e.g. the task's documents) and
saved as ``tokenizer.json`` + ``tokenizer_config.json``, which transformers' AutoTokenizer (and so
vLLM and lm-eval) load from the model directory. Byte-level: every text can be encoded and every
token id decodes to bytes. Ids 0 and 1 are ``<s>`` and ``</s>``, tiny_deepseek's bos and eos.

    python -m sefkit.tiny_tokenizer OUT_DIR TEXT_FILE... [--vocab-size 512]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path

SPECIAL = ["<s>", "</s>"]


def write_tokenizer(out_dir: str | Path, texts: Iterable[str], vocab_size: int = 512) -> int:
    """Train on ``texts`` and save into ``out_dir``; returns the vocabulary size, ``vocab_size``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    size = tok.get_vocab_size()
    if size != vocab_size:
        raise ValueError(f"the texts gave {size} tokens, not {vocab_size}: give more text")
    assert [tok.token_to_id(t) for t in SPECIAL] == [0, 1]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": SPECIAL[0],
        "eos_token": SPECIAL[1],
        "model_max_length": 512,
        "clean_up_tokenization_spaces": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("texts", nargs="+", help="files to train on")
    parser.add_argument("--vocab-size", type=int, default=512)
    args = parser.parse_args()
    texts = [Path(p).read_text() for p in args.texts]
    print(write_tokenizer(args.out_dir, texts, args.vocab_size))


if __name__ == "__main__":
    main()
