//! Where a command may write its output directory (`--out`): never over a
//! user's files. A command writes to a path that does not exist or to an
//! empty directory; a training command also continues (`--resume`) or
//! refuses its own earlier run, recognized by `trainer_state/`. Anything
//! else — a plain file, a non-empty directory that is not our run, the
//! working folder or one of its parents — is refused with a message saying
//! what is there, unless the user passes `--overwrite` (never for the
//! working folder, its parents or the root). The new output is always built
//! beside the old one and renamed into place ([`write_dir_atomic`]), so a
//! failed run leaves what was there intact.
//!
//! [`write_dir_atomic`]: crate::fs_atomic::write_dir_atomic
use anyhow::{bail, Result};
use std::path::Path;

/// What is at an output path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutState {
    /// Nothing, or an empty directory.
    Free,
    /// A directory holding a training run of ours (`trainer_state/`).
    TrainingRun,
    /// Something else: a file, or a directory with other contents.
    Occupied(String),
}

/// Looks at `out` without changing it.
pub fn inspect(out: &Path) -> Result<OutState> {
    let meta = match std::fs::symlink_metadata(out) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(OutState::Free),
        Err(e) => bail!("cannot look at {}: {e}", out.display()),
    };
    if !meta.is_dir() {
        return Ok(OutState::Occupied("a file, not a directory".into()));
    }
    if crate::train_state::exists(out) {
        return Ok(OutState::TrainingRun);
    }
    let mut names: Vec<String> = std::fs::read_dir(out)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", out.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        return Ok(OutState::Free);
    }
    names.sort();
    let n = names.len();
    let shown = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    let more = if n > 5 {
        format!(" and {} more", n - 5)
    } else {
        String::new()
    };
    Ok(OutState::Occupied(format!(
        "a directory holding {n} entr{} ({shown}{more})",
        if n == 1 { "y" } else { "ies" }
    )))
}

/// Refuses paths no command may replace: the working folder, one of its
/// parents, or the root.
fn refuse_protected(out: &Path) -> Result<()> {
    let Ok(target) = std::fs::canonicalize(out) else {
        return Ok(()); // does not exist yet
    };
    let cwd = std::env::current_dir()
        .ok()
        .and_then(|c| std::fs::canonicalize(c).ok());
    if target.parent().is_none() || cwd.is_some_and(|c| c.starts_with(&target)) {
        bail!(
            "refusing to write over {}: it is the working folder or one of its parents; give --out a new directory",
            out.display()
        );
    }
    Ok(())
}

/// Checks `out` before a command that writes a whole directory there (a
/// model, an export). Refuses anything but a free path unless `overwrite`.
pub fn check(out: &Path, overwrite: bool) -> Result<OutState> {
    refuse_protected(out)?;
    let state = inspect(out)?;
    match &state {
        OutState::Occupied(what) if !overwrite => bail!(
            "{} is {what}; refusing to replace it. Choose another --out, or pass --overwrite to replace it",
            out.display()
        ),
        OutState::TrainingRun if !overwrite => bail!(
            "{} holds an earlier run; choose another --out, or pass --overwrite to replace it",
            out.display()
        ),
        _ => Ok(state),
    }
}

/// Checks the `--out` of a training command: `resume` continues the run
/// found there (and only a run of ours); `overwrite` starts over.
/// Returns whether a run is to be resumed.
pub fn check_training(out: &Path, resume: bool, overwrite: bool) -> Result<bool> {
    refuse_protected(out)?;
    match inspect(out)? {
        OutState::TrainingRun if overwrite => Ok(false),
        OutState::TrainingRun if resume => Ok(true),
        OutState::TrainingRun => bail!(
            "{} already holds a training run; pass --resume to continue it, --overwrite to start over, or choose another --out",
            out.display()
        ),
        OutState::Occupied(what) if !overwrite => bail!(
            "{} is {what}, not a training run of ours; refusing to replace it{}. Choose another --out, or pass --overwrite to replace it",
            out.display(),
            if resume { " (--resume continues only our own runs)" } else { "" }
        ),
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_occupied_and_our_runs() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        assert_eq!(check(&out, false).unwrap(), OutState::Free);
        std::fs::create_dir(&out).unwrap();
        assert_eq!(check(&out, false).unwrap(), OutState::Free);
        std::fs::write(out.join("thesis.tex"), "years of work").unwrap();
        let e = check(&out, false).unwrap_err().to_string();
        assert!(e.contains("thesis.tex") && e.contains("--overwrite"), "{e}");
        assert!(check(&out, true).is_ok());
        let e = check_training(&out, true, false).unwrap_err().to_string();
        assert!(e.contains("only our own runs"), "{e}");
        let file = d.path().join("notes.txt");
        std::fs::write(&file, "x").unwrap();
        assert!(check(&file, false)
            .unwrap_err()
            .to_string()
            .contains("a file"));
        let run = d.path().join("run");
        std::fs::create_dir_all(run.join("trainer_state")).unwrap();
        std::fs::write(run.join("trainer_state").join("state.json"), "{}").unwrap();
        assert!(check_training(&run, true, false).unwrap());
        assert!(!check_training(&run, false, true).unwrap());
        assert!(check_training(&run, false, false).is_err());
        assert!(check(&run, false).is_err());
    }

    #[test]
    fn the_working_folder_and_its_parents_are_never_replaced() {
        assert!(check(Path::new("."), true).is_err());
        assert!(check(Path::new(".."), true).is_err());
        assert!(check(Path::new("/"), true).is_err());
        assert!(check_training(Path::new("."), false, true).is_err());
    }
}
