//! Files and directories only the node's own user may read: 0700 directories, 0600 files (a
//! node keeps private training data, models and keys; other local users see none of them).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Creates `dir` (and its missing parents) owner-only; an existing `dir` is made owner-only.
pub fn create_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Creates (or truncates) the file at `path`, owner-only.
pub fn create_file(path: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// Writes `bytes` to an owner-only file at `path`.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    create_file(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_and_files_are_owner_only_even_if_they_existed() {
        let scratch = tempfile::tempdir().expect("a scratch directory");
        let dir = scratch.path().join("a/b");
        std::fs::create_dir_all(&dir).expect("made world-readable first");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        create_dir(&dir).expect("made owner-only");
        let mode = |path: &Path| std::fs::metadata(path).expect("metadata").permissions().mode();
        assert_eq!(mode(&dir) & 0o777, 0o700);
        let file = dir.join("f");
        std::fs::write(&file, b"old").expect("a world-readable file");
        write(&file, b"new").expect("rewritten owner-only");
        assert_eq!(mode(&file) & 0o777, 0o600);
        assert_eq!(std::fs::read(&file).expect("read"), b"new");
    }
}
