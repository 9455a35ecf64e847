#!/usr/bin/env python3
"""The reference for bench/rm_bench.rs: TRL's RewardTrainer on the same Llama
shape, batch and optimizer settings, on CPU, float32. Prints one JSON line.

    PYTHONPATH=<dir with trl + its deps> python bench/rm_bench.py [pairs] [seq] [steps]

Same workload as ours: `pairs` random pre-tokenized pairs of `seq` tokens per
side, one optimizer step per batch (no accumulation), AdamW (β2 0.95, wd 0.1),
cosine schedule, clip 1.0, gradient checkpointing off (TRL's default is on,
which would make its steps slower), 2 warm-up steps, then `steps` timed steps.
"""
import json
import os
import resource
import sys
import tempfile
import time

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models
from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast, TrainerCallback
from trl import RewardConfig, RewardTrainer
import trl

threads = int(os.environ.get("BENCH_THREADS", "1"))
torch.set_num_threads(threads)
pairs = int(sys.argv[1]) if len(sys.argv) > 1 else 8
seq = int(sys.argv[2]) if len(sys.argv) > 2 else 64
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 4
warmup = 2

V = 4096
cfg = LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=4, vocab_size=V, rms_norm_eps=1e-5, rope_theta=10000.0,
                  max_position_embeddings=2048, tie_word_embeddings=False, pad_token_id=0, eos_token_id=2,
                  num_labels=1)
torch.manual_seed(0)
model = LlamaForSequenceClassification(cfg)
nparams = sum(p.numel() for p in model.parameters())

# A word-level tokenizer with the same vocabulary size: the data is already
# tokenized, TRL only needs it for the pad and EOS ids.
vocab = {f"t{i}": i for i in range(V)}
tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t1")),
                              pad_token="t0", eos_token="t2", unk_token="t1")

g = torch.Generator().manual_seed(0)
rows = {"chosen_ids": [], "rejected_ids": []}
for _ in range(pairs * (warmup + steps)):
    rows["chosen_ids"].append(torch.randint(3, V, (seq,), generator=g).tolist())
    rows["rejected_ids"].append(torch.randint(3, V, (seq,), generator=g).tolist())
# Build the Arrow table directly with a fixed fingerprint: hashing the data
# for a fingerprint trips a dill/pyarrow pickling bug in this environment.
import pyarrow as pa
ds = Dataset(pa.table(rows), fingerprint="rm_bench")


class Timer(TrainerCallback):
    def __init__(self):
        self.t = []

    def on_step_end(self, args, state, control, **kw):
        self.t.append(time.perf_counter())


timer = Timer()
with tempfile.TemporaryDirectory() as out:
    args = RewardConfig(output_dir=out, per_device_train_batch_size=pairs, gradient_accumulation_steps=1,
                        max_steps=warmup + steps, learning_rate=1e-5, lr_scheduler_type="cosine", warmup_steps=0.03,
                        adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-5, weight_decay=0.1, max_grad_norm=1.0,
                        gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True, save_strategy="no",
                        report_to=[], logging_steps=1000, dataloader_num_workers=0, max_length=None,
                        disable_tqdm=True, seed=0)
    trainer = RewardTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[timer])
    trainer.train()

secs = (timer.t[-1] - timer.t[warmup - 1]) / steps
print(json.dumps({"impl": f"TRL {trl.__version__} RewardTrainer (torch {torch.__version__})", "bench": "rm_train_step",
                  "threads": threads, "pairs": pairs, "seq": seq, "params": nparams, "step_s": secs,
                  "pairs_per_s": pairs / secs, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
