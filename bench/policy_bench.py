#!/usr/bin/env python3
"""The reference for bench/policy_bench.rs: the same Llama shape, batch and
workload in PyTorch + transformers on CPU. Prints one JSON line.

    python bench/policy_bench.py train|generate
"""
import json
import resource
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

threads = int(__import__("os").environ.get("BENCH_THREADS", "2"))
torch.set_num_threads(threads)
cfg = LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=4, vocab_size=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
                  max_position_embeddings=2048, tie_word_embeddings=False, pad_token_id=0)
torch.manual_seed(0)
model = LlamaForCausalLM(cfg)
nparams = sum(p.numel() for p in model.parameters())
what = sys.argv[1] if len(sys.argv) > 1 else "train"


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if what == "train":
    model.train()
    b, t = 8, 128
    ids = torch.randint(1, cfg.vocab_size, (b, t))

    def step():
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids).logits
        lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])
        loss = -lp.mean()
        loss.backward()

    for _ in range(2):
        step()
    n = 5
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    secs = (time.perf_counter() - t0) / n
    print(json.dumps({"impl": f"torch {torch.__version__}", "bench": "train_step", "threads": threads, "batch": b, "seq": t,
                      "params": nparams, "step_s": secs, "tokens_per_s": b * t / secs, "peak_rss_mib": peak_mib()}))
elif what == "generate":
    model.eval()
    b, plen, new = 16, 16, 128
    g = torch.Generator().manual_seed(0)
    lens = [plen - (i % 9) for i in range(b)]
    ids = torch.zeros((b, plen), dtype=torch.long)
    mask = torch.zeros((b, plen), dtype=torch.long)
    for i, n in enumerate(lens):  # left padding, as generate() wants
        ids[i, plen - n:] = torch.randint(1, cfg.vocab_size, (n,), generator=g)
        mask[i, plen - n:] = 1
    with torch.no_grad():
        model.generate(ids[:2], attention_mask=mask[:2], max_new_tokens=4, do_sample=False, pad_token_id=0)
        t0 = time.perf_counter()
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                             pad_token_id=0, eos_token_id=None)
        secs = time.perf_counter() - t0
    tokens = (out.shape[1] - plen) * b
    print(json.dumps({"impl": f"transformers generate (torch {torch.__version__})", "bench": "generate", "threads": threads,
                      "batch": b, "new_tokens": new, "params": nparams, "total_s": secs, "new_tokens_per_s": tokens / secs,
                      "peak_rss_mib": peak_mib()}))
