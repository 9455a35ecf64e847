//! The built-in demo tasks: determinism, gold rewards on hand-written cases,
//! mixed-quality corpora, hostile input.
use trainer::rounds::tasks::{arithmetic_answer, first_integer, task, Task, TASKS};

fn all() -> Vec<Box<dyn Task>> {
    TASKS.iter().map(|n| task(n).unwrap()).collect()
}

#[test]
fn tasks_by_name() {
    for n in TASKS {
        assert_eq!(task(n).unwrap().name(), *n);
    }
    let e = task("poetry").err().unwrap().to_string();
    assert!(
        e.contains("poetry") && e.contains("review") && e.contains("arithmetic"),
        "{e}"
    );
    assert!(task("").is_err());
}

#[test]
fn prompts_and_corpus_are_deterministic_in_the_seed() {
    for t in all() {
        assert_eq!(t.prompts(50, 7), t.prompts(50, 7), "{}", t.name());
        assert_ne!(t.prompts(50, 7), t.prompts(50, 8), "{}", t.name());
        assert_eq!(t.corpus(50, 7), t.corpus(50, 7), "{}", t.name());
        assert_ne!(t.corpus(50, 7), t.corpus(50, 8), "{}", t.name());
        assert_eq!(t.prompts(50, 7).len(), 50);
        assert_eq!(t.corpus(33, 1).len(), 33);
        assert!(t.prompts(0, 1).is_empty() && t.corpus(0, 1).is_empty());
        // a prefix of a longer draw: n does not change the first items
        assert_eq!(t.prompts(10, 3), t.prompts(20, 3)[..10].to_vec());
    }
}

#[test]
fn prompts_have_the_documented_form() {
    let r = task("review").unwrap();
    for p in r.prompts(100, 0) {
        assert!(p.starts_with("Review of the ") && p.ends_with(':'), "{p}");
    }
    let a = task("arithmetic").unwrap();
    let ps = a.prompts(200, 0);
    assert!(ps.iter().any(|p| p.contains('+')) && ps.iter().any(|p| p.contains('-')));
    for p in ps {
        assert!(p.starts_with("Q: ") && p.ends_with('='), "{p}");
        let ans = arithmetic_answer(&p).unwrap();
        assert!((0..=40).contains(&ans), "{p} = {ans}");
    }
}

#[test]
fn review_gold_on_hand_written_cases() {
    let t = task("review").unwrap();
    let g = |r: &str| t.gold("Review of the movie:", r);
    // (distinct positive − distinct negative) / (positive + negative + 1)
    assert_eq!(g(" a great movie."), 0.5);
    assert_eq!(
        g(" the plot is great and i loved it and a fun movie."),
        0.75
    );
    assert_eq!(g(" it was awful and boring."), -2.0 / 3.0);
    assert_eq!(g(" the movie was long."), 0.0);
    assert_eq!(g(" great but the ending is bad."), 0.0);
    // repetition does not pay; case does not matter
    assert_eq!(g(" great great great great great."), 0.5);
    assert_eq!(g(" GREAT Movie, Loved IT"), 2.0 / 3.0);
    // short responses are penalized
    assert_eq!(g(""), -0.5);
    assert_eq!(g(" great"), 0.0);
    assert_eq!(g("bad."), -1.0);
    // range
    let many_pos = " good great fun nice best amazing excellent wonderful perfect love loved liked enjoyed happy brilliant superb";
    assert!(g(many_pos) > 0.9 && g(many_pos) <= 1.0);
    let many_neg = " bad poor boring awful terrible worst dull broken hate hated disliked sad weak cheap ugly annoying";
    assert!(g(many_neg) < -0.9 && g(many_neg) >= -1.0);
    // more positive beats less positive beats negative
    assert!(g(" the story is great and i loved it.") > g(" the story is great."));
    assert!(g(" the story is great.") > g(" the story is long."));
    assert!(g(" the story is long.") > g(" the story is dull."));
}

#[test]
fn arithmetic_gold_on_hand_written_cases() {
    let t = task("arithmetic").unwrap();
    assert_eq!(t.gold("Q: 12+7=", " 19."), 1.0);
    assert_eq!(t.gold("Q: 12+7=", "19"), 1.0);
    assert_eq!(t.gold("Q: 12+7=", " 19 apples, or 20."), 1.0);
    assert_eq!(t.gold("Q: 12+7=", " 20."), 0.0);
    assert_eq!(
        t.gold("Q: 12+7=", " 18. no, 19."),
        0.0,
        "only the first number counts"
    );
    assert_eq!(t.gold("Q: 12+7=", " nineteen."), 0.0);
    assert_eq!(t.gold("Q: 12+7=", " 190."), 0.0);
    assert_eq!(t.gold("Q: 12-7=", " 5."), 1.0);
    assert_eq!(t.gold("Q: 7-12=", " -5."), 1.0);
    assert_eq!(t.gold("Q: 7-12=", " 5."), 0.0);
    assert_eq!(t.gold("Q: 3 + 4 =", " 7"), 1.0);
    assert_eq!(t.gold("Q: 20-0=", " 20."), 1.0);
    assert_eq!(t.gold("what?", " 7"), 0.0, "not an arithmetic prompt");
    assert_eq!(arithmetic_answer("Q: 12+7="), Some(19));
    assert_eq!(arithmetic_answer("Q: 12*7="), None);
    assert_eq!(first_integer("x-3y"), Some(-3));
    assert_eq!(first_integer("x - 3"), Some(3));
    assert_eq!(first_integer("none"), None);
    // every prompt's answer is right by the gold reward, and only it
    for p in t.prompts(100, 5) {
        let ans = arithmetic_answer(&p).unwrap();
        assert_eq!(t.gold(&p, &format!(" {ans}.")), 1.0, "{p}");
        assert_eq!(t.gold(&p, &format!(" {}.", ans + 1)), 0.0, "{p}");
    }
}

#[test]
fn corpora_are_mixed_and_short() {
    for t in all() {
        let c = t.corpus(400, 3);
        let golds: Vec<f32> = c.iter().map(|(p, r)| t.gold(p, r)).collect();
        let good = golds.iter().filter(|&&g| g > 0.0).count();
        let bad = golds.iter().filter(|&&g| g <= 0.0).count();
        assert!(
            (160..=240).contains(&good) && (160..=240).contains(&bad),
            "{}: {good} good, {bad} bad",
            t.name()
        );
        for (p, r) in &c {
            assert!(
                r.starts_with(' ') && r.ends_with('.'),
                "{}: {r:?}",
                t.name()
            );
            assert!(r.len() <= 100 && p.len() <= 40, "{}: {p:?} {r:?}", t.name());
            assert!(p.is_ascii() && r.is_ascii());
        }
        // prompts of the corpus look like the task's prompts
        let first = &t.prompts(1, 0)[0];
        let head = &first[..3];
        assert!(c.iter().all(|(p, _)| p.starts_with(head)), "{}", t.name());
    }
    // reviews: 5–15 words, positive ones positive and negative ones negative by gold
    let t = task("review").unwrap();
    let c = t.corpus(400, 11);
    for (p, r) in &c {
        let words = r.split_whitespace().count();
        assert!((5..=15).contains(&words), "{r:?}: {words} words");
        assert!(t.gold(p, r) != 0.0, "{r:?}");
    }
    // arithmetic: wrong answers are off by 1–3 and never negative
    let t = task("arithmetic").unwrap();
    for (p, r) in t.corpus(400, 2) {
        let want = arithmetic_answer(&p).unwrap();
        let got = first_integer(&r).unwrap();
        assert!(got >= 0 && (got - want).abs() <= 3, "{p}{r}");
        assert_eq!(r, format!(" {got}."));
    }
}

#[test]
fn corpus_vocabulary_is_small() {
    // a byte-level BPE of a few hundred tokens must cover it well
    for t in all() {
        let corpus = t.corpus(2000, 0);
        let chars: std::collections::BTreeSet<char> = corpus
            .iter()
            .flat_map(|(p, r)| p.chars().chain(r.chars()))
            .collect();
        assert!(
            chars.len() <= 40,
            "{}: {} distinct characters",
            t.name(),
            chars.len()
        );
        if t.name() == "review" {
            let words: std::collections::BTreeSet<&str> = corpus
                .iter()
                .flat_map(|(p, r)| p.split_whitespace().chain(r.split_whitespace()))
                .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
                .collect();
            assert!(words.len() < 120, "review: {} distinct words", words.len());
        }
    }
}

#[test]
fn hostile_strings_do_not_panic() {
    let huge = "great ".repeat(200_000) + &"9".repeat(100_000);
    let hostile = [
        "",
        " ",
        "\0",
        "ünïcödé ✨ 🎉 ٣+٤= 非常好",
        "Q: ",
        "Q: +=",
        "Q: 99999999999999999999+1=",
        "Q: 9223372036854775807+1=",
        "Q: -9223372036854775808-1=",
        "Q: 1+1",
        "=",
        "-",
        "--5",
        "Q: ５+３=",
        huge.as_str(),
    ];
    for t in all() {
        for p in hostile {
            for r in hostile {
                let g = t.gold(p, r);
                assert!(
                    g.is_finite() && (-1.0..=1.0).contains(&g),
                    "{} {g}",
                    t.name()
                );
            }
        }
    }
    let a = task("arithmetic").unwrap();
    assert_eq!(a.gold("Q: 9223372036854775807+1=", " 0"), 0.0);
    assert_eq!(a.gold("Q: 1+1=", &"9".repeat(100)), 0.0);
    assert_eq!(
        a.gold("Q: 1+1=", "٢ 2"),
        1.0,
        "non-ASCII digits are not numbers"
    );
}
