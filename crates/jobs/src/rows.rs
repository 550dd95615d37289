//! Rows of input sets and labels, read from SDFS by range: a file's
//! header is parsed once (`idunno_ml::layout`), then only the 1 MiB
//! chunks that hold the rows asked for are read (this node's copy first,
//! each chunk verified: `Sdfs::read_chunks`), through a cache bounded by
//! bytes. What workers use for a query's rows, and training for a step's
//! samples of a set too large to keep whole.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use idunno_ml::Tensor;
use idunno_ml::layout::Layout;
use idunno_sdfs::{ChunkSums, Sdfs};
use idunno_state::FileVersion;

use crate::lru::ByteLru;

/// Input-set layouts kept at most (a few hundred bytes each).
const LAYOUTS: usize = 4096;

pub(crate) struct RowReader {
    /// Verified chunks by (BLAKE3, index).
    chunks: ByteLru<(String, u64), Bytes>,
    /// Where the rows of each file version are, and the version itself
    /// (holders, checksum).
    layouts: HashMap<(String, u64), (FileVersion, Layout)>,
}

impl RowReader {
    pub(crate) fn new(budget: usize) -> RowReader {
        RowReader { chunks: ByteLru::new(budget), layouts: HashMap::new() }
    }

    /// Bytes of chunks held.
    pub(crate) fn bytes(&self) -> usize {
        self.chunks.values().map(|(_, size)| size).sum()
    }

    /// The version `name` v`version` is and where its rows are: from its
    /// header, read once.
    pub(crate) async fn layout(
        &mut self,
        sdfs: &Arc<Sdfs>,
        name: &str,
        version: u64,
    ) -> Result<(FileVersion, Layout), String> {
        let key = (name.to_string(), version);
        if let Some(l) = self.layouts.get(&key) {
            return Ok(l.clone());
        }
        let what = |e: &dyn std::fmt::Display| format!("reading {name} v{version}: {e}");
        let v = sdfs.find(name, version).await.map_err(|e| what(&e))?;
        let head = v.size.min(idunno_ml::layout::HEADER_BYTES as u64);
        let prefix = sdfs.read_range(name, &v, 0, head).await.map_err(|e| what(&e))?;
        let layout = idunno_ml::layout::layout(&prefix, v.size).map_err(|e| format!("{name}: {e}"))?;
        if self.layouts.len() >= LAYOUTS {
            self.layouts.clear();
        }
        self.layouts.insert(key, (v.clone(), layout.clone()));
        Ok((v, layout))
    }

    /// Rows `start .. start + len` of `name` v`version`, reading `ahead`
    /// more chunks past them in the same request when they are not held.
    pub(crate) async fn rows(
        &mut self,
        sdfs: &Arc<Sdfs>,
        name: &str,
        version: u64,
        start: usize,
        len: usize,
        ahead: u64,
    ) -> Result<Tensor, String> {
        let (v, layout) = self.layout(sdfs, name, version).await?;
        if start.saturating_add(len) > layout.samples() {
            return Err(format!("inputs {start}..{} beyond {name} of {} samples", start + len, layout.samples()));
        }
        let bytes = layout.byte_range(start..start + len);
        let sums = self.sums(sdfs, name, &v).await?;
        let needed: Vec<u64> = sums.covering(bytes.start, bytes.end).collect();
        let held = self.fetch(sdfs, name, &v, &sums, &needed, ahead).await?;
        let mut data = Vec::with_capacity((bytes.end - bytes.start) as usize);
        copy_range(&sums, &held, bytes.start, bytes.end, &mut data)?;
        layout.decode(len, data).map_err(|e| format!("{name}: {e}"))
    }

    /// The rows `idx` (any order, repeats allowed) of `name` v`version`,
    /// in that order.
    pub(crate) async fn gather(
        &mut self,
        sdfs: &Arc<Sdfs>,
        name: &str,
        version: u64,
        idx: &[u32],
    ) -> Result<Tensor, String> {
        let (v, layout) = self.layout(sdfs, name, version).await?;
        if let Some(bad) = idx.iter().find(|i| **i as usize >= layout.samples()) {
            return Err(format!("sample {bad} beyond {name} of {} samples", layout.samples()));
        }
        let sums = self.sums(sdfs, name, &v).await?;
        let mut needed: Vec<u64> = idx
            .iter()
            .flat_map(|i| {
                let r = layout.byte_range(*i as usize..*i as usize + 1);
                sums.covering(r.start, r.end)
            })
            .collect();
        needed.sort_unstable();
        needed.dedup();
        let held = self.fetch(sdfs, name, &v, &sums, &needed, 0).await?;
        let mut data = Vec::with_capacity(idx.len() * layout.row_bytes() as usize);
        for i in idx {
            let r = layout.byte_range(*i as usize..*i as usize + 1);
            copy_range(&sums, &held, r.start, r.end, &mut data)?;
        }
        layout.decode(idx.len(), data).map_err(|e| format!("{name}: {e}"))
    }

    async fn sums(&self, sdfs: &Arc<Sdfs>, name: &str, v: &FileVersion) -> Result<Arc<ChunkSums>, String> {
        sdfs.chunk_sums(name, v).await.map_err(|e| format!("reading {name} v{}: {e}", v.version))
    }

    /// Chunks `needed` (sorted) of `v`: from the cache, the rest read in
    /// runs of consecutive chunks (the last run `ahead` chunks longer, up
    /// to a chunk already held), and cached.
    async fn fetch(
        &mut self,
        sdfs: &Arc<Sdfs>,
        name: &str,
        v: &FileVersion,
        sums: &ChunkSums,
        needed: &[u64],
        ahead: u64,
    ) -> Result<HashMap<u64, Bytes>, String> {
        let key = |i: u64| (v.blake3.clone(), i);
        let mut held = HashMap::with_capacity(needed.len());
        let mut missing = Vec::new();
        for &i in needed {
            match self.chunks.get(&key(i)) {
                Some(b) => {
                    held.insert(i, b.clone());
                }
                None => missing.push(i),
            }
        }
        let mut runs: Vec<std::ops::Range<u64>> = Vec::new();
        for i in missing {
            match runs.last_mut() {
                Some(r) if r.end == i => r.end += 1,
                _ => runs.push(i..i + 1),
            }
        }
        if let Some(last) = runs.last_mut() {
            let limit = (last.end + ahead).min(sums.count());
            while last.end < limit && !self.chunks.contains(&key(last.end)) {
                last.end += 1;
            }
        }
        for run in runs {
            let read = sdfs.read_chunks(name, v, run.clone()).await.map_err(|e| {
                // The holders may have changed since: ask again next time.
                self.layouts.remove(&(name.to_string(), v.version));
                format!("reading {name} v{}: {e}", v.version)
            })?;
            for (i, chunk) in run.zip(read) {
                if needed.binary_search(&i).is_ok() {
                    held.insert(i, chunk.clone());
                }
                let size = chunk.len();
                self.chunks.insert(key(i), chunk, size);
            }
        }
        Ok(held)
    }
}

/// Append bytes `start..end` of the file to `out`, from its chunks in
/// `held`.
fn copy_range(
    sums: &ChunkSums,
    held: &HashMap<u64, Bytes>,
    start: u64,
    end: u64,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    for i in sums.covering(start, end) {
        let chunk = held.get(&i).ok_or_else(|| format!("chunk {i} was not read"))?;
        let (at, len) = sums.span(i);
        let from = start.saturating_sub(at).min(len as u64) as usize;
        let to = (end - at).min(len as u64) as usize;
        out.extend_from_slice(chunk.get(from..to).ok_or_else(|| format!("chunk {i} is short"))?);
    }
    Ok(())
}
