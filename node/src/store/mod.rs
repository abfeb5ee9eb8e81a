//! The node's RocksDB store: jobs, memberships, rounds, model blobs by content hash, the model
//! registry and node metadata, in column families. Every state change is one atomic write batch.
//! A large blob (a model of many MB) is a file under `DATA_DIR/blobs/` named by its hash, written
//! before the batch that names it commits, with a marker in the blob column family: so storing
//! one costs no copies in RocksDB's write batch, memtable and log. The file is synced off the
//! round's path ([`blob_sync`]); one a power cut left torn fails its hash check when read, and
//! reads as an error, so the node fetches that model from its peers again.

mod blob_sync;

use fedmesh_protocol::ids::ContentHash;
use fedmesh_protocol::tensor::CheckedBlob;
use rocksdb::{ColumnFamilyDescriptor, DB, IteratorMode, Options, WriteBatch, WriteOptions};
use serde::{Serialize, de::DeserializeOwned};
use std::path::{Path, PathBuf};

/// The on-disk schema this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// Blobs from this size on are files beside the database.
const FILE_BLOB_BYTES: usize = 1 << 20;
/// What the blob column family holds for a blob kept as a file.
const FILE_BLOB_MARKER: &[u8] = b"fedmesh: blob in a file";

/// Largest record (not blob) the store will decode, a guard against a corrupt value.
const MAX_RECORD_BYTES: usize = 64 << 20;

const SCHEMA_KEY: &[u8] = b"schema_version";

/// A column family: one kind of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Schema version and node facts.
    Meta,
    /// Job id to the job's record.
    Jobs,
    /// Job id ++ member id to a membership record.
    Members,
    /// Job id ++ big-endian round to a round record.
    Rounds,
    /// Content hash to bytes (models, deltas, announcements).
    Blobs,
    /// Job id ++ big-endian round to a model registry entry.
    Models,
}

impl Table {
    const ALL: [Table; 6] =
        [Table::Meta, Table::Jobs, Table::Members, Table::Rounds, Table::Blobs, Table::Models];

    fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Jobs => "jobs",
            Table::Members => "members",
            Table::Rounds => "rounds",
            Table::Blobs => "blobs",
            Table::Models => "models",
        }
    }
}

/// What can go wrong with the store; each names the data directory.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the database in {path} is locked: another fedmesh process is using this data directory"
    )]
    Locked { path: PathBuf },
    #[error("the database in {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "the database in {path} has schema version {found}, newer than this fedmesh (version {SCHEMA_VERSION}); upgrade fedmesh"
    )]
    NewerSchema { path: PathBuf, found: u32 },
    #[error("database error in {path}: {source}")]
    Rocks { path: PathBuf, source: rocksdb::Error },
    #[error("record in column family `{table}` under key {key} cannot be decoded: {detail}")]
    BadRecord { table: &'static str, key: String, detail: String },
    #[error("blob file {path}: {source}")]
    BlobFile { path: PathBuf, source: std::io::Error },
    #[error("record for column family `{table}` cannot be encoded: {detail}")]
    Encode { table: &'static str, detail: String },
}

/// The node's database.
pub struct Store {
    db: DB,
    path: PathBuf,
    /// Where large blobs are kept as files.
    blob_dir: PathBuf,
    /// How many recent rounds' model weights the registry keeps per job (0: all).
    model_retention: u64,
    /// The blob files this process wrote or hashed since it opened the store: any other is
    /// hashed again before its bytes are used (a disk or a hand may have changed it).
    verified: std::sync::Mutex<std::collections::HashSet<ContentHash>>,
    /// Syncs blob files in the background.
    syncer: blob_sync::BlobSyncer,
}

impl Store {
    /// Opens (creating if missing) the database under `dir`, checking its schema version.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        crate::owner_only::create_dir(dir)
            .map_err(|source| StoreError::BlobFile { path: dir.to_owned(), source })?;
        let path = dir.join("db");
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_paranoid_checks(true);
        let descriptors = Table::ALL
            .iter()
            .map(|t| ColumnFamilyDescriptor::new(t.name(), Self::table_options(*t)));
        let db = DB::open_cf_descriptors(&options, &path, descriptors)
            .map_err(|e| Self::classify_open_error(&path, e))?;
        let blob_dir = dir.join("blobs");
        crate::owner_only::create_dir(&blob_dir)
            .map_err(|source| StoreError::BlobFile { path: blob_dir.clone(), source })?;
        let verified = Default::default();
        let syncer = blob_sync::BlobSyncer::start(blob_dir.clone())
            .map_err(|source| StoreError::BlobFile { path: blob_dir.clone(), source })?;
        let store = Self { db, path, blob_dir, model_retention: 0, verified, syncer };
        store.check_schema()?;
        store.collect_partial_files()?;
        Ok(store)
    }

    /// Removes the `.partial` files a crash left mid-write (no record names them).
    fn collect_partial_files(&self) -> Result<(), StoreError> {
        let error = |source| StoreError::BlobFile { path: self.blob_dir.clone(), source };
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.blob_dir).map_err(error)? {
            let path = entry.map_err(error)?.path();
            if path.extension().is_some_and(|ext| ext == "partial") {
                std::fs::remove_file(&path)
                    .map_err(|source| StoreError::BlobFile { path: path.clone(), source })?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(removed, dir = %self.blob_dir.display(), "removed blob files a crash left half-written");
        }
        Ok(())
    }

    /// Keeps only the last `rounds` rounds' model weights of each job (0: all).
    pub fn with_model_retention(mut self, rounds: u64) -> Self {
        self.model_retention = rounds;
        self
    }

    /// How many recent rounds' model weights are kept per job (0: all).
    pub fn model_retention(&self) -> u64 {
        self.model_retention
    }

    /// The directory RocksDB keeps its files in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn table_options(table: Table) -> Options {
        let mut options = Options::default();
        if table == Table::Blobs {
            // Model blobs are large: keep them out of the LSM tree's compactions.
            options.set_enable_blob_files(true);
            options.set_min_blob_size(4096);
        }
        options
    }

    fn classify_open_error(path: &Path, error: rocksdb::Error) -> StoreError {
        let text = error.to_string();
        let path = path.to_path_buf();
        if text.contains("lock") && (text.contains("LOCK") || text.contains("Resource")) {
            StoreError::Locked { path }
        } else if text.contains("Corruption") || text.contains("corrupt") {
            StoreError::Corrupt { path, detail: text }
        } else {
            StoreError::Rocks { path, source: error }
        }
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        let found: Option<u32> = self.get(Table::Meta, SCHEMA_KEY)?;
        match found {
            Some(version) if version > SCHEMA_VERSION => {
                Err(StoreError::NewerSchema { path: self.path.clone(), found: version })
            }
            Some(_) => Ok(()),
            None => {
                let mut batch = self.batch();
                batch.put(Table::Meta, SCHEMA_KEY, &SCHEMA_VERSION)?;
                batch.commit()
            }
        }
    }

    fn handle(&self, table: Table) -> Result<&rocksdb::ColumnFamily, StoreError> {
        self.db.cf_handle(table.name()).ok_or_else(|| StoreError::Corrupt {
            path: self.path.clone(),
            detail: format!("column family `{}` is missing", table.name()),
        })
    }

    fn rocks(&self, source: rocksdb::Error) -> StoreError {
        StoreError::Rocks { path: self.path.clone(), source }
    }

    /// Reads and decodes one record.
    pub fn get<V: DeserializeOwned>(
        &self,
        table: Table,
        key: &[u8],
    ) -> Result<Option<V>, StoreError> {
        let raw = self.db.get_pinned_cf(self.handle(table)?, key).map_err(|e| self.rocks(e))?;
        raw.map(|bytes| decode_record(table, key, &bytes)).transpose()
    }

    /// The record under `key`, read as `V` or, as an earlier build wrote it, as `Old`.
    pub fn get_upgrading<V: DeserializeOwned, Old: DeserializeOwned + Into<V>>(
        &self,
        table: Table,
        key: &[u8],
    ) -> Result<Option<V>, StoreError> {
        let raw = self.db.get_pinned_cf(self.handle(table)?, key).map_err(|e| self.rocks(e))?;
        raw.map(|bytes| {
            decode_record::<V>(table, key, &bytes).or_else(|error| {
                decode_record::<Old>(table, key, &bytes).map(Into::into).map_err(|_| error)
            })
        })
        .transpose()
    }

    /// Every record whose key starts with `prefix`, in key order.
    pub fn scan<V: DeserializeOwned>(
        &self,
        table: Table,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, V)>, StoreError> {
        self.scan_with(table, prefix, |key, value| decode_record(table, key, value))
    }

    /// Like [`scan`](Self::scan), each record decoded as `V` or, failing that, as the layout
    /// `Old` an earlier build wrote (then converted): a record type that gained fields stays
    /// readable.
    pub fn scan_upgrading<V: DeserializeOwned, Old: DeserializeOwned + Into<V>>(
        &self,
        table: Table,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, V)>, StoreError> {
        self.scan_with(table, prefix, |key, value| {
            decode_record::<V>(table, key, value).or_else(|error| {
                decode_record::<Old>(table, key, value).map(Into::into).map_err(|_| error)
            })
        })
    }

    /// Every record whose key starts with `prefix`, in key order, each made by `decode`.
    fn scan_with<V>(
        &self,
        table: Table,
        prefix: &[u8],
        decode: impl Fn(&[u8], &[u8]) -> Result<V, StoreError>,
    ) -> Result<Vec<(Vec<u8>, V)>, StoreError> {
        let mode = IteratorMode::From(prefix, rocksdb::Direction::Forward);
        let mut records = Vec::new();
        for item in self.db.iterator_cf(self.handle(table)?, mode) {
            let (key, value) = item.map_err(|e| self.rocks(e))?;
            if !key.starts_with(prefix) {
                break;
            }
            let record = decode(&key, &value)?;
            records.push((key.into_vec(), record));
        }
        Ok(records)
    }

    /// The bytes stored under `hash`, if any.
    pub fn blob(&self, hash: &ContentHash) -> Result<Option<Vec<u8>>, StoreError> {
        let value =
            self.db.get_cf(self.handle(Table::Blobs)?, hash.0).map_err(|e| self.rocks(e))?;
        match value {
            Some(value) if is_file_marker(hash, &value) => self.read_blob_file(hash).map(Some),
            other => Ok(other),
        }
    }

    fn blob_file(&self, hash: &ContentHash) -> PathBuf {
        self.blob_dir.join(hash.to_hex())
    }

    /// A blob file's bytes, hashed again the first time this process reads it.
    fn read_blob_file(&self, hash: &ContentHash) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_file(hash);
        let bytes = std::fs::read(&path)
            .map_err(|source| StoreError::BlobFile { path: path.clone(), source })?;
        let verified = || self.verified.lock().map(|set| set.contains(hash)).unwrap_or(false);
        if !verified() {
            if ContentHash::of(&bytes) != *hash {
                let detail = format!("blob file {} does not hash to its name", path.display());
                return Err(StoreError::Corrupt { path: self.path.clone(), detail });
            }
            self.mark_verified(*hash);
        }
        Ok(bytes)
    }

    fn mark_verified(&self, hash: ContentHash) {
        if let Ok(mut set) = self.verified.lock() {
            set.insert(hash);
        }
    }

    /// Writes a large blob's file (a temporary name first, so a crash leaves no partial file
    /// under the hash) and hands it to the syncer.
    fn write_blob_file(&self, hash: &ContentHash, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.blob_file(hash);
        let temporary = path.with_extension("partial");
        let error = |source| StoreError::BlobFile { path: path.clone(), source };
        let write = || -> std::io::Result<()> {
            crate::owner_only::write_uncached(&temporary, bytes)?;
            std::fs::rename(&temporary, &path)
        };
        write().map_err(error)?;
        self.syncer.sync_later(path);
        self.mark_verified(*hash);
        Ok(())
    }

    /// Whether a blob is stored.
    pub fn has_blob(&self, hash: &ContentHash) -> Result<bool, StoreError> {
        Ok(self
            .db
            .get_pinned_cf(self.handle(Table::Blobs)?, hash.0)
            .map_err(|e| self.rocks(e))?
            .is_some())
    }

    /// Stores a round's model blob without waiting for the disk: its file is synced in the
    /// background and its record with the next synced write. One a power cut loses is fetched
    /// from the job's members again, like one it left torn.
    pub fn put_model_blob(&self, blob: &CheckedBlob<'_>) -> Result<ContentHash, StoreError> {
        let mut batch = self.batch();
        batch.put_checked_blob(blob)?;
        batch.commit_with(false)?;
        Ok(blob.hash())
    }

    /// Starts an atomic change.
    pub fn batch(&self) -> StoreBatch<'_> {
        StoreBatch {
            store: self,
            batch: WriteBatch::default(),
            unlink: Vec::new(),
            deleted: Vec::new(),
            kept: Default::default(),
        }
    }
}

/// Changes that are committed together or not at all.
pub struct StoreBatch<'a> {
    store: &'a Store,
    batch: WriteBatch,
    /// Blob files to remove once the batch is committed.
    unlink: Vec<PathBuf>,
    /// Blobs to delete at the commit, and blobs to keep although deleted.
    deleted: Vec<ContentHash>,
    kept: std::collections::HashSet<ContentHash>,
}

/// Whether a blob column family value is the marker of a blob kept as a file (a small blob whose
/// bytes happen to be the marker has the marker's own hash).
fn is_file_marker(hash: &ContentHash, value: &[u8]) -> bool {
    value == FILE_BLOB_MARKER && *hash != ContentHash::of(FILE_BLOB_MARKER)
}

impl StoreBatch<'_> {
    /// Puts an encoded record.
    pub fn put<V: Serialize + ?Sized>(
        &mut self,
        table: Table,
        key: &[u8],
        value: &V,
    ) -> Result<(), StoreError> {
        let bytes = bincode::serde::encode_to_vec(value, bincode::config::standard())
            .map_err(|e| StoreError::Encode { table: table.name(), detail: e.to_string() })?;
        self.batch.put_cf(self.store.handle(table)?, key, bytes);
        Ok(())
    }

    /// Stores bytes under their content hash and returns the hash.
    pub fn put_blob(&mut self, bytes: &[u8]) -> Result<ContentHash, StoreError> {
        let hash = ContentHash::of(bytes);
        self.put_hashed(hash, bytes)?;
        Ok(hash)
    }

    /// Stores a blob under the hash it was checked against (not hashed again).
    pub fn put_checked_blob(&mut self, blob: &CheckedBlob<'_>) -> Result<(), StoreError> {
        self.put_hashed(blob.hash(), blob.bytes())
    }

    /// Stores `bytes`, whose hash is `hash`.
    fn put_hashed(&mut self, hash: ContentHash, bytes: &[u8]) -> Result<(), StoreError> {
        let table = self.store.handle(Table::Blobs)?;
        if bytes.len() >= FILE_BLOB_BYTES {
            self.store.write_blob_file(&hash, bytes)?;
            self.batch.put_cf(table, hash.0, FILE_BLOB_MARKER);
        } else {
            self.batch.put_cf(table, hash.0, bytes);
        }
        Ok(())
    }

    /// Deletes a blob when the batch is committed (its file too, if it has one), unless the
    /// same batch also keeps it ([`keep_blob`](Self::keep_blob)).
    pub fn delete_blob(&mut self, hash: &ContentHash) -> Result<(), StoreError> {
        self.store.handle(Table::Blobs)?;
        self.deleted.push(*hash);
        Ok(())
    }

    /// Keeps a blob this batch's records use, whatever else in the batch deletes it.
    pub fn keep_blob(&mut self, hash: ContentHash) {
        self.kept.insert(hash);
    }

    /// Deletes one record.
    pub fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StoreError> {
        self.batch.delete_cf(self.store.handle(table)?, key);
        Ok(())
    }

    /// Writes every change at once, synced to disk.
    pub fn commit(self) -> Result<(), StoreError> {
        self.commit_with(true)
    }

    /// Writes every change at once; with `sync`, waits until the log is on disk.
    fn commit_with(mut self, sync: bool) -> Result<(), StoreError> {
        let blobs = self.store.handle(Table::Blobs)?;
        for hash in std::mem::take(&mut self.deleted) {
            if !self.kept.contains(&hash) {
                self.batch.delete_cf(blobs, hash.0);
                self.unlink.push(self.store.blob_file(&hash));
            }
        }
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        self.store.db.write_opt(self.batch, &options).map_err(|e| self.store.rocks(e))?;
        for path in self.unlink {
            if let Err(error) = std::fs::remove_file(&path)
                && error.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), %error, "cannot remove a blob file");
            }
        }
        Ok(())
    }
}

fn decode_record<V: DeserializeOwned>(
    table: Table,
    key: &[u8],
    bytes: &[u8],
) -> Result<V, StoreError> {
    let bad = |detail: String| StoreError::BadRecord {
        table: table.name(),
        key: key.iter().map(|b| format!("{b:02x}")).collect(),
        detail,
    };
    let config = bincode::config::standard().with_limit::<MAX_RECORD_BYTES>();
    let (value, used) =
        bincode::serde::decode_from_slice(bytes, config).map_err(|e| bad(e.to_string()))?;
    if used != bytes.len() {
        return Err(bad(format!("{} trailing bytes", bytes.len() - used)));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_blobs_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let hash;
        {
            let store = Store::open(dir.path()).unwrap();
            let mut batch = store.batch();
            batch.put(Table::Jobs, b"job-a", &("alpha".to_string(), 3u64)).unwrap();
            batch.put(Table::Jobs, b"job-b", &("beta".to_string(), 4u64)).unwrap();
            hash = batch.put_blob(&[7u8; 10_000]).unwrap();
            batch.commit().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let jobs: Vec<(Vec<u8>, (String, u64))> = store.scan(Table::Jobs, b"job-").unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[1].1, ("beta".to_string(), 4));
        assert_eq!(store.blob(&hash).unwrap().unwrap(), vec![7u8; 10_000]);
    }

    #[test]
    fn second_open_of_the_same_directory_is_refused_as_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let error = Store::open(dir.path()).err().unwrap();
        assert!(matches!(error, StoreError::Locked { .. }), "{error}");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut batch = store.batch();
            batch.put(Table::Meta, SCHEMA_KEY, &(SCHEMA_VERSION + 1)).unwrap();
            batch.commit().unwrap();
        }
        let error = Store::open(dir.path()).err().unwrap();
        assert!(error.to_string().contains("newer than this fedmesh"), "{error}");
    }

    #[test]
    fn a_corrupt_database_gets_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let db_dir = dir.path().join("db");
        for entry in std::fs::read_dir(&db_dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("MANIFEST") {
                std::fs::write(&path, b"garbage that is not a manifest").unwrap();
            }
        }
        let error = Store::open(dir.path()).err().unwrap();
        assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
    }

    #[test]
    fn a_blob_file_changed_on_disk_is_refused_and_half_written_files_are_collected() {
        let dir = tempfile::tempdir().unwrap();
        let hash;
        {
            let store = Store::open(dir.path()).unwrap();
            let mut batch = store.batch();
            hash = batch.put_blob(&vec![3u8; FILE_BLOB_BYTES]).unwrap();
            batch.commit().unwrap();
            assert_eq!(store.blob(&hash).unwrap().unwrap().len(), FILE_BLOB_BYTES);
        }
        let blobs = dir.path().join("blobs");
        let mut changed = vec![3u8; FILE_BLOB_BYTES];
        changed[17] = 4;
        std::fs::write(blobs.join(hash.to_hex()), &changed).unwrap();
        std::fs::write(blobs.join("abc.partial"), b"half a blob").unwrap();
        let store = Store::open(dir.path()).unwrap();
        let error = store.blob(&hash).err().unwrap();
        assert!(error.to_string().contains("does not hash to its name"), "{error}");
        assert!(!blobs.join("abc.partial").exists(), "the half-written file was removed");
        let mode = |path: &Path| {
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).unwrap().permissions())
        };
        assert_eq!(mode(dir.path()) & 0o777, 0o700, "the data directory is owner-only");
        assert_eq!(mode(&blobs) & 0o777, 0o700, "the blob directory is owner-only");
    }

    #[test]
    fn a_model_blob_stored_without_waiting_for_the_disk_reads_back_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (large, small) = (vec![5u8; FILE_BLOB_BYTES + 3], vec![6u8; 100]);
        let hashes = {
            let store = Store::open(dir.path()).unwrap();
            let hashes = [&large, &small]
                .map(|bytes| store.put_model_blob(&CheckedBlob::hashing(bytes.clone())).unwrap());
            assert_eq!(store.blob(&hashes[0]).unwrap(), Some(large.clone()));
            hashes
        };
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.blob(&hashes[0]).unwrap(), Some(large));
        assert_eq!(store.blob(&hashes[1]).unwrap(), Some(small));
    }

    #[test]
    fn a_record_that_does_not_decode_names_its_table() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut batch = store.batch();
        batch.put(Table::Rounds, b"r", &"text").unwrap();
        batch.commit().unwrap();
        let error = store.get::<(u64, u64, u64)>(Table::Rounds, b"r").err().unwrap();
        assert!(error.to_string().contains("rounds"), "{error}");
    }
}
