//! `rlhf policy …`: create, inspect and run Llama checkpoints.
use crate::bpe::{train_from_corpus, BpeOptions};
use crate::chat::{apply_chat_template, load_messages, render_command};
use crate::checkpoint::{save_model, Checkpoint};
use crate::config::{DType, LlamaConfig};
use crate::generate::{generate, SamplingConfig};
// Callers outside the crate reach these through `policy::cli`.
use crate::device::{DeviceKind, OnDevice};
use crate::generate::stop_tokens;
use crate::model::{Dev, Llama};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

/// `rlhf policy` subcommands.
#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Create a new random Llama with a byte-level BPE tokenizer trained on a corpus.
    Init(InitArgs),
    /// Describe a checkpoint: architecture, size, tokenizer, chat template.
    Info {
        /// Checkpoint directory (Hugging Face layout).
        #[arg(long)]
        model: PathBuf,
    },
    /// Re-save a checkpoint (e.g. in another dtype); the output is a HF directory.
    Convert {
        /// Input checkpoint directory.
        #[arg(long)]
        model: PathBuf,
        /// Output directory (a new or empty directory; see --overwrite).
        #[arg(long)]
        out: PathBuf,
        /// Storage dtype of the output weights (default: the input's).
        #[arg(long)]
        dtype: Option<DType>,
        /// Replace what is at --out (built beside it, then swapped in).
        #[arg(long)]
        overwrite: bool,
    },
    /// Import a llama.cpp GGUF file (llama family; F32/F16/BF16, Q4_0-Q8_0 and
    /// Q2_K-Q6_K tensors) as a Hugging Face directory with its tokenizer and chat template.
    Import {
        /// The GGUF file.
        #[arg(long)]
        gguf: PathBuf,
        /// Output directory (a new or empty directory; see --overwrite).
        #[arg(long)]
        out: PathBuf,
        /// Storage dtype of the output weights (the GGUF's are dequantized to float32).
        #[arg(long, default_value = "float32")]
        dtype: DType,
        /// Replace what is at --out (built beside it, then swapped in).
        #[arg(long)]
        overwrite: bool,
    },
    /// Generate text from a prompt or a chat.
    Generate(GenerateArgs),
    /// Per-token log-probs log p(t_i | t_<i) of token sequences or texts (JSONL in, JSONL out).
    Logprobs(LogprobsArgs),
    /// Print, as JSON {"text", "ids"}, exactly what the model sees for a chat.
    /// Works on a directory that holds only tokenizer files.
    Render {
        /// Checkpoint or tokenizer directory.
        #[arg(long)]
        model: PathBuf,
        /// JSON file with a list of {"role", "content"} messages.
        #[arg(long)]
        chat: PathBuf,
        /// Do not append the assistant header that asks the model to answer.
        #[arg(long)]
        no_generation_prompt: bool,
    },
}

/// Model size presets.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Preset {
    /// About 1M parameters: for tests.
    Tiny,
    /// About 27M parameters: for demos and benchmarks.
    Small,
}

/// Options of `rlhf policy init`.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// Output directory (a new or empty directory; see --overwrite).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace what is at --out (built beside it, then swapped in).
    #[arg(long)]
    pub overwrite: bool,
    /// Size preset; the dimension flags below override it.
    #[arg(long, value_enum, default_value = "tiny")]
    pub preset: Preset,
    /// Text file (UTF-8) to train the tokenizer on; default: a built-in English corpus.
    #[arg(long)]
    pub corpus: Option<PathBuf>,
    #[arg(long)]
    pub hidden_size: Option<usize>,
    #[arg(long)]
    pub intermediate_size: Option<usize>,
    #[arg(long)]
    pub layers: Option<usize>,
    #[arg(long)]
    pub heads: Option<usize>,
    #[arg(long)]
    pub kv_heads: Option<usize>,
    /// Target tokenizer vocabulary (a small corpus may yield fewer tokens).
    #[arg(long)]
    pub vocab_size: Option<usize>,
    #[arg(long, default_value_t = 2048)]
    pub max_position_embeddings: usize,
    /// Share the input embedding with the LM head.
    #[arg(long)]
    pub tie_embeddings: bool,
    /// Weight initialization seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Storage dtype of the weights.
    #[arg(long, default_value = "float32")]
    pub dtype: DType,
}

/// Options of `rlhf policy generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Checkpoint directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Plain-text prompt (repeat for a batch).
    #[arg(long, required_unless_present = "chat", conflicts_with = "chat")]
    pub prompt: Vec<String>,
    /// JSON file with a list of {"role", "content"} messages, rendered with the chat template.
    #[arg(long)]
    pub chat: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Sample among the k most likely tokens only (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling: smallest set of tokens reaching this probability (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print JSON lines with tokens and log-probs instead of plain text.
    #[arg(long)]
    pub json: bool,
}

/// Options of `rlhf policy logprobs`.
#[derive(Args, Debug)]
pub struct LogprobsArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL: each line {"tokens": [ids]} or {"text": "..."}.
    #[allow(rustdoc::broken_intra_doc_links)] // clap help text, not Markdown
    #[arg(long)]
    pub input: PathBuf,
    /// JSONL: each line {"logprobs": [...]} (one fewer than the tokens).
    #[arg(long)]
    pub output: PathBuf,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
}

/// `rlhf policy [--device D] <command>`.
#[derive(Args, Debug)]
pub struct PolicyArgs {
    /// Device to run the model on.
    #[arg(long, value_enum, default_value = "cpu", global = true)]
    pub device: DeviceKind,
    #[command(subcommand)]
    pub command: PolicyCommand,
}

/// Runs a `rlhf policy` subcommand on the chosen device.
pub fn run(args: PolicyArgs) -> Result<()> {
    args.device.dispatch(args.command)
}

impl OnDevice for PolicyCommand {
    fn run_on<D: Dev>(self, dev: &D) -> Result<()> {
        run_on(self, dev)
    }
}

fn run_on<D: Dev>(cmd: PolicyCommand, dev: &D) -> Result<()> {
    let dev = dev.clone();
    match cmd {
        PolicyCommand::Init(a) => init(&a, &dev).map(|_| ()),
        PolicyCommand::Info { model } => info(&model, &dev),
        PolicyCommand::Convert {
            model,
            out,
            dtype,
            overwrite,
        } => {
            crate::out_dir::check(&out, overwrite)?;
            let ck = Checkpoint::load(&model, &dev)?;
            ck.save(&out, dtype.unwrap_or(ck.model.cfg.dtype))?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        PolicyCommand::Import {
            gguf,
            out,
            dtype,
            overwrite,
        } => {
            crate::out_dir::check(&out, overwrite)?;
            let cfg = crate::gguf::import::import(&gguf, &out, dtype)?;
            eprintln!(
                "wrote {} ({} layers, hidden {}, vocabulary {})",
                out.display(),
                cfg.num_hidden_layers,
                cfg.hidden_size,
                cfg.vocab_size
            );
            Ok(())
        }
        PolicyCommand::Generate(a) => generate_cmd(&a, &dev),
        PolicyCommand::Logprobs(a) => logprobs_cmd(&a, &dev),
        PolicyCommand::Render {
            model,
            chat,
            no_generation_prompt,
        } => {
            let v = render_command(&model, &chat, !no_generation_prompt)?;
            print_stdout(&serde_json::to_string_pretty(&v)?)
        }
    }
}

/// Creates a random model + trained tokenizer in `a.out`; returns its config.
pub fn init<D: Dev>(a: &InitArgs, dev: &D) -> Result<LlamaConfig> {
    crate::out_dir::check(&a.out, a.overwrite)?;
    // (hidden, intermediate, layers, heads, kv_heads, vocab)
    let (h, f, l, nh, kv, v) = match a.preset {
        Preset::Tiny => (128, 352, 4, 4, 2, 512),
        Preset::Small => (512, 1376, 8, 8, 4, 4096),
    };
    let hidden = a.hidden_size.unwrap_or(h);
    let heads = a.heads.unwrap_or(nh);
    let bpe = train_from_corpus(
        a.corpus.as_deref(),
        &BpeOptions {
            vocab_size: a.vocab_size.unwrap_or(v),
            model_max_length: Some(a.max_position_embeddings),
            ..Default::default()
        },
    )?;
    let sp = bpe.special;
    let cfg = LlamaConfig::from_json(&json!({
        "hidden_size": hidden,
        "intermediate_size": a.intermediate_size.unwrap_or(f),
        "num_hidden_layers": a.layers.unwrap_or(l),
        "num_attention_heads": heads,
        "num_key_value_heads": a.kv_heads.unwrap_or(kv.min(heads)),
        "vocab_size": bpe.vocab_size,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": a.max_position_embeddings,
        "tie_word_embeddings": a.tie_embeddings,
        "bos_token_id": sp.bos,
        "eos_token_id": sp.stop_ids(),
        "pad_token_id": sp.pad,
        "torch_dtype": a.dtype.hf_name(),
    }))?;
    let model = Llama::random(cfg.clone(), dev, a.seed, 0.02)?;
    let tmp = tempfile::tempdir()?;
    bpe.save(tmp.path())?;
    let mut files = BTreeMap::new();
    for name in ["tokenizer.json", "tokenizer_config.json"] {
        files.insert(name.to_string(), std::fs::read(tmp.path().join(name))?);
    }
    let gen = json!({"bos_token_id": sp.bos, "eos_token_id": sp.stop_ids(), "pad_token_id": sp.pad,
                     "do_sample": true, "temperature": 0.7, "top_p": 1.0});
    save_model(&model, Some(&gen), &files, &a.out, a.dtype)?;
    eprintln!(
        "created {} ({} parameters, {} layers, hidden {}, vocab {})",
        a.out.display(),
        cfg.num_parameters(),
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.vocab_size
    );
    Ok(cfg)
}

fn info<D: Dev>(dir: &Path, _dev: &D) -> Result<()> {
    let cfg = LlamaConfig::load(dir)?;
    let tok = Tokenizer::load(dir).ok();
    let template = tok.as_ref().map(|t| {
        if t.chat_template(None).is_some() {
            "checkpoint"
        } else {
            "built-in"
        }
    });
    let v = json!({
        "parameters": cfg.num_parameters(),
        "config": cfg.to_json(),
        "tokenizer": tok.as_ref().map(|t| json!({
            "vocab_size": t.vocab_size(),
            "bos": t.bos().map(|s| s.content.clone()),
            "eos": t.eos().map(|s| s.content.clone()),
            "pad": t.pad().map(|s| s.content.clone()),
            "chat_template": template,
        })),
    });
    print_stdout(&serde_json::to_string_pretty(&v)?)
}

/// Writes a line to stdout; a closed pipe (`| head`) is an error, not a panic.
fn print_stdout(s: &str) -> Result<()> {
    writeln!(std::io::stdout().lock(), "{s}")?;
    Ok(())
}

fn generate_cmd<D: Dev>(a: &GenerateArgs, dev: &D) -> Result<()> {
    let ck = Checkpoint::load(&a.model, dev)?;
    if let Some((step, total)) = crate::train_state::unfinished(&a.model) {
        eprintln!(
            "warning: {} is an unfinished training checkpoint (step {step} of {total}); resume the run to finish it",
            a.model.display()
        );
    }
    let tok = Tokenizer::load(&a.model)?;
    let prompts: Vec<(String, Vec<u32>)> = match &a.chat {
        Some(path) => {
            let messages = load_messages(path)?;
            vec![apply_chat_template(&tok, &messages, true)?]
        }
        None => a
            .prompt
            .iter()
            .map(|p| Ok((p.clone(), tok.encode(p, true)?)))
            .collect::<Result<_>>()?,
    };
    let cfg = SamplingConfig {
        max_new_tokens: a.max_new_tokens,
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        stop_tokens: stop_tokens(&ck, &tok),
    };
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| p.1.clone()).collect();
    let gens = generate(&ck.model, &ids, &cfg)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for ((prompt, _), g) in prompts.iter().zip(&gens) {
        let text = tok.decode(&g.tokens, true)?;
        if a.json {
            let line = json!({"prompt": prompt, "text": text, "tokens": g.tokens, "logprobs": g.logprobs, "finish_reason": g.finish_reason});
            writeln!(out, "{line}")?;
        } else if gens.len() > 1 {
            writeln!(out, "### {prompt}\n{text}\n")?;
        } else {
            writeln!(out, "{text}")?;
        }
    }
    Ok(())
}

fn parse_logprobs_line(line: &str, tok: &Tokenizer) -> Result<Vec<u32>> {
    let v: Value = serde_json::from_str(line).context("not valid JSON")?;
    if let Some(t) = v.get("tokens") {
        let arr = t
            .as_array()
            .context("`tokens` must be a list of token ids")?;
        arr.iter()
            .map(|x| {
                x.as_u64()
                    .filter(|&x| x <= u32::MAX as u64)
                    .map(|x| x as u32)
                    .context("`tokens` must hold non-negative integers")
            })
            .collect()
    } else if let Some(t) = v.get("text") {
        tok.encode(t.as_str().context("`text` must be a string")?, true)
    } else {
        bail!("each line needs `tokens` or `text`")
    }
}

fn logprobs_cmd<D: Dev>(a: &LogprobsArgs, dev: &D) -> Result<()> {
    let ck = Checkpoint::load(&a.model, dev)?;
    let tok = Tokenizer::load(&a.model).ok();
    let input = std::fs::File::open(&a.input)
        .with_context(|| format!("cannot open {}", a.input.display()))?;
    let mut seqs = vec![];
    for (i, line) in std::io::BufReader::new(input).lines().enumerate() {
        let line =
            line.with_context(|| format!("{}: cannot read line {}", a.input.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let ids = match &tok {
            Some(t) => parse_logprobs_line(&line, t),
            None if line.contains("\"text\"") => bail!(
                "{}: line {}: `text` needs tokenizer files in {}",
                a.input.display(),
                i + 1,
                a.model.display()
            ),
            None => {
                let v: Value = serde_json::from_str(&line).context("not valid JSON")?;
                serde_json::from_value::<Vec<u32>>(v["tokens"].clone())
                    .context("`tokens` must be a list of token ids")
            }
        }
        .with_context(|| format!("{}: line {}", a.input.display(), i + 1))?;
        if ids.is_empty() {
            bail!(
                "{}: line {}: needs at least 1 token",
                a.input.display(),
                i + 1
            );
        }
        seqs.push(ids);
    }
    let bar = ProgressBar::new(seqs.len() as u64).with_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} sequences {eta}",
    )?);
    let tmp = a.output.with_extension("jsonl.partial");
    let mut w = BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?,
    );
    // Similar lengths batch together, so little compute goes to padding.
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| seqs[i].len());
    let mut results: Vec<Option<Vec<f32>>> = vec![None; seqs.len()];
    for chunk in order.chunks(a.batch_size.max(1)) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| seqs[i].clone()).collect();
        let lps = ck.model.sequence_logprobs(&batch)?;
        for (&i, lp) in chunk.iter().zip(lps) {
            results[i] = Some(lp);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    for r in results {
        writeln!(w, "{}", json!({"logprobs": r.unwrap()}))?;
    }
    w.flush()?;
    drop(w);
    std::fs::rename(&tmp, &a.output)
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    eprintln!(
        "wrote log-probs of {} sequences to {}",
        seqs.len(),
        a.output.display()
    );
    Ok(())
}
