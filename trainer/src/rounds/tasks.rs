//! Built-in demo tasks with a programmatic gold reward.
//!
//! A task gives prompts, a gold reward for any response, and a corpus of
//! mixed-quality (prompt, completion) pairs on which a tiny policy is
//! pretrained / fine-tuned so that it starts mediocre: it produces both good and
//! bad responses, and alignment rounds have something to improve.
//!
//! - `review` ("positive review"): prompts `Review of the movie:`; gold = a
//!   sentiment-lexicon score in `[-1, 1]`.
//! - `arithmetic`: prompts `Q: 12+7=`; gold = 1 when the first number of the
//!   response is the right answer, else 0.
//!
//! Texts are short, lowercase and use a small vocabulary, so that a tiny Llama
//! with a byte-level BPE of a few hundred tokens can learn them in a minute on a
//! CPU. A completion starts with a space: prompt + completion is the training
//! text, and the policy continues the prompt.
use crate::data::Prompt;
use anyhow::Result;
use policy::tokenizer::Tokenizer;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use reward_model::data::Content;

/// A demo task: prompts, a gold reward, and a corpus to pretrain/SFT a tiny policy so it starts mediocre.
pub trait Task: Send + Sync {
    /// The task's name (one of [`TASKS`]).
    fn name(&self) -> &'static str;
    /// `n` prompts (plain text), deterministic in `seed`.
    fn prompts(&self, n: usize, seed: u64) -> Vec<String>;
    /// The gold reward of `response` to `prompt` (higher is better; each task documents its range).
    fn gold(&self, prompt: &str, response: &str) -> f32;
    /// `n` (prompt, completion) pairs of mixed quality — roughly half good, half bad by the gold reward — for SFT.
    fn corpus(&self, n: usize, seed: u64) -> Vec<(String, String)>;
}

/// The names of the built-in tasks.
pub const TASKS: &[&str] = &["review", "arithmetic"];

/// The built-in tasks by name: "review" and "arithmetic".
pub fn task(name: &str) -> anyhow::Result<Box<dyn Task>> {
    match name {
        "review" => Ok(Box::new(Review)),
        "arithmetic" => Ok(Box::new(Arithmetic)),
        _ => anyhow::bail!(
            "unknown task {name:?}; the built-in tasks are {}",
            TASKS.join(", ")
        ),
    }
}

/// The server prompt source holding a built-in task's prompts.
pub fn prompt_source(task: &dyn Task) -> String {
    format!("task-{}", task.name())
}

/// Seed of a task's training prompts (its held-out evaluation prompts use another).
pub const PROMPT_SEED: u64 = 1;

// ---------------------------------------------------------------------------
// review

/// "Positive review": write a review of a movie or product; the gold reward is
/// a sentiment-lexicon score.
///
/// Gold reward, in `[-1, 1]`: with `p` and `n` the numbers of *distinct*
/// positive and negative lexicon words in the response (lowercased words of
/// letters), `(p − n) / (p + n + 1)`, minus 0.5 when the response has fewer
/// than 3 words (so an empty answer scores −0.5), clamped to `[-1, 1]`.
/// Counting distinct words keeps "great great great" from beating "great fun".
/// The prompt does not matter.
#[derive(Clone, Copy, Debug, Default)]
pub struct Review;

/// Positive words of the review lexicon.
pub const POSITIVE_WORDS: &[&str] = &[
    "good",
    "great",
    "fun",
    "nice",
    "best",
    "amazing",
    "excellent",
    "wonderful",
    "perfect",
    "love",
    "loved",
    "liked",
    "enjoyed",
    "happy",
    "brilliant",
    "superb",
];
/// Negative words of the review lexicon.
pub const NEGATIVE_WORDS: &[&str] = &[
    "bad", "poor", "boring", "awful", "terrible", "worst", "dull", "broken", "hate", "hated",
    "disliked", "sad", "weak", "cheap", "ugly", "annoying",
];

const REVIEW_NOUNS: &[&str] = &[
    "movie", "film", "book", "phone", "game", "camera", "show", "album", "hotel", "laptop",
    "pizza", "coffee", "song", "car",
];
const REVIEW_ASPECTS: &[&str] = &[
    "story", "plot", "price", "sound", "screen", "ending", "music", "service", "taste", "design",
];
const POS_ADJ: &[&str] = &[
    "good",
    "great",
    "fun",
    "nice",
    "amazing",
    "excellent",
    "wonderful",
    "perfect",
    "brilliant",
    "superb",
];
const NEG_ADJ: &[&str] = &[
    "bad", "poor", "boring", "awful", "terrible", "dull", "broken", "sad", "weak", "cheap", "ugly",
    "annoying",
];
const NEUTRAL_ADJ: &[&str] = &[
    "long", "short", "new", "old", "big", "small", "simple", "loud", "slow", "fast",
];
const POS_VERB: &[&str] = &["loved", "liked", "enjoyed"];
const NEG_VERB: &[&str] = &["hated", "disliked"];
const INTENSIFIERS: &[&str] = &["very", "really", "so", "quite"];

#[derive(Clone, Copy, PartialEq)]
enum Tone {
    Positive,
    Negative,
    Neutral,
}

fn pick<'a>(rng: &mut StdRng, words: &[&'a str]) -> &'a str {
    words.choose(rng).copied().unwrap_or("")
}

/// One clause of 3–4 words in the given tone.
fn clause(rng: &mut StdRng, tone: Tone, noun: &str) -> String {
    let adj = |rng: &mut StdRng| match tone {
        Tone::Positive => pick(rng, POS_ADJ),
        Tone::Negative => pick(rng, NEG_ADJ),
        Tone::Neutral => pick(rng, NEUTRAL_ADJ),
    };
    match rng.gen_range(0..4) {
        0 => {
            let a = pick(rng, REVIEW_ASPECTS);
            format!("the {a} is {}", adj(rng))
        }
        1 => {
            let i = pick(rng, INTENSIFIERS);
            format!("it was {i} {}", adj(rng))
        }
        2 => format!("a {} {noun}", adj(rng)),
        _ => match tone {
            Tone::Positive => format!("i {} it", pick(rng, POS_VERB)),
            Tone::Negative => format!("i {} it", pick(rng, NEG_VERB)),
            Tone::Neutral => {
                let a = pick(rng, REVIEW_ASPECTS);
                format!("the {a} was {}", adj(rng))
            }
        },
    }
}

/// A review of 5–15 words, starting with a space and ending with a period.
fn review_text(rng: &mut StdRng, good: bool, noun: &str) -> String {
    let (main, other) = if good {
        (Tone::Positive, Tone::Negative)
    } else {
        (Tone::Negative, Tone::Positive)
    };
    let clauses = rng.gen_range(2..=3);
    let mut tones = vec![main];
    for _ in 1..clauses {
        // mostly the main tone, some neutral filler, rarely a dissenting clause
        let r: f32 = rng.gen();
        tones.push(if r < 0.6 {
            main
        } else if r < 0.9 {
            Tone::Neutral
        } else {
            other
        });
    }
    tones.shuffle(rng);
    let parts: Vec<String> = tones.iter().map(|&t| clause(rng, t, noun)).collect();
    format!(" {}.", parts.join(" and "))
}

/// Words of a text: maximal runs of alphabetic characters, lowercased.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphabetic())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
}

impl Task for Review {
    fn name(&self) -> &'static str {
        "review"
    }

    fn prompts(&self, n: usize, seed: u64) -> Vec<String> {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5EED_0001);
        (0..n)
            .map(|_| format!("Review of the {}:", pick(&mut rng, REVIEW_NOUNS)))
            .collect()
    }

    fn gold(&self, _prompt: &str, response: &str) -> f32 {
        let mut pos: Vec<&str> = vec![];
        let mut neg: Vec<&str> = vec![];
        let mut count = 0usize;
        for w in words(response) {
            count += 1;
            if let Some(p) = POSITIVE_WORDS.iter().find(|p| **p == w) {
                if !pos.contains(p) {
                    pos.push(p);
                }
            } else if let Some(n) = NEGATIVE_WORDS.iter().find(|n| **n == w) {
                if !neg.contains(n) {
                    neg.push(n);
                }
            }
        }
        let (p, n) = (pos.len() as f32, neg.len() as f32);
        let mut score = (p - n) / (p + n + 1.0);
        if count < 3 {
            score -= 0.5;
        }
        score.clamp(-1.0, 1.0)
    }

    fn corpus(&self, n: usize, seed: u64) -> Vec<(String, String)> {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5EED_0002);
        (0..n)
            .map(|i| {
                let noun = pick(&mut rng, REVIEW_NOUNS);
                let prompt = format!("Review of the {noun}:");
                // alternate good and bad so the corpus is balanced for any n
                let good = (i % 2 == 0) ^ (seed % 2 == 1);
                // a dissenting clause may outweigh the main tone: redraw until the
                // review is good (or bad) by the gold reward
                let mut text = review_text(&mut rng, good, noun);
                for _ in 0..16 {
                    let g = self.gold(&prompt, &text);
                    if (good && g > 0.0) || (!good && g < 0.0) {
                        break;
                    }
                    text = review_text(&mut rng, good, noun);
                }
                (prompt, text)
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// arithmetic

/// "Arithmetic": answer `Q: a+b=` or `Q: a-b=` with small numbers (0–20; a
/// difference is never negative).
///
/// Gold reward, 0 or 1: 1 when the first integer in the response (an optional
/// `-` directly before its digits counts) equals the answer, else 0 — also 0
/// when the prompt is not of this form. Corpus completions look like ` 19.`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Arithmetic;

/// Largest operand of the arithmetic prompts.
const MAX_OPERAND: i64 = 20;

/// The answer to an arithmetic prompt `Q: a+b=` / `Q: a-b=` (spaces allowed), if it is one.
pub fn arithmetic_answer(prompt: &str) -> Option<i64> {
    let body = prompt.trim().strip_prefix("Q:").unwrap_or(prompt.trim());
    let expr = body.split('=').next()?.trim();
    let op_at = expr
        .char_indices()
        .skip(1)
        .find(|(_, c)| *c == '+' || *c == '-')
        .map(|(i, _)| i)?;
    let (a, rest) = expr.split_at(op_at);
    let op = rest.chars().next()?;
    let b = &rest[op.len_utf8()..];
    let a: i64 = a.trim().parse().ok()?;
    let b: i64 = b.trim().parse().ok()?;
    match op {
        '+' => a.checked_add(b),
        _ => a.checked_sub(b),
    }
}

/// The first integer in `text` (with a `-` sign when it directly precedes the
/// digits); `None` when there is none or it does not fit an `i64`.
pub fn first_integer(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let start = bytes.iter().position(|b| b.is_ascii_digit())?;
    let end = bytes[start..]
        .iter()
        .position(|b| !b.is_ascii_digit())
        .map_or(bytes.len(), |e| start + e);
    let negative = start > 0 && bytes[start - 1] == b'-';
    let digits = &text[start..end];
    let v: i64 = digits.parse().ok()?;
    Some(if negative { -v } else { v })
}

fn arithmetic_prompt(rng: &mut StdRng) -> (String, i64) {
    let mut a = rng.gen_range(0..=MAX_OPERAND);
    let mut b = rng.gen_range(0..=MAX_OPERAND);
    if rng.gen_bool(0.5) {
        (format!("Q: {a}+{b}="), a + b)
    } else {
        if a < b {
            std::mem::swap(&mut a, &mut b);
        }
        (format!("Q: {a}-{b}="), a - b)
    }
}

impl Task for Arithmetic {
    fn name(&self) -> &'static str {
        "arithmetic"
    }

    fn prompts(&self, n: usize, seed: u64) -> Vec<String> {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xA817_0001);
        (0..n).map(|_| arithmetic_prompt(&mut rng).0).collect()
    }

    fn gold(&self, prompt: &str, response: &str) -> f32 {
        match (arithmetic_answer(prompt), first_integer(response)) {
            (Some(want), Some(got)) if want == got => 1.0,
            _ => 0.0,
        }
    }

    fn corpus(&self, n: usize, seed: u64) -> Vec<(String, String)> {
        let mut rng = StdRng::seed_from_u64(seed ^ 0xA817_0002);
        (0..n)
            .map(|i| {
                let (prompt, answer) = arithmetic_prompt(&mut rng);
                let good = (i % 2 == 0) ^ (seed % 2 == 1);
                let shown = if good {
                    answer
                } else {
                    // off by 1–3, never negative
                    let d = rng.gen_range(1..=3);
                    if answer >= d && rng.gen_bool(0.5) {
                        answer - d
                    } else {
                        answer + d
                    }
                };
                (prompt, format!(" {shown}."))
            })
            .collect()
    }
}

/// The held-out prompts of a task (disjoint from the training pool by seed).
pub fn eval_prompts(task: &dyn Task, n: usize, tok: &Tokenizer) -> Result<Vec<Prompt>> {
    task.prompts(n, 0xE7A1)
        .into_iter()
        .map(|t| {
            let ids = tok.encode(&t, true)?;
            Ok(Prompt {
                content: Content::Text(t),
                ids,
                unsafe_prompt: false,
            })
        })
        .collect()
}
