//! `rlhf policy …` end to end through the real binary.
use serde_json::Value;
use std::path::Path;

mod common;
use common::{err, ok};

fn init(dir: &Path) -> String {
    let out = dir.join("tiny");
    let s = out.to_str().unwrap().to_string();
    let mut extra = common::GQA_2_LAYERS.to_vec();
    extra.extend(["--vocab-size", "300", "--seed", "5"]);
    ok(&common::tiny_init(&s, &extra));
    s
}

#[test]
fn init_info_generate_logprobs_render() {
    let tmp = tempfile::tempdir().unwrap();
    let model = init(tmp.path());
    for f in [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(Path::new(&model).join(f).exists(), "{f} missing");
    }
    let info: Value = serde_json::from_str(&ok(&["policy", "info", "--model", &model])).unwrap();
    assert_eq!(info["config"]["hidden_size"], 32);
    assert_eq!(info["config"]["num_key_value_heads"], 2);
    assert_eq!(info["tokenizer"]["chat_template"], "checkpoint");

    // generation: reproducible with a seed, JSON with tokens and log-probs
    let args = [
        "policy",
        "generate",
        "--model",
        &model,
        "--prompt",
        "The cat",
        "--prompt",
        "A much longer prompt than the first one",
        "--max-new-tokens",
        "6",
        "--seed",
        "3",
        "--json",
    ];
    let a = ok(&args);
    assert_eq!(a, ok(&args));
    let lines: Vec<Value> = a
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        let n = l["tokens"].as_array().unwrap().len();
        assert!((1..=6).contains(&n));
        assert_eq!(l["logprobs"].as_array().unwrap().len(), n);
    }

    // log-probs: n-1 per sequence, and the generated tokens' log-probs agree with
    // a full forward over prompt + continuation (greedy → temperature 1)
    let greedy: Value = serde_json::from_str(
        ok(&[
            "policy",
            "generate",
            "--model",
            &model,
            "--prompt",
            "The cat",
            "--max-new-tokens",
            "5",
            "--temperature",
            "0",
            "--json",
        ])
        .trim(),
    )
    .unwrap();
    let render_dir = tmp.path();
    let prompt_ids: Vec<u64> = {
        // plain prompts are encoded with the tokenizer's special tokens (BOS)
        let tok = policy::tokenizer::Tokenizer::load(Path::new(&model)).unwrap();
        tok.encode("The cat", true)
            .unwrap()
            .into_iter()
            .map(u64::from)
            .collect()
    };
    let gen_ids: Vec<u64> = greedy["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    let all: Vec<u64> = prompt_ids.iter().chain(&gen_ids).copied().collect();
    let input = render_dir.join("in.jsonl");
    std::fs::write(
        &input,
        format!(
            "{}\n{{\"text\": \"hello world\"}}\n",
            serde_json::json!({"tokens": all})
        ),
    )
    .unwrap();
    let output = render_dir.join("out.jsonl");
    ok(&[
        "policy",
        "logprobs",
        "--model",
        &model,
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    let out: Vec<Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lp: Vec<f64> = out[0]["logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(lp.len(), all.len() - 1);
    let tail = &lp[prompt_ids.len() - 1..];
    for (a, b) in tail.iter().zip(greedy["logprobs"].as_array().unwrap()) {
        assert!((a - b.as_f64().unwrap()).abs() < 1e-4, "{a} vs {b}");
    }
    assert!(!out[1]["logprobs"].as_array().unwrap().is_empty());

    // render: exactly the ids the chat template + tokenizer produce
    let chat = render_dir.join("chat.json");
    std::fs::write(&chat, r#"[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <|eot_id|> {{ x }}"}]"#).unwrap();
    let r: Value = serde_json::from_str(&ok(&[
        "policy",
        "render",
        "--model",
        &model,
        "--chat",
        chat.to_str().unwrap(),
    ]))
    .unwrap();
    let text = r["text"].as_str().unwrap();
    assert!(
        text.starts_with(
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        ),
        "{text}"
    );
    assert!(
        text.ends_with("<|start_header_id|>assistant<|end_header_id|>\n\n"),
        "{text}"
    );
    assert!(
        text.contains("{{ x }}"),
        "user text is data, not template code: {text}"
    );
    let r2: Value = serde_json::from_str(&ok(&[
        "policy",
        "render",
        "--model",
        &model,
        "--chat",
        chat.to_str().unwrap(),
        "--no-generation-prompt",
    ]))
    .unwrap();
    assert!(!r2["text"]
        .as_str()
        .unwrap()
        .ends_with("assistant<|end_header_id|>\n\n"));
    ok(&[
        "policy",
        "generate",
        "--model",
        &model,
        "--chat",
        chat.to_str().unwrap(),
        "--max-new-tokens",
        "3",
    ]);
}

#[test]
fn bad_input_gives_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let model = init(tmp.path());
    assert!(err(&["policy", "info", "--model", "/definitely/not/here"]).contains("config.json"));
    assert!(err(&[
        "policy",
        "generate",
        "--model",
        "/definitely/not/here",
        "--prompt",
        "x"
    ])
    .contains("not a directory"));
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"tokens\": [1, 2, 3]}\nnot json\n").unwrap();
    let out = tmp.path().join("o.jsonl");
    let e = err(&[
        "policy",
        "logprobs",
        "--model",
        &model,
        "--input",
        bad.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(e.contains("line 2"), "{e}");
    assert!(!out.exists(), "no partial output on error");
    std::fs::write(&bad, "{\"tokens\": [1, 99999]}\n").unwrap();
    let e = err(&[
        "policy",
        "logprobs",
        "--model",
        &model,
        "--input",
        bad.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(e.contains("out of range"), "{e}");
    std::fs::write(&bad, "{\"tokens\": []}\n").unwrap();
    assert!(err(&[
        "policy",
        "logprobs",
        "--model",
        &model,
        "--input",
        bad.to_str().unwrap(),
        "--output",
        out.to_str().unwrap()
    ])
    .contains("at least 1"));
    // one token has no target: its log-probs are the empty list (README's definition)
    std::fs::write(&bad, "{\"tokens\": [1]}\n{\"tokens\": [1, 2]}\n").unwrap();
    ok(&[
        "policy",
        "logprobs",
        "--model",
        &model,
        "--input",
        bad.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    let lines: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["logprobs"], serde_json::json!([]));
    assert_eq!(lines[1]["logprobs"].as_array().unwrap().len(), 1);
    std::fs::remove_file(&out).unwrap();
    // a checkpoint with a corrupted weight file
    std::fs::write(Path::new(&model).join("model.safetensors"), b"garbage").unwrap();
    assert!(
        err(&["policy", "generate", "--model", &model, "--prompt", "x"]).contains("safetensors")
    );
    let e = err(&[
        "policy", "generate", "--model", &model, "--prompt", "x", "--device", "cuda",
    ]);
    assert!(e.contains("cuda") || e.contains("CUDA"), "{e}");
}

/// `rlhf policy import` of a small GGUF that the gguf package wrote
/// (`scripts/make_gguf_fixtures.py`: Q8_0 MLP, F16 embeddings, a gpt2
/// tokenizer and a chat template): the output is a checkpoint that
/// generates and renders chats, q/k are the Hugging Face originals (the
/// converter's permutation undone), and a broken file writes nothing.
#[test]
fn import_a_gguf_file() {
    let tmp = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("policy/tests/fixtures/gguf");
    let gguf = fixtures.join("model.gguf");
    let out = tmp.path().join("imported");
    let o = out.to_str().unwrap();
    ok(&[
        "policy",
        "import",
        "--gguf",
        gguf.to_str().unwrap(),
        "--out",
        o,
    ]);
    let tensors = policy::safetensors_io::read_dir_tensors(&out).unwrap();
    for (name, file) in [
        ("model.layers.0.self_attn.q_proj.weight", "q_proj.f32"),
        ("model.layers.0.self_attn.k_proj.weight", "k_proj.f32"),
    ] {
        let want: Vec<f32> = std::fs::read(fixtures.join("model").join(file))
            .unwrap()
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(tensors[name].data, want, "{name}");
    }
    let info = ok(&["policy", "info", "--model", o]);
    assert!(info.contains("260"), "{info}");
    ok(&[
        "policy",
        "generate",
        "--model",
        o,
        "--prompt",
        "abc",
        "--max-new-tokens",
        "4",
        "--temperature",
        "0",
    ]);
    let chat = tmp.path().join("chat.json");
    std::fs::write(&chat, r#"[{"role": "user", "content": "abc"}]"#).unwrap();
    let r: Value = serde_json::from_str(&ok(&[
        "policy",
        "render",
        "--model",
        o,
        "--chat",
        chat.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(r["text"], "<|s|>user: abc<|e|><|s|>assistant: ");
    // "abc" is one token (both merges), the control tokens stay whole
    assert_eq!(r["ids"][0], 258);
    assert!(r["ids"].as_array().unwrap().contains(&Value::from(257)));

    // a truncated file: a clear error, and no output directory
    let bytes = std::fs::read(&gguf).unwrap();
    let cut = tmp.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let none = tmp.path().join("none");
    let e = err(&[
        "policy",
        "import",
        "--gguf",
        cut.to_str().unwrap(),
        "--out",
        none.to_str().unwrap(),
    ]);
    assert!(e.contains("cut.gguf"), "{e}");
    assert!(!none.exists());
    // not a GGUF at all
    let e = err(&[
        "policy",
        "import",
        "--gguf",
        chat.to_str().unwrap(),
        "--out",
        none.to_str().unwrap(),
    ]);
    assert!(e.to_lowercase().contains("gguf"), "{e}");
    assert!(!none.exists());
}
