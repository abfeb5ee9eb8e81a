//! Makes written blob files durable off the round's path: storing a model returns once its bytes
//! are in the page cache, and one thread per store syncs each file, then the blob directory,
//! after it. A file removed before its turn is skipped. Dropping the syncer waits for every file
//! handed to it, so a node that stops cleanly leaves all of them on disk.

use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

/// The background thread that syncs blob files, and its queue.
pub struct BlobSyncer {
    queue: Option<mpsc::Sender<PathBuf>>,
    thread: Option<JoinHandle<()>>,
}

impl BlobSyncer {
    /// Starts the thread that syncs files of `dir` (and `dir` itself after each batch).
    pub fn start(dir: PathBuf) -> std::io::Result<Self> {
        let (queue, files) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("blob-sync".to_owned())
            .spawn(move || sync_until_closed(&dir, &files))?;
        Ok(Self { queue: Some(queue), thread: Some(thread) })
    }

    /// Hands over a file just written under its final name, to be synced soon.
    pub fn sync_later(&self, file: PathBuf) {
        let sent = self.queue.as_ref().map(|queue| queue.send(file));
        if !matches!(sent, Some(Ok(()))) {
            tracing::warn!("the blob sync thread is gone: a written blob file stays unsynced");
        }
    }
}

impl Drop for BlobSyncer {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the blob sync thread panicked");
        }
    }
}

/// Syncs the files that come, a batch at a time (the directory once per batch), until the
/// queue closes and is empty.
fn sync_until_closed(dir: &std::path::Path, files: &mpsc::Receiver<PathBuf>) {
    while let Ok(first) = files.recv() {
        let batch: Vec<PathBuf> = std::iter::once(first).chain(files.try_iter()).collect();
        let mut synced_any = false;
        for file in batch {
            match std::fs::File::open(&file).and_then(|f| f.sync_all()) {
                Ok(()) => synced_any = true,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(file = %file.display(), %error, "cannot sync a blob file");
                }
            }
        }
        // The files' names are durable only once the directory naming them is synced.
        if synced_any && let Err(error) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
            tracing::warn!(dir = %dir.display(), %error, "cannot sync the blob directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_handed_over_are_synced_and_removed_ones_skipped_before_the_syncer_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let syncer = BlobSyncer::start(dir.path().to_owned()).unwrap();
        let kept = dir.path().join("kept");
        std::fs::write(&kept, vec![1u8; 4096]).unwrap();
        syncer.sync_later(kept.clone());
        syncer.sync_later(dir.path().join("removed before its turn"));
        drop(syncer);
        assert_eq!(std::fs::read(&kept).unwrap(), vec![1u8; 4096]);
    }
}
