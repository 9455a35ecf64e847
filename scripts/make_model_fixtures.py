#!/usr/bin/env python3
"""Makes tiny random Hugging Face Llama checkpoints and the log-probs that
transformers computes on them, for the parity tests in policy/tests/.

Run from the repository root with a venv that has torch + transformers:
    .venv/bin/python scripts/make_model_fixtures.py
Writes policy/tests/fixtures/model/<name>/ (a HF directory + expected.json).
"""
import json
import os
import shutil

import torch
from transformers import LlamaConfig, LlamaForCausalLM

OUT = os.path.join(os.path.dirname(__file__), "..", "policy", "tests", "fixtures", "model")

CASES = {
    # GQA (4 query heads share 2 KV heads), explicit head_dim != hidden/heads,
    # Llama-3.1 RoPE scaling, untied head, float32.
    "gqa_llama3_rope": dict(
        cfg=dict(vocab_size=97, hidden_size=32, intermediate_size=56, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
                 max_position_embeddings=64, tie_word_embeddings=False,
                 rope_theta=500000.0,
                 rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                   high_freq_factor=4.0, original_max_position_embeddings=16),
                 bos_token_id=1, eos_token_id=[2, 3], pad_token_id=0),
        dtype=torch.float32, shard=None),
    # Tied embeddings, multi-head attention, stored in bfloat16.
    "tied_bf16": dict(
        cfg=dict(vocab_size=64, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                 num_attention_heads=3, num_key_value_heads=3, rms_norm_eps=1e-6,
                 max_position_embeddings=64, tie_word_embeddings=True, rope_theta=10000.0,
                 bos_token_id=1, eos_token_id=2),
        dtype=torch.bfloat16, shard=None),
    # Linear RoPE scaling, multi-query attention, sharded safetensors.
    "mqa_linear_sharded": dict(
        cfg=dict(vocab_size=80, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=1, rms_norm_eps=1e-6,
                 max_position_embeddings=64, tie_word_embeddings=False, rope_theta=10000.0,
                 rope_scaling=dict(rope_type="linear", factor=2.0), bos_token_id=1, eos_token_id=2),
        dtype=torch.float32, shard="20KB"),
}


def main():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1234)
    for name, case in CASES.items():
        cfg = LlamaConfig(**case["cfg"], attn_implementation="eager")
        model = LlamaForCausalLM(cfg).eval()
        with torch.no_grad():
            for p in model.parameters():  # larger than HF's 0.02 init so errors are visible
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            # Round to the storage dtype, then compute the reference in float64:
            # the exact answer for these weights, which our f32 must match to 1e-4
            # (transformers' own f32 result is within ~1e-5 of it).
            model = model.to(case["dtype"]).to(torch.float64)
        v = cfg.vocab_size
        lengths = [1, 5, 12, 33]
        seqs = [torch.randint(0, v, (n,), generator=g).tolist() for n in lengths]
        expected = []
        with torch.no_grad():
            for s in seqs:
                if len(s) < 2:
                    expected.append({"tokens": s, "logprobs": []})
                    continue
                ids = torch.tensor([s])
                logits = model(input_ids=ids).logits.float()
                lp = torch.log_softmax(logits, -1)[0, :-1].gather(-1, ids[0, 1:, None])[:, 0]
                expected.append({"tokens": s, "logprobs": lp.tolist()})
            # the same sequences right-padded in one batch, with an attention mask
            long = [s for s in seqs if len(s) >= 2]
            T = max(len(s) for s in long)
            ids = torch.tensor([s + [0] * (T - len(s)) for s in long])
            mask = torch.tensor([[1] * len(s) + [0] * (T - len(s)) for s in long])
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
            lp = torch.log_softmax(logits, -1)[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
            batched = [lp[i, : len(s) - 1].tolist() for i, s in enumerate(long)]
            # greedy continuation of the first long prompt (KV cache in transformers)
            prompt = torch.tensor([seqs[1]])
            gen = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8,
                                 do_sample=False, eos_token_id=None, pad_token_id=0)
            greedy = gen[0, prompt.shape[1]:].tolist()
        d = os.path.join(OUT, name)
        shutil.rmtree(d, ignore_errors=True)
        save = model.to(case["dtype"])
        save.config.dtype = case["dtype"]
        kw = {"max_shard_size": case["shard"]} if case["shard"] else {}
        save.save_pretrained(d, **kw)
        with open(os.path.join(d, "expected.json"), "w") as f:
            json.dump({"sequences": expected, "batched": batched,
                       "greedy_prompt": seqs[1], "greedy_tokens": greedy}, f)
        print(name, "->", sorted(os.listdir(d)))


if __name__ == "__main__":
    main()
