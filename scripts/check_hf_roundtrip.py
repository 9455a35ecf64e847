#!/usr/bin/env python3
"""Checks that transformers loads the checkpoints `rlhf` writes and computes
the same log-probs and token ids as we do.

    .venv/bin/python scripts/check_hf_roundtrip.py [path/to/rlhf]

Writes checkpoints with `rlhf policy init` (float32 untied + GQA, bfloat16
tied), re-saves the transformers fixtures through `rlhf policy convert`, and for
each compares `rlhf policy logprobs` with transformers (|diff| <= 1e-4).
"""
import json
import os
import subprocess
import sys
import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

RLHF = sys.argv[1] if len(sys.argv) > 1 else "target/debug/rlhf"
TEXTS = ["Once upon a time there was a small model.", "Hello, world! 123 + 456 = 579", "é ü 日本語 🙂"]


def rlhf(*args):
    subprocess.run([RLHF, *args], check=True, capture_output=True)


def ours(model_dir, lines, tmp):
    inp, out = os.path.join(tmp, "in.jsonl"), os.path.join(tmp, "out.jsonl")
    with open(inp, "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    rlhf("policy", "logprobs", "--model", model_dir, "--input", inp, "--output", out)
    return [json.loads(l)["logprobs"] for l in open(out)]


def theirs(model_dir, seqs):
    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    res = []
    with torch.no_grad():
        for s in seqs:
            ids = torch.tensor([s])
            lp = torch.log_softmax(m(input_ids=ids).logits.double(), -1)[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]
            res.append(lp.tolist())
    return res


def check(name, model_dir, tmp, with_tokenizer=True):
    if with_tokenizer:
        tok = AutoTokenizer.from_pretrained(model_dir)
        seqs = [tok(t)["input_ids"] for t in TEXTS]
        # our tokenizer gives the same ids for the texts
        via_text = ours(model_dir, [{"text": t} for t in TEXTS], tmp)
        assert [len(x) + 1 for x in via_text] == [len(s) for s in seqs], f"{name}: token counts differ"
    else:
        seqs = [[1, 5, 9, 14, 3, 2, 7, 8, 20, 21], [4, 6, 11]]
    a = ours(model_dir, [{"tokens": s} for s in seqs], tmp)
    b = theirs(model_dir, seqs)
    err = max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    status = "ok" if err <= 1e-4 else "FAIL"
    print(f"{status:4} {name}: max |ours - transformers| = {err:.2e}")
    return err <= 1e-4


def main():
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        d1 = os.path.join(tmp, "f32")
        rlhf("policy", "init", "--out", d1, "--hidden-size", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2", "--seed", "1")
        ok &= check("init float32 untied GQA", d1, tmp)
        d2 = os.path.join(tmp, "bf16")
        rlhf("policy", "init", "--out", d2, "--dtype", "bfloat16", "--tie-embeddings", "--seed", "2")
        ok &= check("init bfloat16 tied", d2, tmp)
        fixtures = os.path.join(os.path.dirname(__file__), "..", "policy", "tests", "fixtures", "model")
        for name in sorted(os.listdir(fixtures)):
            for dtype in ["float32", "bfloat16"]:
                out = os.path.join(tmp, f"{name}-{dtype}")
                rlhf("policy", "convert", "--model", os.path.join(fixtures, name), "--out", out, "--dtype", dtype)
                ok &= check(f"transformers fixture {name} -> rlhf convert --dtype {dtype}", out, tmp, with_tokenizer=False)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
