#!/usr/bin/env python3
"""Checks that transformers loads a reward-model directory written by `rlhf`
(or reward_model::RewardModel::save) and scores like we do.

    .venv/bin/python scripts/check_rm_roundtrip.py MODEL_DIR SEQS.json

SEQS.json: {"sequences": [[ids...], ...]}. Loads MODEL_DIR (local only) with
AutoModelForSequenceClassification, refuses missing/unexpected weights, and
prints {"single": [...], "batched": [...]} on stdout: each sequence scored
alone, and all of them right-padded in one batch with an attention mask.
The sequences must not contain the pad token (transformers finds the last
token by comparing ids with pad_token_id).
"""
import json
import sys

import torch
from transformers import AutoModelForSequenceClassification


def main():
    model_dir, seqs_path = sys.argv[1], sys.argv[2]
    seqs = json.load(open(seqs_path))["sequences"]
    model, info = AutoModelForSequenceClassification.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager", output_loading_info=True, local_files_only=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        sys.exit(f"loading {model_dir}: {bad}")
    if model.config.num_labels != 1 or type(model).__name__ != "LlamaForSequenceClassification":
        sys.exit(f"{model_dir}: loaded {type(model).__name__} with num_labels={model.config.num_labels}")
    pad = model.config.pad_token_id
    model.eval()
    with torch.no_grad():
        single = [model(input_ids=torch.tensor([s])).logits[0, 0].item() for s in seqs]
        T = max(len(s) for s in seqs)
        ids = torch.tensor([s + [pad] * (T - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (T - len(s)) for s in seqs])
        batched = model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()
    print(json.dumps({"single": single, "batched": batched}))


if __name__ == "__main__":
    main()
