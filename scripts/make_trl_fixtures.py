#!/usr/bin/env python3
"""Reference values of TRL's losses, metrics and one optimizer step, for
trainer/tests/trl_parity.rs.

Run from the repository root with a venv that has torch + transformers + trl:
    .venv/bin/python scripts/make_trl_fixtures.py
Writes trainer/tests/fixtures/trl/: two tiny random Llama checkpoints
(`policy/`, `reference/`), `expected.json`, and `after_<case>.safetensors`
(the policy's weights after one optimizer step).

What it follows (TRL 1.16.0, transformers 5.24.0):
- DPO: `trl/trainer/dpo_trainer.py` `_compute_loss`: per-sequence log-probs are
  sums over completion tokens; `sigmoid` -logsigmoid(beta*delta), `robust`
  ((1-eps)(-logsigmoid(bd)) - eps(-logsigmoid(-bd)))/(1-2eps), `ipo` on
  per-token means; RPO is `loss_type=["sigmoid", "sft"]` with weights
  [1, alpha], the `sft` term the mean NLL over every chosen token of the batch;
  metrics `rewards/chosen` = beta*(logp - ref_logp) etc.
- SFT: `sft_trainer.py`: the mean NLL over all completion tokens of the batch.
- RM: `reward_trainer.py`: -logsigmoid(r_chosen - r_rejected - margin), mean
  over pairs, plus `center_rewards_coefficient * mean((r_c + r_r)^2)`; the
  reward is `LlamaForSequenceClassification`'s score at the last real token.
- One step: the global grad norm before clipping (`clip_grad_norm_` at 1.0),
  then torch.optim.AdamW with decoupled weight decay on matrices only
  (transformers' `get_decay_parameter_names` leaves norms undecayed).

The computations run in float64 on the float32-rounded weights, so the
reference is the exact answer that our float32 must approach.
"""
import json
import os
import shutil

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

OUT = os.path.join(os.path.dirname(__file__), "..", "trainer", "tests", "fixtures", "trl")

CFG = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
           num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
           max_position_embeddings=64, tie_word_embeddings=False, rope_theta=10000.0,
           bos_token_id=1, eos_token_id=2, pad_token_id=0)

# AdamW as our CLI's defaults (Llama-2): betas (0.9, 0.95), eps 1e-5, wd 0.1.
ADAM = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1)
MAX_GRAD_NORM = 1.0


def tiny_model(seed):
    g = torch.Generator().manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**CFG, attn_implementation="eager"))
    with torch.no_grad():
        for p in model.parameters():  # larger than HF's init so the losses move
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.to(torch.float32)


def seq_logps(model, prompt, completion):
    """Summed log-probs of `completion` after `prompt`, and the token count."""
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids).logits[0, :-1]
    lp = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0]
    return lp[len(prompt) - 1:].sum(), len(completion)


def dpo_loss(case, model, ref, pairs):
    beta, eps, alpha = case["beta"], case.get("label_smoothing", 0.0), case.get("rpo_alpha", 0.0)
    losses, metrics = [], {k: [] for k in ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"]}
    nll_sum, nll_tokens = 0.0, 0
    for p in pairs:
        pc, nc = seq_logps(model, p["prompt"], p["chosen"])
        pr, nr = seq_logps(model, p["prompt"], p["rejected"])
        with torch.no_grad():
            rc, _ = seq_logps(ref, p["prompt"], p["chosen"])
            rr, _ = seq_logps(ref, p["prompt"], p["rejected"])
        cl, rl = pc - rc, pr - rr
        d = cl - rl
        if case["loss"] == "sigmoid":
            loss = -F.logsigmoid(beta * d)
        elif case["loss"] == "robust":
            loss = (-(1 - eps) * F.logsigmoid(beta * d) + eps * F.logsigmoid(-beta * d)) / (1 - 2 * eps)
        elif case["loss"] == "ipo":
            loss = (cl / nc - rl / nr - 1 / (2 * beta)) ** 2
        losses.append(loss)
        nll_sum = nll_sum - pc
        nll_tokens += nc
        metrics["rewards/chosen"].append(beta * cl.item())
        metrics["rewards/rejected"].append(beta * rl.item())
        metrics["rewards/accuracies"].append(float(cl.item() > rl.item()))
        metrics["rewards/margins"].append(beta * d.item())
        metrics["logps/chosen"].append(pc.item())
        metrics["logps/rejected"].append(pr.item())
    total = torch.stack(losses).mean()
    out = {k: sum(v) / len(v) for k, v in metrics.items()}
    if alpha > 0:
        nll = nll_sum / nll_tokens
        total = total + alpha * nll
        out["nll_loss"] = nll.item()
    return total, out


def tiny_rm(seed):
    g = torch.Generator().manual_seed(seed)
    model = LlamaForSequenceClassification(LlamaConfig(**CFG, num_labels=1, attn_implementation="eager"))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.to(torch.float32)


def rm_loss(model, pairs, centering):
    """TRL's RewardTrainer.compute_loss: BT with margin, plus reward centering."""
    score = lambda ids: model(input_ids=torch.tensor([ids])).logits[0, 0]
    rc = torch.stack([score(p["chosen"]) for p in pairs])
    rr = torch.stack([score(p["rejected"]) for p in pairs])
    m = torch.tensor([p["margin"] for p in pairs], dtype=rc.dtype)
    loss = -F.logsigmoid(rc - rr - m).mean() + centering * torch.mean((rc + rr) ** 2)
    return loss, {"accuracy": (rc > rr).double().mean().item(), "margin": (rc - rr).mean().item()}


def sft_loss(model, examples):
    nll, tokens = 0.0, 0
    for e in examples:
        lp, n = seq_logps(model, e["prompt"], e["completion"])
        nll, tokens = nll - lp, tokens + n
    return nll / tokens, {"num_target_tokens": tokens}


def step(model, loss):
    """Grad norm before clipping and the weights after one clipped AdamW step."""
    model.zero_grad()
    loss.backward()
    params = [p for p in model.parameters()]
    norm = torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM).item()
    decay = [p for n, p in model.named_parameters() if "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if "norm" in n]
    opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], **ADAM)
    opt.step()
    return norm, {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}


def main():
    torch.manual_seed(0)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    policy, reference = tiny_model(11), tiny_model(12)
    policy.save_pretrained(os.path.join(OUT, "policy"), safe_serialization=True)
    reference.save_pretrained(os.path.join(OUT, "reference"), safe_serialization=True)
    g = torch.Generator().manual_seed(99)
    rand = lambda n: torch.randint(3, CFG["vocab_size"], (n,), generator=g).tolist()
    pairs = [{"prompt": [1] + rand(3 + i), "chosen": rand(2 + i) + [2], "rejected": rand(4 + (i % 3)) + [2]} for i in range(4)]
    sft = [{"prompt": [1] + rand(2 + i), "completion": rand(3 + 2 * i) + [2]} for i in range(3)]
    cases = [
        # the default path: reference = the starting policy, sigmoid, beta 0.1
        dict(name="dpo_default", loss="sigmoid", beta=0.1, reference="policy"),
        dict(name="dpo_sigmoid_ref", loss="sigmoid", beta=0.1, reference="reference"),
        dict(name="dpo_robust_ref", loss="robust", beta=0.1, label_smoothing=0.1, reference="reference"),
        dict(name="dpo_ipo_ref", loss="ipo", beta=0.1, reference="reference"),
        dict(name="dpo_rpo_ref", loss="sigmoid", beta=0.1, rpo_alpha=0.2, reference="reference"),
    ]
    expected = {"pairs": pairs, "sft": sft, "adamw": ADAM, "max_grad_norm": MAX_GRAD_NORM, "cases": []}
    for case in cases:
        model = tiny_model(11).to(torch.float64)
        ref = (tiny_model(11) if case["reference"] == "policy" else tiny_model(12)).to(torch.float64)
        loss, metrics = dpo_loss(case, model, ref, pairs)
        norm, after = step(model, loss)
        save_file(after, os.path.join(OUT, f"after_{case['name']}.safetensors"), metadata={"format": "pt"})
        expected["cases"].append({**case, "loss_value": loss.item(), "grad_norm": norm, "metrics": metrics})
    model = tiny_model(11).to(torch.float64)
    loss, metrics = sft_loss(model, sft)
    norm, after = step(model, loss)
    save_file(after, os.path.join(OUT, "after_sft.safetensors"), metadata={"format": "pt"})
    expected["cases"].append({"name": "sft", "loss_value": loss.item(), "grad_norm": norm, "metrics": metrics})
    # reward model: TRL's RewardTrainer loss with Llama-2 margins and centering 0.01
    tiny_rm(13).save_pretrained(os.path.join(OUT, "rm"), safe_serialization=True)
    rm_pairs = [{"chosen": [1] + rand(4 + i) + [2], "rejected": [1] + rand(3 + 2 * i) + [2], "margin": float(i % 4)} for i in range(4)]
    expected["rm_pairs"] = rm_pairs
    model = tiny_rm(13).to(torch.float64)
    loss, metrics = rm_loss(model, rm_pairs, 0.01)
    norm, after = step(model, loss)
    save_file(after, os.path.join(OUT, "after_rm.safetensors"), metadata={"format": "pt"})
    expected["cases"].append({"name": "rm", "centering": 0.01, "loss_value": loss.item(), "grad_norm": norm, "metrics": metrics})
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    print(json.dumps([(c["name"], c["loss_value"], c["grad_norm"]) for c in expected["cases"]], indent=1))


if __name__ == "__main__":
    main()
