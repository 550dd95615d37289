//! One node's replicas on its own disk. A blob is file content, named by
//! its BLAKE3: `blobs/<hash>` holds the bytes, `blobs/<hash>.chunks` the
//! length and BLAKE3 of every chunk, so a corrupt chunk is caught before it
//! is served. A write goes to `tmp/` first and is renamed into place only
//! once it is complete and fsync'd: a reader never sees a partial blob, and
//! an interrupted write leaves only a temporary file (removed on drop, and
//! swept at start-up).
//!
//! Knows nothing of names, versions or the network.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Content is cut into chunks of this size (the last may be shorter).
pub const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("no blob {0} on this node")]
    Missing(String),
    /// The bytes on disk do not match their checksum: this replica is bad.
    #[error("blob {hash} is corrupt at chunk {chunk}")]
    Corrupt { hash: String, chunk: usize },
    #[error("blob store {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ChunkSum {
    len: u64,
    blake3: String,
}

#[derive(Clone)]
pub struct BlobStore {
    root: PathBuf,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> BlobError + '_ {
    move |source| BlobError::Io { path: path.display().to_string(), source }
}

fn valid_hash(h: &str) -> bool {
    h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl BlobStore {
    /// Open (or create) the store under `root`, sweeping temporary files
    /// left by writes that were interrupted by a crash.
    pub fn open(root: &Path) -> Result<BlobStore, BlobError> {
        for sub in ["blobs", "tmp"] {
            std::fs::create_dir_all(root.join(sub)).map_err(io(root))?;
        }
        if let Ok(entries) = std::fs::read_dir(root.join("tmp")) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(BlobStore { root: root.to_path_buf() })
    }

    fn blob_path(&self, hash: &str) -> PathBuf {
        self.root.join("blobs").join(hash)
    }

    fn sums_path(&self, hash: &str) -> PathBuf {
        self.root.join("blobs").join(format!("{hash}.chunks"))
    }

    pub fn has(&self, hash: &str) -> bool {
        valid_hash(hash) && self.blob_path(hash).exists() && self.sums_path(hash).exists()
    }

    /// Start writing a new blob.
    pub async fn writer(&self) -> Result<BlobWriter, BlobError> {
        let tmp = self.root.join("tmp").join(format!("{:016x}", rand::random::<u64>()));
        let file = File::create(&tmp).await.map_err(io(&tmp))?;
        Ok(BlobWriter {
            store: self.clone(),
            file: Some(file),
            tmp,
            hasher: blake3::Hasher::new(),
            sums: Vec::new(),
            pending: Vec::with_capacity(CHUNK),
            size: 0,
        })
    }

    /// Read blob `hash` from `offset`, chunk by chunk, each verified.
    pub async fn reader(&self, hash: &str, offset: u64) -> Result<BlobReader, BlobError> {
        if !self.has(hash) {
            return Err(BlobError::Missing(hash.to_string()));
        }
        let sums_path = self.sums_path(hash);
        let text = tokio::fs::read(&sums_path).await.map_err(io(&sums_path))?;
        let sums: Vec<ChunkSum> =
            serde_json::from_slice(&text).map_err(|_| BlobError::Corrupt { hash: hash.to_string(), chunk: 0 })?;
        let path = self.blob_path(hash);
        let mut file = File::open(&path).await.map_err(io(&path))?;
        // Start at the chunk that holds `offset`; skip into it after verifying.
        let mut chunk = 0;
        let mut start = 0u64;
        while chunk < sums.len() && start + sums[chunk].len <= offset {
            start += sums[chunk].len;
            chunk += 1;
        }
        file.seek(SeekFrom::Start(start)).await.map_err(io(&path))?;
        Ok(BlobReader { hash: hash.to_string(), file, sums, chunk, skip: (offset - start) as usize, path })
    }

    /// Every blob held here, with its size.
    pub fn list(&self) -> Result<Vec<(String, u64)>, BlobError> {
        let dir = self.root.join("blobs");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if valid_hash(&name) {
                let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                out.push((name, size));
            }
        }
        out.sort();
        Ok(out)
    }

    /// How long ago the blob was stored.
    pub fn age(&self, hash: &str) -> Option<std::time::Duration> {
        let modified = std::fs::metadata(self.blob_path(hash)).ok()?.modified().ok()?;
        modified.elapsed().ok()
    }

    pub fn remove(&self, hash: &str) -> Result<(), BlobError> {
        if !valid_hash(hash) {
            return Err(BlobError::Missing(hash.to_string()));
        }
        for p in [self.blob_path(hash), self.sums_path(hash)] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&p)(e)),
            }
        }
        Ok(())
    }
}

/// A blob being written. Dropped unfinished, it leaves nothing behind.
pub struct BlobWriter {
    store: BlobStore,
    file: Option<File>,
    tmp: PathBuf,
    hasher: blake3::Hasher,
    sums: Vec<ChunkSum>,
    /// Bytes of the chunk being filled.
    pending: Vec<u8>,
    size: u64,
}

impl BlobWriter {
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), BlobError> {
        while !data.is_empty() {
            let take = (CHUNK - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == CHUNK {
                self.flush_chunk().await?;
            }
        }
        Ok(())
    }

    async fn flush_chunk(&mut self) -> Result<(), BlobError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let file = self.file.as_mut().ok_or_else(|| BlobError::Missing("writer closed".into()))?;
        file.write_all(&self.pending).await.map_err(io(&self.tmp))?;
        self.hasher.update(&self.pending);
        self.sums.push(ChunkSum {
            len: self.pending.len() as u64,
            blake3: blake3::hash(&self.pending).to_hex().to_string(),
        });
        self.size += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Make the blob durable and visible; returns its hash and size.
    pub async fn finish(mut self) -> Result<(String, u64), BlobError> {
        self.flush_chunk().await?;
        let mut file = self.file.take().ok_or_else(|| BlobError::Missing("writer closed".into()))?;
        file.flush().await.map_err(io(&self.tmp))?;
        file.sync_all().await.map_err(io(&self.tmp))?;
        drop(file);
        let hash = self.hasher.finalize().to_hex().to_string();
        let size = self.size;
        if self.store.has(&hash) {
            // Same content already stored: keep the one we have.
            let _ = tokio::fs::remove_file(&self.tmp).await;
            return Ok((hash, size));
        }
        let sums_path = self.store.sums_path(&hash);
        let sums_tmp = self.tmp.with_extension("chunks");
        let text = serde_json::to_vec(&self.sums).map_err(|e| io(&sums_path)(std::io::Error::other(e)))?;
        let mut f = File::create(&sums_tmp).await.map_err(io(&sums_tmp))?;
        f.write_all(&text).await.map_err(io(&sums_tmp))?;
        f.sync_all().await.map_err(io(&sums_tmp))?;
        // The checksums first: a blob without them is invisible.
        tokio::fs::rename(&sums_tmp, &sums_path).await.map_err(io(&sums_path))?;
        let blob = self.store.blob_path(&hash);
        tokio::fs::rename(&self.tmp, &blob).await.map_err(io(&blob))?;
        // Persist the renames themselves.
        if let Ok(d) = std::fs::File::open(self.store.root.join("blobs")) {
            let _ = d.sync_all();
        }
        Ok((hash, size))
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Verified chunks of a stored blob.
pub struct BlobReader {
    hash: String,
    file: File,
    sums: Vec<ChunkSum>,
    chunk: usize,
    /// Bytes to drop from the front of the first chunk (resume offset).
    skip: usize,
    path: PathBuf,
}

impl BlobReader {
    /// The next chunk, or `None` at the end. A chunk that does not match
    /// its checksum is an error, never data.
    pub async fn next(&mut self) -> Result<Option<Bytes>, BlobError> {
        let Some(sum) = self.sums.get(self.chunk) else { return Ok(None) };
        let mut buf = vec![0u8; sum.len as usize];
        let corrupt = BlobError::Corrupt { hash: self.hash.clone(), chunk: self.chunk };
        match self.file.read_exact(&mut buf).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(corrupt),
            Err(e) => return Err(io(&self.path)(e)),
        }
        if blake3::hash(&buf).to_hex().as_str() != sum.blake3 {
            return Err(corrupt);
        }
        self.chunk += 1;
        let skip = std::mem::take(&mut self.skip);
        Ok(Some(Bytes::from(buf).slice(skip..)))
    }
}
