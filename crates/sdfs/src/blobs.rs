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
/// A power of two times BLAKE3's own 1 KiB chunk, so every chunk is a whole
/// subtree of the content's BLAKE3 tree.
pub const CHUNK: usize = 1 << 20;

/// The BLAKE3 chaining value of chunk `index`: what `.chunks` stores, and
/// what the content's BLAKE3 is merged from. Computing it is the only hash
/// pass over the bytes on a replica: the whole-content hash comes from
/// merging these, not from hashing again.
pub fn chunk_cv(index: u64, data: &[u8]) -> [u8; 32] {
    use blake3::hazmat::HasherExt;
    let mut h = blake3::Hasher::new();
    h.set_input_offset(index * CHUNK as u64);
    h.update(data);
    h.finalize_non_root()
}

/// The BLAKE3 of content of two or more chunks, from their chaining values,
/// merged the way BLAKE3 builds its tree (left subtree: the largest power
/// of two of chunks that leaves some for the right).
pub fn root_from_cvs(cvs: &[[u8; 32]]) -> blake3::Hash {
    use blake3::hazmat::{Mode, merge_subtrees_non_root, merge_subtrees_root};
    fn subtree(cvs: &[[u8; 32]]) -> [u8; 32] {
        if cvs.len() == 1 {
            return cvs[0];
        }
        let k = split(cvs.len());
        merge_subtrees_non_root(&subtree(&cvs[..k]), &subtree(&cvs[k..]), Mode::Hash)
    }
    fn split(n: usize) -> usize {
        // The largest power of two strictly below n (n >= 2).
        1 << (usize::BITS - 1 - (n - 1).leading_zeros())
    }
    assert!(cvs.len() >= 2, "content of one chunk hashes as a root directly");
    let k = split(cvs.len());
    merge_subtrees_root(&subtree(&cvs[..k]), &subtree(&cvs[k..]), Mode::Hash)
}

/// What every chunk of a blob must hash to, trusted because it was
/// derived from the blob's name: chaining values from any holder are
/// accepted only if they merge into the blob's BLAKE3. A range of the
/// blob is then verified chunk by chunk, without reading the rest.
#[derive(Clone, Debug)]
pub struct ChunkSums {
    size: u64,
    root: blake3::Hash,
    cvs: Vec<[u8; 32]>,
}

impl ChunkSums {
    /// Chunks of a blob of `size` bytes.
    pub fn count_for(size: u64) -> u64 {
        size.div_ceil(CHUNK as u64)
    }

    /// The sums of blob `hash` of `size` bytes, from chaining values said
    /// to be its chunks' (unchecked: from a disk or another node). A blob
    /// of one chunk needs none: that chunk hashes to the blob's name.
    pub fn verified(hash: &str, size: u64, cvs: Vec<[u8; 32]>) -> Result<ChunkSums, BlobError> {
        let root = blake3::Hash::from_hex(hash).map_err(|_| BlobError::Missing(hash.to_string()))?;
        let n = Self::count_for(size);
        let corrupt = || BlobError::Corrupt { hash: hash.to_string(), chunk: 0 };
        if n >= 2 && (cvs.len() as u64 != n || root_from_cvs(&cvs) != root) {
            return Err(corrupt());
        }
        Ok(ChunkSums { size, root, cvs: if n >= 2 { cvs } else { Vec::new() } })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Chunks in the blob.
    pub fn count(&self) -> u64 {
        Self::count_for(self.size)
    }

    /// Where chunk `index` starts, and its length.
    pub fn span(&self, index: u64) -> (u64, usize) {
        let start = index * CHUNK as u64;
        (start, self.size.saturating_sub(start).min(CHUNK as u64) as usize)
    }

    /// The chunks holding bytes `start..end`.
    pub fn covering(&self, start: u64, end: u64) -> std::ops::Range<u64> {
        if start >= end {
            return 0..0;
        }
        start / CHUNK as u64..end.min(self.size).div_ceil(CHUNK as u64)
    }

    /// Whether `data` is chunk `index` of the blob.
    pub fn check(&self, index: u64, data: &[u8]) -> bool {
        if data.len() != self.span(index).1 {
            return false;
        }
        match self.cvs.get(index as usize) {
            Some(cv) => chunk_cv(index, data) == *cv,
            None => index == 0 && self.count() == 1 && blake3::hash(data) == self.root,
        }
    }

    /// Bytes these sums take in memory.
    pub fn bytes(&self) -> usize {
        self.cvs.len() * 32 + std::mem::size_of::<Self>()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("no blob {0} on this node")]
    Missing(String),
    /// The bytes on disk do not match their checksum: this replica is bad.
    #[error("blob {hash} is corrupt at chunk {chunk}")]
    Corrupt { hash: String, chunk: usize },
    #[error("blob store {path}: {source}")]
    Io { path: String, source: std::io::Error },
    /// A copy of a blob hashed to something else; nothing was stored.
    #[error("the copy of blob {expected} is blob {got}; nothing was stored")]
    Mismatch { expected: String, got: String },
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

fn hex32(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
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
            first: None,
            cvs: Vec::new(),
            sums: Vec::new(),
            pending: Vec::with_capacity(CHUNK),
            size: 0,
            installed: false,
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

    /// The chaining values of blob `hash`'s chunks, as this node's
    /// checksum file gives them (to be checked: [`ChunkSums::verified`]).
    pub async fn chunk_cvs(&self, hash: &str) -> Result<Vec<[u8; 32]>, BlobError> {
        if !self.has(hash) {
            return Err(BlobError::Missing(hash.to_string()));
        }
        let sums_path = self.sums_path(hash);
        let text = tokio::fs::read(&sums_path).await.map_err(io(&sums_path))?;
        let corrupt = || BlobError::Corrupt { hash: hash.to_string(), chunk: 0 };
        let sums: Vec<ChunkSum> = serde_json::from_slice(&text).map_err(|_| corrupt())?;
        sums.iter().map(|s| blake3::Hash::from_hex(&s.blake3).map(|h| *h.as_bytes()).map_err(|_| corrupt())).collect()
    }

    /// Chunk `index` of blob `hash`, checked against `sums`.
    pub async fn read_chunk(&self, hash: &str, sums: &ChunkSums, index: u64) -> Result<Bytes, BlobError> {
        if !self.has(hash) {
            return Err(BlobError::Missing(hash.to_string()));
        }
        let (start, len) = sums.span(index);
        let path = self.blob_path(hash);
        let mut file = File::open(&path).await.map_err(io(&path))?;
        file.seek(SeekFrom::Start(start)).await.map_err(io(&path))?;
        let mut buf = vec![0u8; len];
        let corrupt = BlobError::Corrupt { hash: hash.to_string(), chunk: index as usize };
        match file.read_exact(&mut buf).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(corrupt),
            Err(e) => return Err(io(&path)(e)),
        }
        if !sums.check(index, &buf) {
            return Err(corrupt);
        }
        Ok(Bytes::from(buf))
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
    /// The root hash of the first chunk, needed only if it is the only one.
    first: Option<blake3::Hash>,
    cvs: Vec<[u8; 32]>,
    sums: Vec<ChunkSum>,
    /// Bytes of the chunk being filled.
    pending: Vec<u8>,
    size: u64,
    /// The blob is in place: dropping the writer must not remove it.
    installed: bool,
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
        let index = self.cvs.len() as u64;
        let cv = chunk_cv(index, &self.pending);
        if index == 0 && self.pending.len() <= CHUNK {
            // Only used if no second chunk follows; a second hash of at
            // most one chunk per blob.
            self.first = Some(blake3::hash(&self.pending));
        }
        self.cvs.push(cv);
        self.sums.push(ChunkSum { len: self.pending.len() as u64, blake3: hex32(&cv) });
        self.size += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Make the blob durable and visible; returns its hash and size.
    pub async fn finish(mut self) -> Result<(String, u64), BlobError> {
        let hash = self.seal().await?;
        self.install(&hash).await?;
        Ok((hash, self.size))
    }

    /// Like [`Self::finish`], for a copy of blob `expected` (repair): bytes
    /// that are not that blob are discarded before anything is stored, so
    /// a bad copy never touches a blob already here.
    pub async fn finish_as(mut self, expected: &str) -> Result<u64, BlobError> {
        let hash = self.seal().await?;
        if hash != expected {
            return Err(BlobError::Mismatch { expected: expected.to_string(), got: hash });
        }
        self.install(&hash).await?;
        Ok(self.size)
    }

    /// Write the last chunk and fsync; the content's hash.
    async fn seal(&mut self) -> Result<String, BlobError> {
        self.flush_chunk().await?;
        let mut file = self.file.take().ok_or_else(|| BlobError::Missing("writer closed".into()))?;
        file.flush().await.map_err(io(&self.tmp))?;
        file.sync_all().await.map_err(io(&self.tmp))?;
        drop(file);
        Ok(match self.cvs.len() {
            0 => blake3::hash(b""),
            1 => self.first.unwrap_or_else(|| blake3::hash(b"")),
            _ => root_from_cvs(&self.cvs),
        }
        .to_hex()
        .to_string())
    }

    /// Move the sealed blob into place under `hash`.
    async fn install(&mut self, hash: &str) -> Result<(), BlobError> {
        if self.store.has(hash) {
            // Same content already stored: keep the one we have (the
            // temporary file goes on drop).
            return Ok(());
        }
        let sums_path = self.store.sums_path(hash);
        let sums_tmp = self.sums_tmp();
        let text = serde_json::to_vec(&self.sums).map_err(|e| io(&sums_path)(std::io::Error::other(e)))?;
        let mut f = File::create(&sums_tmp).await.map_err(io(&sums_tmp))?;
        f.write_all(&text).await.map_err(io(&sums_tmp))?;
        f.sync_all().await.map_err(io(&sums_tmp))?;
        // The checksums first: a blob without them is invisible.
        tokio::fs::rename(&sums_tmp, &sums_path).await.map_err(io(&sums_path))?;
        let blob = self.store.blob_path(hash);
        if let Err(e) = tokio::fs::rename(&self.tmp, &blob).await {
            // Checksums without their blob would make a blob of this hash
            // (written later) look corrupt.
            let _ = std::fs::remove_file(&sums_path);
            return Err(io(&blob)(e));
        }
        self.installed = true;
        // Persist the renames themselves.
        if let Ok(d) = std::fs::File::open(self.store.root.join("blobs")) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn sums_tmp(&self) -> PathBuf {
        self.tmp.with_extension("chunks")
    }
}

impl Drop for BlobWriter {
    /// Whatever happened before the blob was installed (an interrupted
    /// stream, a full disk during a write, an fsync or a rename that
    /// failed, a copy that did not verify), nothing is left behind.
    fn drop(&mut self) {
        if !self.installed {
            let _ = std::fs::remove_file(&self.tmp);
            let _ = std::fs::remove_file(self.sums_tmp());
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
        if hex32(&chunk_cv(self.chunk as u64, &buf)) != sum.blake3 {
            return Err(corrupt);
        }
        self.chunk += 1;
        let skip = std::mem::take(&mut self.skip);
        Ok(Some(Bytes::from(buf).slice(skip..)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        let mut x = 0x2545f4914f6cdd1du64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Merged chunk chaining values equal BLAKE3 of the whole content, for
    /// every tree shape: 2..9 chunks (powers of two and not), last chunk
    /// full, one byte, a BLAKE3 chunk and a bit.
    #[test]
    fn merged_cvs_are_the_content_hash() {
        for n in 2..=9usize {
            for last in [CHUNK, 1, 1024, 1025, CHUNK - 1] {
                let len = (n - 1) * CHUNK + last;
                let d = data(len);
                let cvs: Vec<[u8; 32]> = d.chunks(CHUNK).enumerate().map(|(i, c)| chunk_cv(i as u64, c)).collect();
                assert_eq!(root_from_cvs(&cvs), blake3::hash(&d), "{n} chunks, last {last} bytes");
            }
        }
    }

    #[tokio::test]
    async fn stored_blobs_are_named_by_their_blake3_and_read_back_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        for len in [0, 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let d = data(len);
            let mut w = store.writer().await.unwrap();
            for part in d.chunks(100_000) {
                w.write(part).await.unwrap();
            }
            let (hash, size) = w.finish().await.unwrap();
            assert_eq!((hash.clone(), size), (blake3::hash(&d).to_hex().to_string(), len as u64), "{len}");
            for offset in [0, len / 3, len] {
                let mut r = store.reader(&hash, offset as u64).await.unwrap();
                let mut back = Vec::new();
                while let Some(c) = r.next().await.unwrap() {
                    back.extend_from_slice(&c);
                }
                assert_eq!(back, d[offset..], "{len} from {offset}");
            }
        }
        assert!(std::fs::read_dir(dir.path().join("tmp")).unwrap().next().is_none());
    }

    /// Chunk checksums are believed only if they merge into the blob's
    /// name; then each chunk is checked alone, and a range maps to the
    /// chunks that hold it.
    #[test]
    fn chunk_sums_are_checked_against_the_name_and_check_each_chunk() {
        let d = data(2 * CHUNK + 10);
        let hash = blake3::hash(&d).to_hex().to_string();
        let cvs: Vec<[u8; 32]> = d.chunks(CHUNK).enumerate().map(|(i, c)| chunk_cv(i as u64, c)).collect();
        let sums = ChunkSums::verified(&hash, d.len() as u64, cvs.clone()).unwrap();
        assert!(sums.check(2, &d[2 * CHUNK..]));
        assert!(!sums.check(1, &d[..CHUNK]), "chunk 0's bytes are not chunk 1");
        assert_eq!(sums.covering(CHUNK as u64 - 1, CHUNK as u64 + 1), 0..2);
        assert_eq!(sums.covering(5, 5), 0..0);
        assert_eq!(sums.covering(2 * CHUNK as u64, u64::MAX), 2..3);
        let mut forged = cvs.clone();
        forged[1][0] ^= 1;
        assert!(ChunkSums::verified(&hash, d.len() as u64, forged).is_err());
        assert!(ChunkSums::verified(&hash, d.len() as u64, cvs[..2].to_vec()).is_err());
        // One chunk: checked against the name itself.
        let small = &d[..100];
        let one = ChunkSums::verified(blake3::hash(small).to_hex().as_str(), 100, Vec::new()).unwrap();
        assert!(one.check(0, small) && !one.check(0, &d[1..101]));
    }

    fn tmp_is_empty(root: &Path) -> bool {
        std::fs::read_dir(root.join("tmp")).unwrap().next().is_none()
    }

    #[tokio::test]
    async fn a_copy_that_does_not_verify_leaves_the_blob_already_held() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = data(CHUNK + 5);
        let mut w = store.writer().await.unwrap();
        w.write(&d).await.unwrap();
        let (held, _) = w.finish().await.unwrap();

        // A "copy" of the held blob that is in fact the same bytes: kept
        // once, and the held one is untouched.
        let mut w = store.writer().await.unwrap();
        w.write(&d).await.unwrap();
        assert_eq!(w.finish_as(&held).await.unwrap(), d.len() as u64);
        // A copy that turns out to be other bytes is refused, and the held
        // blob (with the same name as what was asked for) stays.
        let mut w = store.writer().await.unwrap();
        w.write(b"other bytes").await.unwrap();
        let err = w.finish_as(&held).await.unwrap_err();
        assert!(matches!(err, BlobError::Mismatch { .. }), "{err}");
        let mut r = store.reader(&held, 0).await.unwrap();
        let mut back = Vec::new();
        while let Some(c) = r.next().await.unwrap() {
            back.extend_from_slice(&c);
        }
        assert_eq!(back, d);
        assert!(!store.has(blake3::hash(b"other bytes").to_hex().as_ref()));
        assert!(tmp_is_empty(dir.path()));
    }

    #[tokio::test]
    async fn a_write_that_fails_at_the_end_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let mut w = store.writer().await.unwrap();
        w.write(&data(3 * CHUNK)).await.unwrap();
        // The folder the blob is renamed into is gone: installing fails
        // after the data was written and fsync'd.
        std::fs::remove_dir_all(dir.path().join("blobs")).unwrap();
        assert!(w.finish().await.is_err());
        assert!(tmp_is_empty(dir.path()), "{:?}", std::fs::read_dir(dir.path().join("tmp")).unwrap().count());
    }
}
