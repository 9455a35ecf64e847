#!/usr/bin/env python3
"""Makes tiny random Hugging Face LlamaForSequenceClassification reward models
and the scores transformers computes on them, for reward-model/tests/parity.rs.

Run from the repository root (local files only, no hub):
    .venv/bin/python scripts/make_rm_fixtures.py
Writes reward-model/tests/fixtures/<name>/ (a HF directory + expected.json).

expected.json:
  sequences[i].tokens / .score   one sequence at a time (AutoModelForSequenceClassification)
  batched                        the same sequences right-padded in one batch with an attention mask
  last_real                      scores read at the last real token (from the attention mask),
                                 computed from the backbone's hidden states and score.weight
  hf_pad_equality                what transformers returns for the batch (it finds the last
                                 token by comparing ids with pad_token_id)
In the "pad_is_eos" case the sequences end with EOS == pad, so transformers'
pad-equality rule reads the token before the final EOS; `last_real` is what a
correct reward model returns and differs from `hf_pad_equality` there.
"""
import json
import os
import shutil

import torch
from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

OUT = os.path.join(os.path.dirname(__file__), "..", "reward-model", "tests", "fixtures")

CASES = {
    # GQA, untied, explicit pad id that never occurs in the sequences: here
    # transformers' rule and ours agree, so `hf_pad_equality` == `last_real`.
    "gqa": dict(
        cfg=dict(vocab_size=61, hidden_size=32, intermediate_size=56, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                 max_position_embeddings=64, tie_word_embeddings=False, rope_theta=10000.0,
                 bos_token_id=1, eos_token_id=2, pad_token_id=0),
        pad_is_eos=False),
    # pad == eos, sequences end with EOS (the Llama-2/3 setup without a pad token).
    "pad_is_eos": dict(
        cfg=dict(vocab_size=50, hidden_size=24, intermediate_size=40, num_hidden_layers=2,
                 num_attention_heads=3, num_key_value_heads=3, rms_norm_eps=1e-6,
                 max_position_embeddings=64, tie_word_embeddings=True, rope_theta=500000.0,
                 bos_token_id=1, eos_token_id=2, pad_token_id=2),
        pad_is_eos=True),
}


def main():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(4321)
    for name, case in CASES.items():
        cfg = LlamaConfig(**case["cfg"], num_labels=1, attn_implementation="eager")
        model = LlamaForSequenceClassification(cfg).eval()
        with torch.no_grad():
            for p in model.parameters():  # larger than HF's init so errors are visible
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        d = os.path.join(OUT, name)
        shutil.rmtree(d, ignore_errors=True)
        model.save_pretrained(d, safe_serialization=True)
        # Reload through the Auto class, as a user would.
        model = AutoModelForSequenceClassification.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
        v = cfg.vocab_size
        pad = cfg.pad_token_id
        lengths = [1, 4, 9, 17]
        seqs = []
        for n in lengths:
            s = [1] + torch.randint(3, v, (n,), generator=g).tolist()
            if case["pad_is_eos"]:
                s.append(cfg.eos_token_id)
            seqs.append(s)
        exp = {"sequences": [], "pad_token_id": pad}
        with torch.no_grad():
            for s in seqs:
                ids = torch.tensor([s])
                # batch of one: transformers reads the last token when the row has no pad
                score = model(input_ids=ids).logits[0, 0].item() if not case["pad_is_eos"] else None
                h = model.model(input_ids=ids).last_hidden_state[0, -1]
                exp["sequences"].append({"tokens": s, "score": score, "last_real": (h @ model.score.weight[0]).item()})
            T = max(len(s) for s in seqs)
            ids = torch.tensor([s + [pad] * (T - len(s)) for s in seqs])
            mask = torch.tensor([[1] * len(s) + [0] * (T - len(s)) for s in seqs])
            exp["hf_pad_equality"] = model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()
            hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
            last = mask.sum(-1) - 1
            exp["batched"] = (hidden[torch.arange(len(seqs)), last] @ model.score.weight[0]).tolist()
        with open(os.path.join(d, "expected.json"), "w") as f:
            json.dump(exp, f, indent=1)
        print(name, "ok", exp["batched"], exp["hf_pad_equality"])


if __name__ == "__main__":
    main()
