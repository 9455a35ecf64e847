//! What the end-to-end tests of the `rlhf` binary share: running it,
//! checking how it ended, child processes that die with the test, waiting,
//! and a tiny random policy.
// each test binary uses its own part of this
#![allow(dead_code)]
use std::fmt::Debug;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// Runs `rlhf ARGS`.
pub fn rlhf<S: AsRef<str>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .expect("run rlhf")
}

/// Runs `rlhf ARGS`, which must succeed; its output.
pub fn run_ok<S: AsRef<str> + Debug>(args: &[S]) -> Output {
    let o = rlhf(args);
    assert!(
        o.status.success(),
        "rlhf {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Runs `rlhf ARGS`, which must succeed; its stdout.
pub fn ok<S: AsRef<str> + Debug>(args: &[S]) -> String {
    String::from_utf8_lossy(&run_ok(args).stdout).to_string()
}

/// Runs `rlhf ARGS`, which must fail without a panic; its stderr.
pub fn err<S: AsRef<str> + Debug>(args: &[S]) -> String {
    let o = rlhf(args);
    assert!(!o.status.success(), "rlhf {args:?} should fail");
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!e.contains("panicked"), "rlhf {args:?} panicked:\n{e}");
    e
}

/// `rlhf policy init` arguments of a tiny random Llama at `out` (hidden 16,
/// 1 layer, 2/1 heads, vocabulary 280); flags in `extra` replace these.
pub fn tiny_init(out: &str, extra: &[&str]) -> Vec<String> {
    let base = [
        ("--hidden-size", "16"),
        ("--intermediate-size", "32"),
        ("--layers", "1"),
        ("--heads", "2"),
        ("--kv-heads", "1"),
        ("--vocab-size", "280"),
    ];
    let mut v: Vec<String> = ["policy", "init", "--out", out].map(String::from).into();
    for (flag, value) in base {
        if !extra.contains(&flag) {
            v.extend([flag.to_string(), value.to_string()]);
        }
    }
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// The shape of `tiny_init` the round tests use: 2 layers, GQA 4/2, hidden 32.
pub const GQA_2_LAYERS: [&str; 10] = [
    "--hidden-size",
    "32",
    "--intermediate-size",
    "64",
    "--layers",
    "2",
    "--heads",
    "4",
    "--kv-heads",
    "2",
];

/// A child process that is killed when this goes out of scope.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `rlhf ARGS` with `env`, its stdout and stderr going to `log`.
pub fn spawn(args: &[&str], env: &[(&str, &str)], log: &Path) -> Child {
    let f = std::fs::File::create(log).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_rlhf"));
    c.args(args).stdout(f.try_clone().unwrap()).stderr(f);
    for (k, v) in env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

/// Polls `f` until it holds; fails the test after `secs` seconds.
pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
