#!/usr/bin/env python3
"""The reference for our DPO training step: TRL's DPOTrainer on the `small`
policy shape, on CPU, float32. Prints one JSON line.

    PYTHONPATH=<dir with trl + its deps> python bench/dpo_bench.py [pairs] [prompt_len] [response_len] [steps]

Workload: `pairs` random pre-tokenized preference pairs per optimizer step
(prompt of `prompt_len` tokens, chosen and rejected responses of
`response_len` tokens each, no padding), one optimizer step per batch (no
gradient accumulation), sigmoid loss with beta 0.1, AdamW (transformers'
default fused torch AdamW; betas 0.9/0.95, eps 1e-5 as ours, wd 0.1 on all
but norm weights), lr 1e-6 with a cosine schedule, global-norm clip 1.0,
gradient checkpointing off (TRL's default is on), float32 (TRL's default
would be bf16 autocast). 2 warm-up steps, then `steps` timed steps.

Per step TRL does one forward over the 2*pairs rows with its "fused LM head"
(trl.trainer.utils.add_fused_lm_head): on CPU (no Triton) it projects every
position, prompt included, through the LM head in 32768-row tiles and also
computes per-token entropy, mean logit and top-1 flags for its metrics; the
sequence log-prob is the sum over response tokens (the first one predicted
from the last prompt token). Loss = mean over pairs of -logsigmoid(beta *
(chosen log-ratio - rejected log-ratio)).

Reference log-probs: `precompute_ref_log_probs=True`, so TRL runs the frozen
initial policy over the whole data set once, in batches of `pairs`, before
training (inside `DPOTrainer.__init__`), and each step then does a single
forward + backward of the policy over the 2*pairs rows (chosen rows then
rejected rows, in one batch). `ref_precompute_s` is the wall time of that
pass over all pairs*(2+steps) pairs; `ref_precompute_per_batch_s` divides it
by the number of batches.

Step time: `step_s` is the mean wall time between consecutive `on_step_end`
callbacks (as bench/rm_bench.py does: includes the data loader's collate),
`step_inner_s` the mean of on_step_begin -> on_step_end.

Pre-tokenized input: TRL 1.16's DPOTrainer always tokenizes the text
columns `prompt`/`chosen`/`rejected` in `_prepare_dataset`; its output is a
data set with `prompt_ids`/`chosen_ids`/`rejected_ids` lists, which is what
the collator (`DataCollatorForPreference`) consumes. We build that data set
directly and override `_prepare_dataset` to return it unchanged, so no
tokenizer runs and no EOS is appended (the token ids are exactly ours). The
word-level tokenizer is only there for the pad id.

Threads: BENCH_THREADS (torch.set_num_threads), default 1.
"""
import json
import os
import platform
import resource
import sys
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")

import torch
import datasets
import pyarrow as pa
import transformers
from datasets import Dataset
from tokenizers import Tokenizer, models
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, TrainerCallback
from transformers.trainer_callback import PrinterCallback
import accelerate
import trl
from trl import DPOConfig, DPOTrainer

datasets.disable_progress_bars()
transformers.logging.set_verbosity_error()

threads = int(os.environ.get("BENCH_THREADS", "1"))
torch.set_num_threads(threads)
pairs = int(sys.argv[1]) if len(sys.argv) > 1 else 8
prompt_len = int(sys.argv[2]) if len(sys.argv) > 2 else 64
response_len = int(sys.argv[3]) if len(sys.argv) > 3 else 64
steps = int(sys.argv[4]) if len(sys.argv) > 4 else 4
warmup = 2

V = 4096
cfg = LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=4, vocab_size=V, rms_norm_eps=1e-5, rope_theta=10000.0,
                  max_position_embeddings=2048, tie_word_embeddings=False, pad_token_id=0, eos_token_id=2,
                  bos_token_id=1)
torch.manual_seed(0)
model = LlamaForCausalLM(cfg)
nparams = sum(p.numel() for p in model.parameters())

vocab = {f"t{i}": i for i in range(V)}
tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t1")),
                              pad_token="t0", eos_token="t2", unk_token="t1")

n = pairs * (warmup + steps)
g = torch.Generator().manual_seed(0)
rows = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}
for _ in range(n):
    rows["prompt_ids"].append(torch.randint(3, V, (prompt_len,), generator=g).tolist())
    rows["chosen_ids"].append(torch.randint(3, V, (response_len,), generator=g).tolist())
    rows["rejected_ids"].append(torch.randint(3, V, (response_len,), generator=g).tolist())
# Arrow table with a fixed fingerprint: hashing the data for a fingerprint
# trips a dill/pyarrow pickling bug in this environment (see rm_bench.py).
ds = Dataset(pa.table(rows), fingerprint=f"dpo_bench_{pairs}_{prompt_len}_{response_len}_{steps}")


class PreTokenizedDPOTrainer(DPOTrainer):
    ref_precompute_s = 0.0
    ref_precompute_batches = 0

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        assert set(dataset.column_names) == {"prompt_ids", "chosen_ids", "rejected_ids"}
        return dataset

    def _precompute_ref_logps(self, dataset, name, batch_size):
        t0 = time.perf_counter()
        out = super()._precompute_ref_logps(dataset, name, batch_size)
        PreTokenizedDPOTrainer.ref_precompute_s += time.perf_counter() - t0
        PreTokenizedDPOTrainer.ref_precompute_batches += -(-len(dataset) // batch_size)
        return out


class Timer(TrainerCallback):
    def __init__(self):
        self.begin, self.end = [], []

    def on_step_begin(self, args, state, control, **kw):
        self.begin.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kw):
        self.end.append(time.perf_counter())


timer = Timer()
with tempfile.TemporaryDirectory() as out:
    args = DPOConfig(output_dir=out, per_device_train_batch_size=pairs, gradient_accumulation_steps=1,
                     max_steps=warmup + steps, learning_rate=1e-6, lr_scheduler_type="cosine", warmup_steps=0,
                     adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-5, weight_decay=0.1, max_grad_norm=1.0,
                     loss_type=["sigmoid"], beta=0.1, precompute_ref_log_probs=True, max_length=None,
                     gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True, save_strategy="no",
                     eval_strategy="no", report_to=[], logging_strategy="no", disable_tqdm=True,
                     dataloader_num_workers=0, seed=0)
    trainer = PreTokenizedDPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                                     callbacks=[timer])
    assert trainer.ref_model is None  # precomputed: no reference model kept during training
    trainer.remove_callback(PrinterCallback)  # it prints the end-of-training summary to stdout
    trainer.train()

assert len(timer.end) == warmup + steps, len(timer.end)
step_s = (timer.end[-1] - timer.end[warmup - 1]) / steps
inner = [e - b for b, e in zip(timer.begin[warmup:], timer.end[warmup:])]
tokens = 2 * pairs * (prompt_len + response_len)
print(json.dumps({
    "impl": "trl", "bench": "dpo", "threads": threads, "params": nparams, "pairs": pairs,
    "prompt_len": prompt_len, "response_len": response_len, "steps": steps, "step_s": step_s,
    "step_inner_s": sum(inner) / len(inner), "tokens_per_s": tokens / step_s, "pairs_per_s": pairs / step_s,
    "ref_precompute_s": PreTokenizedDPOTrainer.ref_precompute_s,
    "ref_precompute_pairs": n, "ref_precompute_per_batch_s":
        PreTokenizedDPOTrainer.ref_precompute_s / max(1, PreTokenizedDPOTrainer.ref_precompute_batches),
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "versions": {"trl": trl.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                 "accelerate": accelerate.__version__, "datasets": datasets.__version__,
                 "python": platform.python_version()},
}))
