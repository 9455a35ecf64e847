#!/usr/bin/env python3
"""The reference for our PPO iteration: TRL's PPOTrainer on the `small`
policy shape, on CPU, float32. Prints one JSON line.

    PYTHONPATH=<dir with trl 1.12 + its deps> python bench/ppo_bench.py [prompts] [prompt_len] [response_len] [iterations] [ppo_epochs]

ppo_epochs defaults to $PPO_EPOCHS, else 1 (our bench/ppo_bench.rs reads PPO_EPOCHS).

TRL version: PPO left TRL's top level in 1.x for `trl.experimental.ppo`, and
was removed altogether in TRL 1.13.0; 1.12.0 is the newest release that ships
it, so this script runs against TRL 1.12.0 (bench/trainer_run.sh installs it
into its own --target folder, apart from the 1.16.0 that the DPO bench uses).

Models (all float32, random weights): the policy is LlamaForCausalLM of the
`small` shape (seed 0); the reference policy is TRL's own frozen deep copy of
it (`ref_model=None`); reward model (seed 1) and value model (seed 2) are
LlamaForSequenceClassification(num_labels=1) of the same shape.

Workload per PPO iteration: `prompts` random prompts of `prompt_len` tokens
(no padding), exactly `response_len` sampled new tokens each (temperature 1,
top_k 0, top_p 1; no stop token: TRL sets the policy's generation
`eos_token_id` to None when `stop_token`/`stop_token_id` are unset, so
generation never stops early; every rollout is checked to be full length),
then `ppo_epochs` epochs (default 1) over 2 mini-batches of prompts/2, one
AdamW step per mini-batch (betas 0.9/0.95, eps 1e-5, wd 0.1, lr 1e-6, cosine schedule
stepped once per iteration). kl_coef 0.05 (k1), cliprange 0.2, vf_coef 0.1,
cliprange_value 0.2, gamma 1, lam 0.95, no reward whitening, gradient
checkpointing off. 1 warm-up iteration, then `iterations` timed ones.

How the time is split (per timed iteration, means reported):
- iteration_s: wall time between consecutive `on_step_end` callbacks (TRL's
  PPOTrainer calls it once per iteration, after the optimizer steps and the
  scheduler step).
- generate_s: time inside `trl.experimental.ppo.ppo_trainer.batch_generation`
  (wrapped by monkeypatching the module attribute that `train()` looks up):
  HF `generate` with sampling, KV cache, and `output_scores=True`. The
  rollout log-probs of the policy are taken from those scores; TRL does no
  separate policy forward for them.
- score_s: the no-grad rollout forwards after generation: the reference
  policy's forward over prompt+response (module function `forward` called
  with grad disabled) and `get_reward` for the value model (values at every
  response position) and for the reward model (score at the last token).
- train_s: from the start of the first grad-enabled `forward` (the
  PolicyAndValueWrapper: value backbone + policy, one loss) to the end of
  the iteration: all PPO epochs' forward/backward/AdamW steps of policy and
  value, plus TRL's metric gathering and the scheduler step.
- other_s: the rest (data loading, GAE/advantage whitening, TRL's
  gc.collect()/cleanup between iterations).

What TRL 1.12's PPO does that a fair comparison must know:
- no gradient clipping: `optimizer.step()` follows `accelerator.backward`
  directly, so `max_grad_norm` is ignored;
- one AdamW over policy + value parameters, one loss pg + vf_coef * vf; the
  value model has its own backbone (two full forwards per update);
- the training forward computes the policy's full [rows, seq, vocab] logits
  (and output_hidden_states) and slices the response part afterwards;
- masks come from `query_responses != pad_token_id`: a sampled token equal
  to the pad id (0) is treated as padding (ends the sequence for the reward
  and masks the loss there); with random weights that happens now and then,
  generation itself always runs the full length;
- `gc.collect()` and `empty_cache()` run several times per iteration.

Threads: BENCH_THREADS (torch.set_num_threads), default 1.
"""
import contextlib
import json
import os
import platform
import resource
import sys
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch
import datasets
import pyarrow as pa
import transformers
from datasets import Dataset
from tokenizers import Tokenizer, models
from transformers import (LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerFast,
                          TrainerCallback)
from transformers.trainer_callback import PrinterCallback
import accelerate
import trl
from trl.experimental.ppo import PPOConfig, PPOTrainer
import trl.experimental.ppo.ppo_trainer as ppo_mod

datasets.disable_progress_bars()
transformers.logging.set_verbosity_error()

threads = int(os.environ.get("BENCH_THREADS", "1"))
torch.set_num_threads(threads)
prompts = int(sys.argv[1]) if len(sys.argv) > 1 else 16
prompt_len = int(sys.argv[2]) if len(sys.argv) > 2 else 16
response_len = int(sys.argv[3]) if len(sys.argv) > 3 else 64
iterations = int(sys.argv[4]) if len(sys.argv) > 4 else 2
ppo_epochs = int(sys.argv[5]) if len(sys.argv) > 5 else int(os.environ.get("PPO_EPOCHS", "1"))
warmup = 1
mini_batches = 2

V = 4096


def config(**kw):
    return LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
                       num_key_value_heads=4, vocab_size=V, rms_norm_eps=1e-5, rope_theta=10000.0,
                       max_position_embeddings=2048, tie_word_embeddings=False, pad_token_id=0, eos_token_id=2,
                       bos_token_id=1, **kw)


torch.manual_seed(0)
policy = LlamaForCausalLM(config())
torch.manual_seed(1)
reward_model = LlamaForSequenceClassification(config(num_labels=1))
torch.manual_seed(2)
value_model = LlamaForSequenceClassification(config(num_labels=1))
nparams_policy = sum(p.numel() for p in policy.parameters())
nparams_value = sum(p.numel() for p in value_model.parameters())

vocab = {f"t{i}": i for i in range(V)}
tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t1")),
                              pad_token="t0", eos_token="t2", unk_token="t1")

n = prompts * (warmup + iterations)
g = torch.Generator().manual_seed(0)
rows = {"input_ids": [torch.randint(3, V, (prompt_len,), generator=g).tolist() for _ in range(n)]}
# Arrow table with a fixed fingerprint (see rm_bench.py).
ds = Dataset(pa.table(rows), fingerprint=f"ppo_bench_{prompts}_{prompt_len}_{iterations}")

# --- instrumentation -------------------------------------------------------
gen_spans, score_spans, train_starts = [], [], []
_batch_generation, _forward, _get_reward = ppo_mod.batch_generation, ppo_mod.forward, ppo_mod.get_reward


def timed_batch_generation(*a, **kw):
    t0 = time.perf_counter()
    query_responses, logits = _batch_generation(*a, **kw)
    gen_spans.append((t0, time.perf_counter()))
    assert query_responses.shape[1] == prompt_len + response_len, query_responses.shape
    return query_responses, logits


def timed_forward(*a, **kw):
    if torch.is_grad_enabled():  # the PPO update's forward of PolicyAndValueWrapper
        train_starts.append(time.perf_counter())
        return _forward(*a, **kw)
    t0 = time.perf_counter()  # the reference policy's rollout forward
    out = _forward(*a, **kw)
    score_spans.append((t0, time.perf_counter()))
    return out


def timed_get_reward(*a, **kw):
    t0 = time.perf_counter()
    out = _get_reward(*a, **kw)
    score_spans.append((t0, time.perf_counter()))
    return out


ppo_mod.batch_generation = timed_batch_generation
ppo_mod.forward = timed_forward
ppo_mod.get_reward = timed_get_reward


class Timer(TrainerCallback):
    def __init__(self):
        self.end = []

    def on_step_end(self, args, state, control, **kw):
        self.end.append(time.perf_counter())


timer = Timer()
with tempfile.TemporaryDirectory() as out:
    args = PPOConfig(output_dir=out, per_device_train_batch_size=prompts, gradient_accumulation_steps=1,
                     num_mini_batches=mini_batches, num_ppo_epochs=ppo_epochs, total_episodes=n,
                     local_rollout_forward_batch_size=prompts, response_length=response_len, stop_token=None,
                     stop_token_id=None, temperature=1.0, missing_eos_penalty=None, kl_coef=0.05,
                     kl_estimator="k1", cliprange=0.2, vf_coef=0.1, cliprange_value=0.2, gamma=1.0, lam=0.95,
                     whiten_rewards=False, learning_rate=1e-6, lr_scheduler_type="cosine", warmup_steps=0,
                     adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-5, weight_decay=0.1, max_grad_norm=1.0,
                     gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True, save_strategy="no",
                     eval_strategy="no", report_to=[], logging_strategy="no", disable_tqdm=True,
                     num_sample_generations=0, dataloader_num_workers=0, seed=0)
    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=None, reward_model=reward_model,
                         train_dataset=ds, value_model=value_model, callbacks=[timer])
    trainer.remove_callback(PrinterCallback)  # it prints every iteration's metrics to stdout
    with contextlib.redirect_stdout(sys.stderr):  # accelerator.print("===training policy===")
        trainer.train()

assert len(timer.end) == warmup + iterations, len(timer.end)


def within(spans, a, b):
    return sum(e - s for s, e in spans if a <= s < b)


its, gens, scores, trains = [], [], [], []
for k in range(warmup, warmup + iterations):
    a, b = timer.end[k - 1], timer.end[k]
    its.append(b - a)
    gens.append(within(gen_spans, a, b))
    scores.append(within(score_spans, a, b))
    trains.append(b - min(t for t in train_starts if a <= t < b))


def mean(x):
    return sum(x) / len(x)


iteration_s = mean(its)
print(json.dumps({
    "impl": "trl", "bench": "ppo", "threads": threads, "params_policy": nparams_policy,
    "params_value": nparams_value, "prompts": prompts, "prompt_len": prompt_len, "response_len": response_len,
    "iterations": iterations, "ppo_epochs": ppo_epochs, "mini_batches": mini_batches,
    "iteration_s": iteration_s, "generate_s": mean(gens), "score_s": mean(scores), "train_s": mean(trains),
    "other_s": iteration_s - mean(gens) - mean(scores) - mean(trains),
    "episodes_per_s": prompts / iteration_s, "tokens_per_s": prompts * (prompt_len + response_len) / iteration_s,
    "generated_tokens_per_s": prompts * response_len / mean(gens),
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "versions": {"trl": trl.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                 "accelerate": accelerate.__version__, "datasets": datasets.__version__,
                 "python": platform.python_version()},
}))
