//! A worker's round leases kept on disk. The server hands the lease's secret
//! token only to the claim that took it; a worker keeps it in
//! `WORKDIR/.leases/round-<id>.json` (readable by its user only), so the same
//! worker restarted after a crash can go on heartbeating the round it holds
//! instead of waiting for the lease to expire.
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Serialize, Deserialize)]
struct Saved {
    server: String,
    worker: String,
    token: String,
}

fn path(workdir: &Path, round: i64) -> PathBuf {
    workdir.join(".leases").join(format!("round-{round}.json"))
}

/// Keeps `token`, the lease of round `round` that `worker` claimed on `server`.
pub fn save(workdir: &Path, server: &str, worker: &str, round: i64, token: &str) -> Result<()> {
    let p = path(workdir, round);
    let dir = p.parent().expect("a file in .leases");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let saved = Saved {
        server: server.into(),
        worker: worker.into(),
        token: token.into(),
    };
    let mut f = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer(&mut f, &saved)?;
    // NamedTempFile is created 0600 on Unix: the token never is world-readable
    f.persist(&p)
        .with_context(|| format!("cannot write {}", p.display()))?;
    Ok(())
}

/// The token `worker` kept for round `round` on `server`, if any.
pub fn load(workdir: &Path, server: &str, worker: &str, round: i64) -> Option<String> {
    let text = std::fs::read_to_string(path(workdir, round)).ok()?;
    let s: Saved = serde_json::from_str(&text).ok()?;
    (s.server == server && s.worker == worker).then_some(s.token)
}

/// Drops the kept token of round `round` (the lease ended).
pub fn forget(workdir: &Path, round: i64) {
    let _ = std::fs::remove_file(path(workdir, round));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_per_server_worker_and_round() {
        let d = tempfile::tempdir().unwrap();
        save(d.path(), "http://a", "w1", 3, "secret").unwrap();
        assert_eq!(
            load(d.path(), "http://a", "w1", 3).as_deref(),
            Some("secret")
        );
        assert_eq!(load(d.path(), "http://a", "w2", 3), None);
        assert_eq!(load(d.path(), "http://b", "w1", 3), None);
        assert_eq!(load(d.path(), "http://a", "w1", 4), None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path(d.path(), 3))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the token file is private");
        }
        forget(d.path(), 3);
        assert_eq!(load(d.path(), "http://a", "w1", 3), None);
    }
}
