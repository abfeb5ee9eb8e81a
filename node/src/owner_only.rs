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

/// The alignment direct I/O asks of a buffer, a write's length and its offset.
const DIRECT_BLOCK: usize = 4096;
/// How much of a file goes through the staging buffer of [`write_uncached`] at a time.
const DIRECT_STAGE: usize = 4 << 20;

/// Writes `bytes` to an owner-only file at `path` around the page cache (`O_DIRECT`), from a
/// small block-aligned staging buffer: a busy node copying each round's 200 MB model into the
/// cache spent a sixth of its CPU there. Where the file system refuses direct I/O (tmpfs,
/// some network file systems), the file is written through the cache.
pub fn write_uncached(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    match write_direct(path, bytes) {
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => write(path, bytes),
        written => written,
    }
}

/// [`write_uncached`] without the fallback: `EINVAL` where direct I/O is refused.
fn write_direct(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    let mut staging = vec![0u8; DIRECT_STAGE.min(bytes.len()) + 2 * DIRECT_BLOCK];
    // (`align_offset` may answer "cannot": then the buffer is misaligned, the write refused
    // with EINVAL, and the file written through the cache.)
    let start = staging.as_ptr().align_offset(DIRECT_BLOCK).min(DIRECT_BLOCK);
    let staging = &mut staging[start..];
    for chunk in bytes.chunks(DIRECT_STAGE) {
        // The last chunk is padded to a whole block, and the file cut back to its length.
        let padded = chunk.len().next_multiple_of(DIRECT_BLOCK);
        staging[..chunk.len()].copy_from_slice(chunk);
        staging[chunk.len()..padded].fill(0);
        file.write_all(&staging[..padded])?;
    }
    file.set_len(bytes.len() as u64)
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

    #[test]
    fn a_file_written_around_the_cache_holds_exactly_its_bytes() {
        let scratch = tempfile::tempdir().expect("a scratch directory");
        let mode = |path: &Path| std::fs::metadata(path).expect("metadata").permissions().mode();
        // Empty, shorter than a block, a stage and a bit (padded tail), and on a stage's edge.
        for length in [0, 1000, DIRECT_STAGE + DIRECT_BLOCK + 7, 2 * DIRECT_STAGE] {
            let bytes: Vec<u8> = (0..length).map(|i| (i % 251) as u8).collect();
            let file = scratch.path().join(format!("blob-{length}"));
            std::fs::write(&file, vec![9u8; length + 5000]).expect("a longer old file");
            write_uncached(&file, &bytes).expect("written");
            assert!(std::fs::read(&file).expect("read") == bytes, "{length} bytes differ");
            assert_eq!(mode(&file) & 0o777, 0o600);
        }
    }
}
