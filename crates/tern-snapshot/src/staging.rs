//! Directories written under a temporary name and renamed into place when
//! complete, so a crash never leaves a half-written save or export under
//! the name the user asked for.

use std::path::{Path, PathBuf};

/// Why a staging directory could not be made.
pub(crate) enum StagingError {
    /// The target exists and is not empty (or has no name).
    Exists,
    /// Creating the staging directory failed.
    Create(PathBuf, std::io::Error),
}

/// Makes an empty staging directory beside `dir` (which must be missing
/// or empty); returns it and the parent both live in.
pub(crate) fn staging_dir(dir: &Path) -> Result<(PathBuf, PathBuf), StagingError> {
    if let Ok(mut entries) = std::fs::read_dir(dir) {
        if entries.next().is_some() {
            return Err(StagingError::Exists);
        }
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = dir
        .file_name()
        .ok_or(StagingError::Exists)?
        .to_string_lossy()
        .into_owned();
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| StagingError::Create(tmp.clone(), e))?;
    Ok((tmp, parent))
}
