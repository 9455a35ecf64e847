//! GGUF parity with gguf-py: the files under `tests/fixtures/gguf/` were
//! written by gguf-py's `GGUFWriter` and the expected values computed by
//! `gguf.quants.dequantize` (`scripts/make_gguf_fixtures.py`). Our reader
//! must see the same tensor table and metadata, and our dequantization must
//! give bit-identical f32 values.
use policy::gguf::{reader::GgufFile, GgmlType, GgufArray, GgufValue, SUPPORTED};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Cursor;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf")
}

fn json(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn read_f32(path: PathBuf) -> Vec<f32> {
    std::fs::read(&path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

#[test]
fn dequantization_is_bit_identical_to_gguf_py() {
    let manifest = json("quants.json");
    let mut f = GgufFile::open(&fixtures().join("quants.gguf")).unwrap();
    assert_eq!(f.header().version(), 3);
    assert_eq!(
        f.header().data_offset(),
        manifest["data_offset"].as_u64().unwrap()
    );
    assert_eq!(f.header().alignment(), 32);
    let tensors = manifest["tensors"].as_array().unwrap();
    assert_eq!(f.header().tensors().len(), tensors.len());
    let mut types = BTreeSet::new();
    for t in tensors {
        let name = t["name"].as_str().unwrap();
        let info = f.header().tensor(name).unwrap().clone();
        assert_eq!(info.ggml_type.name(), t["type"].as_str().unwrap(), "{name}");
        types.insert(info.ggml_type.name());
        let dims: Vec<u64> = usizes(&t["dims"]).iter().map(|&d| d as u64).collect();
        assert_eq!(info.dims, dims, "{name}: GGUF dims, innermost first");
        assert_eq!(info.shape(), usizes(&t["shape"]), "{name}: row-major shape");
        assert_eq!(info.offset, t["offset"].as_u64().unwrap(), "{name}");
        assert_eq!(info.n_bytes, t["n_bytes"].as_u64().unwrap(), "{name}");

        let got = f.tensor_f32(name).unwrap();
        assert_eq!(got.shape, usizes(&t["shape"]), "{name}");
        let want = read_f32(fixtures().join("quants").join(format!("{name}.f32")));
        assert_eq!(got.data.len(), want.len(), "{name}");
        for (i, (g, w)) in got.data.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "{name}[{i}]: ours {g:e}, gguf-py {w:e}"
            );
        }
    }
    let supported: BTreeSet<&str> = SUPPORTED.iter().map(|t| t.name()).collect();
    assert_eq!(types, supported, "every supported type has a fixture");
}

/// The value gguf-py wrote, from its JSON description.
fn expected_value(e: &Value) -> GgufValue {
    let v = &e["value"];
    let int = |v: &Value| v.as_i64().unwrap();
    match e["type"].as_str().unwrap() {
        "UINT8" => GgufValue::U8(int(v) as u8),
        "INT8" => GgufValue::I8(int(v) as i8),
        "UINT16" => GgufValue::U16(int(v) as u16),
        "INT16" => GgufValue::I16(int(v) as i16),
        "UINT32" => GgufValue::U32(int(v) as u32),
        "INT32" => GgufValue::I32(int(v) as i32),
        "UINT64" => GgufValue::U64(v.as_u64().unwrap()),
        "INT64" => GgufValue::I64(int(v)),
        "FLOAT32" => GgufValue::F32(v.as_f64().unwrap() as f32),
        "FLOAT64" => GgufValue::F64(v.as_f64().unwrap()),
        "BOOL" => GgufValue::Bool(v.as_bool().unwrap()),
        "STRING" => GgufValue::String(v.as_str().unwrap().to_string()),
        "ARRAY" => GgufValue::Array(expected_array(e)),
        other => panic!("unknown type {other}"),
    }
}

fn expected_array(e: &Value) -> GgufArray {
    let items = e["value"].as_array().unwrap();
    let ints = || items.iter().map(|v| v.as_i64().unwrap());
    match e["elem_type"].as_str().unwrap() {
        "UINT8" => GgufArray::U8(ints().map(|x| x as u8).collect()),
        "INT8" => GgufArray::I8(ints().map(|x| x as i8).collect()),
        "UINT16" => GgufArray::U16(ints().map(|x| x as u16).collect()),
        "INT16" => GgufArray::I16(ints().map(|x| x as i16).collect()),
        "UINT32" => GgufArray::U32(ints().map(|x| x as u32).collect()),
        "INT32" => GgufArray::I32(ints().map(|x| x as i32).collect()),
        "UINT64" => GgufArray::U64(items.iter().map(|v| v.as_u64().unwrap()).collect()),
        "INT64" => GgufArray::I64(ints().collect()),
        "FLOAT32" => GgufArray::F32(items.iter().map(|v| v.as_f64().unwrap() as f32).collect()),
        "FLOAT64" => GgufArray::F64(items.iter().map(|v| v.as_f64().unwrap()).collect()),
        "BOOL" => GgufArray::Bool(items.iter().map(|v| v.as_bool().unwrap()).collect()),
        "STRING" => GgufArray::String(
            items
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect(),
        ),
        "ARRAY" => GgufArray::Array(items.iter().map(expected_array).collect()),
        other => panic!("unknown element type {other}"),
    }
}

#[test]
fn metadata_of_every_type_round_trips() {
    let want = json("metadata.json");
    let mut f = GgufFile::open(&fixtures().join("metadata.gguf")).unwrap();
    let h = f.header();
    assert_eq!(h.alignment(), 64);
    assert_eq!(h.data_offset(), want["data_offset"].as_u64().unwrap());
    let entries = want["metadata"].as_array().unwrap();
    let keys: Vec<&str> = h.metadata().iter().map(|(k, _)| k.as_str()).collect();
    let want_keys: Vec<&str> = entries.iter().map(|e| e["key"].as_str().unwrap()).collect();
    assert_eq!(keys, want_keys, "keys in file order");
    let mut types = BTreeSet::new();
    for e in entries {
        let key = e["key"].as_str().unwrap();
        let got = h.get(key).unwrap();
        assert_eq!(got, &expected_value(e), "`{key}`");
        types.insert(got.value_type().name());
        if let GgufValue::Array(a) = got {
            types.insert(a.elem_type().name());
        }
    }
    assert_eq!(types.len(), 13, "every value type appears: {types:?}");

    for (name, dims) in want["tensors"].as_object().unwrap() {
        assert_eq!(
            h.tensor(name).unwrap().dims,
            usizes(dims).iter().map(|&d| d as u64).collect::<Vec<_>>()
        );
    }
    let a = f.tensor_f32("a").unwrap();
    assert_eq!(a.shape, vec![3, 5]);
    assert_eq!(a.data, (0..15).map(|x| x as f32).collect::<Vec<_>>());
    let b = f.tensor_f32("b").unwrap();
    assert_eq!((b.shape, b.data), (vec![3], vec![-1.0, 0.0, 1.0]));
}

/// Every prefix of the fixture files shorter than their data fails to open
/// (with an error, not a panic); longer ones open.
#[test]
fn truncated_fixture_files_are_errors() {
    for name in ["metadata.gguf", "quants.gguf", "llama.gguf"] {
        let bytes = std::fs::read(fixtures().join(name)).unwrap();
        let open = |n: usize| GgufFile::from_reader(Cursor::new(bytes[..n].to_vec()), name);
        let end = open(bytes.len()).unwrap().header().data_end() as usize;
        for n in 0..bytes.len() {
            match open(n) {
                Ok(_) => assert!(n >= end, "{name}: prefix {n} opened"),
                Err(e) => {
                    assert!(n < end, "{name}: prefix {n}: {e:#}");
                    let msg = format!("{e:#}");
                    assert!(msg.contains(name), "{msg}");
                }
            }
        }
    }
}

#[test]
fn type_ids_match_ggml() {
    for (id, name) in [
        (0, "F32"),
        (1, "F16"),
        (8, "Q8_0"),
        (12, "Q4_K"),
        (14, "Q6_K"),
        (30, "BF16"),
    ] {
        assert_eq!(GgmlType::from_id(id).unwrap().name(), name);
    }
    assert!(GgmlType::from_id(4).is_err(), "Q4_2 was removed");
}

/// A tiny `llama` GGUF written the way convert_hf_to_gguf.py writes one:
/// its metadata gives back the HF config it came from (Llama-3 RoPE scaling
/// recovered from `rope_freqs.weight`), and unpermuting q/k gives back the
/// HF weights exactly.
#[test]
fn llama_metadata_and_qk_rows_give_back_the_hf_model() {
    use policy::config::LlamaConfig;
    use policy::gguf::llama::{hf_tensor_name, llama_config_of, unpermute_qk};
    let want = json("llama.json");
    let mut f = GgufFile::open(&fixtures().join("llama.gguf")).unwrap();
    let cfg = llama_config_of(&mut f).unwrap();
    let mut hf = LlamaConfig::from_json(&want["config"]).unwrap();
    hf.extra.clear();
    assert_eq!(cfg, hf);

    let heads = [
        ("blk.0.attn_q.weight", "q_proj", cfg.num_attention_heads),
        ("blk.0.attn_k.weight", "k_proj", cfg.num_key_value_heads),
    ];
    for (name, file, n_head) in heads {
        let gguf = f.tensor_f32(name).unwrap();
        let got = unpermute_qk(&gguf, n_head).unwrap();
        let want = read_f32(fixtures().join("llama").join(format!("{file}.f32")));
        assert_eq!(got.shape, vec![n_head * cfg.head_dim, cfg.hidden_size]);
        assert_eq!(got.data, want, "{name}");
        assert_ne!(gguf.data, want, "{name}: the file's rows are permuted");
        assert!(hf_tensor_name(name)
            .unwrap()
            .ends_with(&format!("{file}.weight")));
    }
}
