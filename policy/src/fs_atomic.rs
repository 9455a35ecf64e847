//! Crash-safe writes: a file flushed to disk before it counts as written, and
//! a directory built beside its final place and renamed into it, so a crash
//! leaves the old directory or the new one, never a half-written one.
use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes a file and flushes it to disk.
pub fn write_file_synced(path: &Path, data: &[u8]) -> Result<()> {
    let mut f =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all()?;
    Ok(())
}

/// Builds a directory atomically: `fill` writes into a temporary sibling
/// directory, which then replaces `dir`. A crash leaves either the old
/// directory or the new one, never a half-written one.
pub fn write_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let name = dir
        .file_name()
        .context("checkpoint path has no final component")?
        .to_string_lossy()
        .to_string();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.tmp-"))
        .tempdir_in(&parent)
        .with_context(|| {
            format!(
                "cannot create a temporary directory in {}",
                parent.display()
            )
        })?;
    fill(tmp.path())?;
    let tmp = tmp.keep();
    if dir.exists() {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(dir, &old)
            .with_context(|| format!("cannot move the old {} aside", dir.display()))?;
        std::fs::rename(&tmp, dir)
            .with_context(|| format!("cannot move the new checkpoint to {}", dir.display()))?;
        if old.is_dir() {
            std::fs::remove_dir_all(&old).ok();
        } else {
            std::fs::remove_file(&old).ok();
        }
    } else {
        std::fs::rename(&tmp, dir)
            .with_context(|| format!("cannot move the new checkpoint to {}", dir.display()))?;
    }
    if let Ok(d) = std::fs::File::open(&parent) {
        d.sync_all().ok();
    }
    Ok(())
}
