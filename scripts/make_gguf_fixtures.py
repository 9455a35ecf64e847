#!/usr/bin/env python3
"""Generate the GGUF parity fixtures for `policy::gguf`.

Run from the repository root with a virtualenv that has PyPI's `gguf` and numpy:

    python3 -m venv .venv && .venv/bin/pip install gguf numpy
    .venv/bin/python scripts/make_gguf_fixtures.py

It writes, into policy/tests/fixtures/gguf/:

  * quants.gguf: small tensors of every type `policy::gguf` dequantizes (F32,
    F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K),
    written by gguf-py's GGUFWriter. Where gguf-py can quantize a type
    (`gguf.quants.quantize`), a tensor `<type>` holds quantized random normal
    data; every quantized type also has a tensor `<type>_bytes` of random block
    bytes whose f16 scale fields are set to finite random f16 values (the other
    bytes, i.e. every quant and 6/8-bit sub-scale, take any value, so all bit
    patterns are exercised). K-quants can only be made that way: gguf-py
    dequantizes them but does not quantize them.
  * quants/<tensor>.f32: what `gguf.quants.dequantize` returns for each tensor,
    little-endian f32, row-major in numpy's shape (outermost first).
  * quants.json: the tensor table as gguf-py's GGUFReader reads it (name, type,
    GGUF dims innermost first, numpy shape, data offset) and the data section's
    offset.
  * metadata.gguf + metadata.json: a metadata value of every GGUF value type,
    arrays of every element type, a nested array, and `general.alignment` = 64,
    with two small F32 tensors; the JSON lists each key's type and value
    (floats as the exact f64 of the stored value).
  * llama.gguf + llama.json + llama/*.f32: a tiny `llama` model's metadata as
    convert_hf_to_gguf.py writes it (through GGUFWriter's add_* helpers, so
    the key names are gguf-py's), q/k weights permuted by the converter's
    `permute` (the HF originals in llama/*.f32), a `rope_freqs.weight` made
    by the converter's Llama-3 formula, and no `output.weight` (tied
    embeddings); llama.json holds the HF config values they come from.
  * model.gguf + model/*.f32: a whole tiny llama with a gpt2 tokenizer and a
    chat template, for `rlhf policy import` (tests/policy_cli.rs).

`cargo test -p policy --test gguf` reads these with the Rust reader and checks
it agrees exactly.
"""

import importlib.metadata
import json
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T, GGUFValueType as V
from gguf.constants import GGML_QUANT_SIZES

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "policy" / "tests" / "fixtures" / "gguf"

# Byte offsets of the f16 scale fields inside each block, from ggml-common.h.
F16_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q2_K: [80, 82],  # scales[16] qs[64] d dmin
    T.Q3_K: [108],  # hmask[32] qs[64] scales[12] d
    T.Q4_K: [0, 2],  # d dmin scales[12] qs[128]
    T.Q5_K: [0, 2],  # d dmin scales[12] qh[32] qs[128]
    T.Q6_K: [208],  # ql[128] qh[64] scales[16] d
}
QUANTIZABLE = [T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]


def random_blocks(rng, qtype, rows, cols):
    """Random block bytes of a (rows, cols) tensor with finite f16 scales."""
    block, size = GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        scales = rng.normal(0, 0.02, size=n_blocks).astype(np.float16)
        # One block with a subnormal scale, one with a negative zero.
        scales[0] = np.float16(3e-7)
        scales[-1] = np.float16(-0.0)
        raw[:, off : off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(rows, cols // block * size)


def write_quants(rng):
    writer = gguf.GGUFWriter(str(OUT / "quants.gguf"), arch="llama")
    expected = {}

    def add(name, data, raw_dtype=None):
        if raw_dtype is None:
            writer.add_tensor(name, data)
            qtype = T.F32 if data.dtype == np.float32 else T.F16
        else:
            writer.add_tensor(name, data, raw_dtype=raw_dtype)
            qtype = raw_dtype
        expected[name] = gguf.quants.dequantize(data, qtype).astype(np.float32)

    x = rng.normal(0, 1, size=(2, 256)).astype(np.float32)
    add("f32", x)
    add("f32_3d", rng.normal(0, 1, size=(2, 3, 8)).astype(np.float32))
    add("f16", rng.normal(0, 1, size=(2, 256)).astype(np.float16))
    for qtype in QUANTIZABLE:
        add(qtype.name.lower(), gguf.quants.quantize(x, qtype), raw_dtype=qtype)
    # More rows than one, rows of several blocks.
    add("q8_0_rows", gguf.quants.quantize(rng.normal(0, 1, size=(3, 64)).astype(np.float32), T.Q8_0), raw_dtype=T.Q8_0)
    for qtype in F16_FIELDS:
        add(f"{qtype.name.lower()}_bytes", random_blocks(rng, qtype, 2, 256), raw_dtype=qtype)
    # A bf16 tensor from raw bit patterns (every exponent, both signs), no NaNs.
    bits = rng.integers(0, 1 << 16, size=(2, 256), dtype=np.uint16)
    bits = np.where((bits & 0x7F80) == 0x7F80, bits & 0xBFFF, bits).astype(np.uint16)
    add("bf16_bits", bits.view(np.uint8), raw_dtype=T.BF16)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    (OUT / "quants").mkdir(exist_ok=True)
    for old in (OUT / "quants").glob("*.f32"):
        old.unlink()
    for name, values in expected.items():
        assert np.all(np.isfinite(values)), name
        values.astype("<f4").tofile(OUT / "quants" / f"{name}.f32")

    reader = gguf.GGUFReader(str(OUT / "quants.gguf"))
    tensors = []
    for t in reader.tensors:
        tensors.append(
            {
                "name": t.name,
                "type": t.tensor_type.name,
                "dims": [int(d) for d in t.shape],
                "shape": list(expected[t.name].shape),
                "offset": int(t.data_offset) - int(reader.data_offset),
                "n_bytes": int(t.n_bytes),
            }
        )
        # GGUFReader's own dequantization of what it read back agrees.
        got = gguf.quants.dequantize(t.data, t.tensor_type)
        assert np.array_equal(got.reshape(-1).view(np.uint32), expected[t.name].reshape(-1).view(np.uint32)), t.name
    manifest = {"data_offset": int(reader.data_offset), "alignment": int(reader.alignment), "tensors": tensors}
    (OUT / "quants.json").write_text(json.dumps(manifest, indent=1) + "\n")


def f32(x):
    """The exact f64 of the f32 nearest x."""
    return float(np.float32(x))


def write_metadata(rng):
    writer = gguf.GGUFWriter(str(OUT / "metadata.gguf"), arch="llama")
    writer.add_custom_alignment(64)
    kvs = []  # (key, type name, value, elem type name or None)

    def kv(key, value, vtype, sub=None):
        writer.add_key_value(key, value, vtype, sub_type=sub)
        kvs.append((key, vtype, value, sub))

    kv("test.uint8", 255, V.UINT8)
    kv("test.int8", -128, V.INT8)
    kv("test.uint16", 65535, V.UINT16)
    kv("test.int16", -32768, V.INT16)
    kv("test.uint32", 4294967295, V.UINT32)
    kv("test.int32", -2147483648, V.INT32)
    kv("test.float32", f32(3.14159), V.FLOAT32)
    kv("test.float32_tiny", f32(1e-40), V.FLOAT32)
    kv("test.bool_true", True, V.BOOL)
    kv("test.bool_false", False, V.BOOL)
    kv("test.string", "héllo, wörld ✓ \U0001F600\n\t\"quoted\"", V.STRING)
    kv("test.string_empty", "", V.STRING)
    kv("test.uint64", 18446744073709551615, V.UINT64)
    kv("test.int64", -9223372036854775808, V.INT64)
    kv("test.float64", 2.718281828459045, V.FLOAT64)
    kv("test.array.uint8", [0, 1, 255], V.ARRAY, V.UINT8)
    kv("test.array.int8", [-128, 0, 127], V.ARRAY, V.INT8)
    kv("test.array.uint16", [0, 65535], V.ARRAY, V.UINT16)
    kv("test.array.int16", [-32768, 32767], V.ARRAY, V.INT16)
    kv("test.array.uint32", [0, 4294967295], V.ARRAY, V.UINT32)
    kv("test.array.int32", [-2147483648, 2147483647, 0], V.ARRAY, V.INT32)
    kv("test.array.float32", [f32(v) for v in rng.normal(0, 1, 5)], V.ARRAY, V.FLOAT32)
    kv("test.array.bool", [True, False, True], V.ARRAY, V.BOOL)
    kv("test.array.string", ["<s>", "", "▁the", "é"], V.ARRAY, V.STRING)
    kv("test.array.uint64", [0, 18446744073709551615], V.ARRAY, V.UINT64)
    kv("test.array.int64", [-9223372036854775808, 9223372036854775807], V.ARRAY, V.INT64)
    kv("test.array.float64", [0.1, -1e300], V.ARRAY, V.FLOAT64)
    kv("test.array.nested", [[1, 2, 3], [-4]], V.ARRAY)

    writer.add_tensor("a", np.arange(15, dtype=np.float32).reshape(3, 5))
    writer.add_tensor("b", np.arange(3, dtype=np.float32) - 1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    def enc(value, vtype, sub):
        if vtype == V.ARRAY:
            if sub is None:  # nested lists of INT32, as the writer infers
                if isinstance(value[0], list):
                    return {"type": "ARRAY", "elem_type": "ARRAY", "value": [enc(v, V.ARRAY, None) for v in value]}
                return {"type": "ARRAY", "elem_type": "INT32", "value": value}
            return {"type": "ARRAY", "elem_type": sub.name, "value": value}
        return {"type": vtype.name, "value": value}

    entries = [{"key": "general.architecture", "type": "STRING", "value": "llama"}]
    entries.append({"key": "general.alignment", "type": "UINT32", "value": 64})
    entries += [{"key": k, **enc(v, t, s)} for k, t, v, s in kvs]

    # Cross-check with gguf-py's reader (it does not decode nested arrays).
    reader = gguf.GGUFReader(str(OUT / "metadata.gguf"))
    assert [f.name for f in reader.fields.values() if not f.name.startswith("GGUF.")] == [e["key"] for e in entries]
    for e in entries:
        if e.get("elem_type") == "ARRAY":
            continue
        got = reader.fields[e["key"]].contents()
        assert got == e["value"], (e["key"], got, e["value"])
    meta = {
        "alignment": int(reader.alignment),
        "data_offset": int(reader.data_offset),
        "metadata": entries,
        "tensors": {t.name: [int(d) for d in t.shape] for t in reader.tensors},
    }
    (OUT / "metadata.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")


def permute(weights, n_head, n_head_kv):
    """convert_hf_to_gguf.py's LlamaModel.permute (HF -> GGUF q/k row order)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def llama3_rope_factors(hparams):
    """convert_hf_to_gguf.py's Llama-3 rope_freqs (per-frequency divisors)."""
    import math
    rope_scaling = hparams["rope_scaling"]
    base = hparams["rope_theta"]
    dim = hparams["head_dim"]
    # torch.arange(0, dim, 2, dtype=torch.float32) / dim, base ** that, in float32
    freqs = 1.0 / (np.float32(base) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
    factor = rope_scaling.get("factor", 8.0)
    low_freq_factor = rope_scaling.get("low_freq_factor", 1.0)
    high_freq_factor = rope_scaling.get("high_freq_factor", 4.0)
    old_context_len = hparams.get("original_max_position_embeddings", 8192)
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    rope_factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / float(freq)
        if wavelen < high_freq_wavelen:
            rope_factors.append(1)
        elif wavelen > low_freq_wavelen:
            rope_factors.append(factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            rope_factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(rope_factors, dtype=np.float32)


def write_llama(rng):
    hp = {
        "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 1,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "vocab_size": 40,
        "max_position_embeddings": 131072, "bos_token_id": 1, "eos_token_id": 2,
        "pad_token_id": 3, "tie_word_embeddings": True,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    }
    w = gguf.GGUFWriter(str(OUT / "llama.gguf"), arch="llama")
    w.add_context_length(hp["max_position_embeddings"])
    w.add_embedding_length(hp["hidden_size"])
    w.add_block_count(hp["num_hidden_layers"])
    w.add_feed_forward_length(hp["intermediate_size"])
    w.add_head_count(hp["num_attention_heads"])
    w.add_head_count_kv(hp["num_key_value_heads"])
    w.add_rope_freq_base(hp["rope_theta"])
    w.add_layer_norm_rms_eps(hp["rms_norm_eps"])
    w.add_key_length(hp["head_dim"])
    w.add_value_length(hp["head_dim"])
    w.add_vocab_size(hp["vocab_size"])
    w.add_rope_dimension_count(hp["head_dim"])
    w.add_bos_token_id(hp["bos_token_id"])
    w.add_eos_token_id(hp["eos_token_id"])
    w.add_pad_token_id(hp["pad_token_id"])
    w.add_token_list([f"t{i}" for i in range(hp["vocab_size"])])

    (OUT / "llama").mkdir(exist_ok=True)
    n_head, n_kv = hp["num_attention_heads"], hp["num_key_value_heads"]
    q = rng.normal(0, 1, size=(n_head * hp["head_dim"], hp["hidden_size"])).astype(np.float32)
    k = rng.normal(0, 1, size=(n_kv * hp["head_dim"], hp["hidden_size"])).astype(np.float32)
    embd = rng.normal(0, 1, size=(hp["vocab_size"], hp["hidden_size"])).astype(np.float32)
    factors = llama3_rope_factors(hp)
    assert len(set(factors.tolist())) > 2, "the fixture should cover all three bands"
    w.add_tensor("token_embd.weight", embd)
    w.add_tensor("rope_freqs.weight", factors)
    w.add_tensor("blk.0.attn_q.weight", permute(q, n_head, n_head))
    w.add_tensor("blk.0.attn_k.weight", permute(k, n_head, n_kv))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    q.astype("<f4").tofile(OUT / "llama" / "q_proj.f32")
    k.astype("<f4").tofile(OUT / "llama" / "k_proj.f32")
    (OUT / "llama.json").write_text(json.dumps({"config": hp, "rope_freqs": factors.tolist()}, indent=1) + "\n")


def write_model(rng):
    """model.gguf: a whole tiny llama (Q8_0 MLP, F16 embeddings, F32 rest) with
    a gpt2 tokenizer (the 256 byte tokens, two merges, two control tokens) and
    a chat template, as `rlhf policy import` reads it; model/*.f32 are the HF
    q/k originals (before the converter's permute)."""
    hp = {"hidden_size": 64, "intermediate_size": 96, "n_head": 4, "n_kv": 2, "head_dim": 16}
    alphabet = bytes_to_unicode()
    tokens = [alphabet[b] for b in range(256)] + ["ab", "abc", "<|s|>", "<|e|>"]
    types = [1] * 258 + [3, 3]
    vocab = len(tokens)
    w = gguf.GGUFWriter(str(OUT / "model.gguf"), arch="llama")
    w.add_name("tiny test model")
    w.add_context_length(256)
    w.add_embedding_length(hp["hidden_size"])
    w.add_block_count(1)
    w.add_feed_forward_length(hp["intermediate_size"])
    w.add_head_count(hp["n_head"])
    w.add_head_count_kv(hp["n_kv"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hp["head_dim"])
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["a b", "ab c"])
    w.add_bos_token_id(258)
    w.add_eos_token_id(259)
    w.add_add_bos_token(False)
    w.add_chat_template("{% for m in messages %}<|s|>{{ m['role'] }}: {{ m['content'] }}<|e|>{% endfor %}{% if add_generation_prompt %}<|s|>assistant: {% endif %}")
    (OUT / "model").mkdir(exist_ok=True)
    h, f, d = hp["hidden_size"], hp["intermediate_size"], hp["head_dim"]
    def normal(*shape):
        return rng.normal(0, 0.1, size=shape).astype(np.float32)
    q, k = normal(hp["n_head"] * d, h), normal(hp["n_kv"] * d, h)
    w.add_tensor("token_embd.weight", normal(vocab, h).astype(np.float16))
    w.add_tensor("output_norm.weight", 1 + normal(h))
    w.add_tensor("output.weight", normal(vocab, h))
    w.add_tensor("blk.0.attn_norm.weight", 1 + normal(h))
    w.add_tensor("blk.0.ffn_norm.weight", 1 + normal(h))
    w.add_tensor("blk.0.attn_q.weight", permute(q, hp["n_head"], hp["n_head"]))
    w.add_tensor("blk.0.attn_k.weight", permute(k, hp["n_head"], hp["n_kv"]))
    w.add_tensor("blk.0.attn_v.weight", normal(hp["n_kv"] * d, h))
    w.add_tensor("blk.0.attn_output.weight", normal(h, hp["n_head"] * d))
    for name, shape in [("ffn_gate", (f, h)), ("ffn_up", (f, h)), ("ffn_down", (h, f))]:
        data = normal(*shape)
        w.add_tensor(f"blk.0.{name}.weight", gguf.quants.quantize(data, T.Q8_0), raw_dtype=T.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    q.astype("<f4").tofile(OUT / "model" / "q_proj.f32")
    k.astype("<f4").tofile(OUT / "model" / "k_proj.f32")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240601)
    write_quants(rng)
    write_metadata(rng)
    write_llama(rng)
    write_model(rng)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"gguf {importlib.metadata.version('gguf')}, numpy {np.__version__}: wrote {OUT} ({total} bytes)", file=sys.stderr)
    assert total < 1_000_000


if __name__ == "__main__":
    main()
