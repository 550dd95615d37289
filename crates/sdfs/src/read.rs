//! Reading files, in process: the namespace questions (`find`, `stat`,
//! `list`, answered by read index from this node's state) and the bytes
//! of a version (`open`, `get`), streamed from its holders, this node
//! first, resuming at the same offset on the next holder when one fails.
//! Copies between nodes for repair (`fetch_blob`) are here too.

use std::sync::Arc;

use bytes::Bytes;
use idunno_coordinator::store::SmData;
use idunno_rpc::limits::{STREAM_IDLE, next_within};
use idunno_rpc::v1;
use idunno_state::{FileCommand, FileVersion};
use tokio::sync::mpsc;

use crate::error::{SdfsError, check_name};
use crate::{BlobError, ChunkSums, Sdfs};

/// Names per page of [`Sdfs::list`], by default and at most.
pub const LIST_PAGE: usize = 10_000;
pub const LIST_PAGE_MAX: usize = 100_000;

/// A file's latest version, as [`Sdfs::list`] names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    pub version: u64,
    pub size: u64,
}

/// A version being read, piece by piece: memory stays bounded whatever
/// its size. The pieces add up to `version.size` (or the range asked
/// for) and were checked against its BLAKE3 (or, for a range, each chunk
/// against the chunk checksums that merge into it) by the time `next`
/// says the end.
pub struct Download {
    pub version: FileVersion,
    /// The bytes sent: all of the version, or the range asked for.
    pub range: std::ops::Range<u64>,
    rx: mpsc::Receiver<Result<Bytes, SdfsError>>,
}

impl Download {
    /// The next piece; `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Bytes>, SdfsError> {
        self.rx.recv().await.transpose()
    }

    /// The pieces as a stream (an error ends it).
    pub fn into_stream(self) -> tokio_stream::wrappers::ReceiverStream<Result<Bytes, SdfsError>> {
        tokio_stream::wrappers::ReceiverStream::new(self.rx)
    }
}

/// Where a read's bytes go, and how far it got (so the next holder can go
/// on from there).
struct Relay {
    offset: u64,
    hasher: blake3::Hasher,
    tx: mpsc::Sender<Result<Bytes, SdfsError>>,
}

impl Relay {
    /// Pass one chunk on; false once the reader has gone away, or has
    /// taken nothing for [`STREAM_IDLE`].
    async fn forward(&mut self, chunk: Bytes) -> bool {
        self.hasher.update(&chunk);
        self.offset += chunk.len() as u64;
        matches!(tokio::time::timeout(STREAM_IDLE, self.tx.send(Ok(chunk))).await, Ok(Ok(())))
    }
}

impl Sdfs {
    /// The namespace as of now (linearizable), or as this node has it
    /// (`local`: may lag).
    async fn read_state(&self, local: bool) -> Result<Arc<SmData>, SdfsError> {
        if local {
            return Ok(self.coordinator.local_state());
        }
        Ok(self.coordinator.read().await?.0)
    }

    /// Version `version` (0: the newest) of `name`, as of now.
    pub async fn find(&self, name: &str, version: u64) -> Result<FileVersion, SdfsError> {
        let versions = self.stat(name, false).await?;
        let found = if version == 0 { versions.first() } else { versions.iter().find(|v| v.version == version) };
        found.cloned().ok_or_else(|| {
            let have: Vec<String> = versions.iter().rev().map(|v| v.version.to_string()).collect();
            SdfsError::NotFound(format!("file {name} has no version {version} (kept: {})", have.join(", ")))
        })
    }

    /// The versions of `name` kept, newest first.
    pub async fn stat(&self, name: &str, local: bool) -> Result<Vec<FileVersion>, SdfsError> {
        check_name(name)?;
        let data = self.read_state(local).await?;
        let entry = data.state.namespace.files.get(name).filter(|e| !e.versions.is_empty());
        let entry = entry.ok_or_else(|| SdfsError::NotFound(format!("no such file: {name}")))?;
        Ok(entry.versions.iter().rev().cloned().collect())
    }

    /// Up to `limit` files (0: [`LIST_PAGE`], at most [`LIST_PAGE_MAX`])
    /// whose names start with `prefix`, in name order after `after`, and
    /// the name to go on after if there are more (empty: no more).
    pub async fn list(
        &self,
        prefix: &str,
        after: &str,
        limit: usize,
        local: bool,
    ) -> Result<(Vec<Listed>, String), SdfsError> {
        use std::ops::Bound;
        let limit = if limit == 0 { LIST_PAGE } else { limit.min(LIST_PAGE_MAX) };
        let data = self.read_state(local).await?;
        let from = if after.is_empty() || after < prefix {
            Bound::Included(prefix.to_string())
        } else {
            Bound::Excluded(after.to_string())
        };
        let mut files: Vec<Listed> = Vec::new();
        // From the prefix on, in name order, until a name without it.
        for (name, e) in data.state.namespace.files.range((from, Bound::Unbounded)) {
            if !name.starts_with(prefix) {
                break;
            }
            let Some(v) = e.versions.last() else { continue };
            if files.len() == limit {
                let next = files.last().map_or_else(String::new, |f| f.name.clone());
                return Ok((files, next));
            }
            files.push(Listed { name: name.clone(), version: v.version, size: v.size });
        }
        Ok((files, String::new()))
    }

    /// Start reading version `version` (0: the newest) of `name`.
    pub async fn open(self: &Arc<Self>, name: &str, version: u64) -> Result<Download, SdfsError> {
        let v = self.find(name, version).await?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(self.clone().send_version(name.to_string(), v.clone(), tx));
        Ok(Download { range: 0..v.size, version: v, rx })
    }

    /// Start reading bytes `start..end` (`end` absent: to the end) of
    /// version `version` (0: the newest) of `name`: only the chunks that
    /// hold them are read, each verified.
    pub async fn open_range(
        self: &Arc<Self>,
        name: &str,
        version: u64,
        start: u64,
        end: Option<u64>,
    ) -> Result<Download, SdfsError> {
        let v = self.find(name, version).await?;
        let end = end.unwrap_or(v.size);
        if start > end || end > v.size {
            return Err(SdfsError::Invalid(format!(
                "range {start}:{end} is not within {name} version {} ({} bytes)",
                v.version, v.size
            )));
        }
        let (tx, rx) = mpsc::channel(4);
        let sdfs = self.clone();
        let file = (name.to_string(), v.clone());
        tokio::spawn(async move {
            let (name, v) = file;
            let sent = sdfs.send_range(&name, &v, start, end, &tx).await;
            if let Err(e) = sent {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(Download { range: start..end, version: v, rx })
    }

    /// Bytes `start..end` of `v` (`name`), whole: for ranges a layer keeps
    /// in memory (a query's rows, a file's header).
    pub async fn read_range(&self, name: &str, v: &FileVersion, start: u64, end: u64) -> Result<Vec<u8>, SdfsError> {
        let mut out = Vec::with_capacity(end.saturating_sub(start).min(1 << 26) as usize);
        self.for_range(name, v, start, end, |piece| {
            out.extend_from_slice(&piece);
            std::future::ready(true)
        })
        .await?;
        Ok(out)
    }

    /// Verified chunks `chunks` of `v` (`name`), in order: for a layer
    /// that caches chunks.
    pub async fn read_chunks(
        &self,
        name: &str,
        v: &FileVersion,
        chunks: std::ops::Range<u64>,
    ) -> Result<Vec<Bytes>, SdfsError> {
        let sums = self.chunk_sums(name, v).await?;
        let mut out = Vec::with_capacity(chunks.end.saturating_sub(chunks.start).min(1 << 16) as usize);
        self.read_verified(name, v, &sums, chunks, |_, chunk| {
            out.push(chunk);
            std::future::ready(true)
        })
        .await?;
        Ok(out)
    }

    /// Send bytes `start..end` of `v` to `tx`, from its verified chunks.
    async fn send_range(
        &self,
        name: &str,
        v: &FileVersion,
        start: u64,
        end: u64,
        tx: &mpsc::Sender<Result<Bytes, SdfsError>>,
    ) -> Result<(), SdfsError> {
        self.for_range(name, v, start, end, |piece| async move {
            matches!(tokio::time::timeout(STREAM_IDLE, tx.send(Ok(piece))).await, Ok(Ok(())))
        })
        .await
    }

    /// Give bytes `start..end` of `v` to `take` in order, in pieces cut
    /// from its verified chunks (it answers false once it wants no more).
    async fn for_range<F, Fut>(
        &self,
        name: &str,
        v: &FileVersion,
        start: u64,
        end: u64,
        mut take: F,
    ) -> Result<(), SdfsError>
    where
        F: FnMut(Bytes) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        if start >= end {
            return Ok(());
        }
        if end > v.size {
            return Err(SdfsError::Invalid(format!("range {start}:{end} is beyond {name}'s {} bytes", v.size)));
        }
        let sums = self.chunk_sums(name, v).await?;
        let chunks = sums.covering(start, end);
        self.read_verified(name, v, &sums, chunks, |index, chunk| {
            let (at, len) = sums.span(index);
            let from = start.saturating_sub(at).min(len as u64) as usize;
            let to = (end - at).min(len as u64) as usize;
            take(chunk.slice(from..to))
        })
        .await
    }

    /// The checksums of `v`'s chunks, from this node's copy if it holds
    /// one, else from a holder; checked against `v`'s BLAKE3 either way,
    /// and kept for the next range.
    pub async fn chunk_sums(&self, name: &str, v: &FileVersion) -> Result<Arc<ChunkSums>, SdfsError> {
        if let Some(s) = self.sums_cache.get(&v.blake3) {
            return Ok(s);
        }
        let n = ChunkSums::count_for(v.size);
        if n < 2 {
            let s = Arc::new(ChunkSums::verified(&v.blake3, v.size, Vec::new())?);
            return Ok(s);
        }
        let mut holders = v.replicas.clone();
        holders.sort_by_key(|h| *h != self.me);
        let mut last = SdfsError::Unavailable(format!("{name} version {} has no holder", v.version));
        for h in holders {
            let sums = if h == self.me {
                let local = self.store.chunk_cvs(&v.blake3).await;
                local
                    .and_then(|cvs| ChunkSums::verified(&v.blake3, v.size, cvs))
                    .map_err(|e| self.on_local_error(&v.blake3, e))
            } else {
                let cvs = self.remote_cvs(h, &v.blake3, n).await;
                cvs.and_then(|cvs| Ok(ChunkSums::verified(&v.blake3, v.size, cvs)?))
            };
            match sums {
                Ok(sums) => {
                    let sums = Arc::new(sums);
                    self.sums_cache.insert(v.blake3.clone(), sums.clone());
                    return Ok(sums);
                }
                Err(e) => {
                    tracing::warn!(holder = h, %name, version = v.version, error = %e, "chunk checksums unreadable; trying the next holder");
                    if matches!(e, SdfsError::DataLoss(_)) {
                        self.metrics.corrupt_replicas.inc();
                        self.forget_replica(name, v, h).await;
                    }
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn remote_cvs(&self, node: u64, hash: &str, n: u64) -> Result<Vec<[u8; 32]>, SdfsError> {
        let addr = self.addr_of(node).ok_or_else(|| SdfsError::Unavailable(format!("node {node} has no address")))?;
        let mut client = self.peer(&addr).map_err(SdfsError::Unavailable)?;
        let mut cvs = Vec::with_capacity(n.min(1 << 24) as usize);
        while (cvs.len() as u64) < n {
            let req = v1::BlobChunksRequest { blake3: hash.to_string(), first: cvs.len() as u64, count: 0 };
            let reply = client.blob_chunks(req).await?.into_inner();
            let page = reply.cvs.chunks_exact(32);
            if reply.chunks != n || page.len() == 0 || !page.remainder().is_empty() {
                return Err(SdfsError::DataLoss(format!(
                    "node {node} gave chunk checksums that are not blob {hash}'s"
                )));
            }
            cvs.extend(page.map(|c| <[u8; 32]>::try_from(c).unwrap_or_default()));
        }
        cvs.truncate(n as usize);
        Ok(cvs)
    }

    /// Give each chunk of `chunks` of `v`, verified against `sums`, to
    /// `take` in order (it answers false once it wants no more), from the
    /// holders, this node first, going on at the next chunk on the next
    /// holder when one fails or sends a chunk that does not verify.
    async fn read_verified<F, Fut>(
        &self,
        name: &str,
        v: &FileVersion,
        sums: &ChunkSums,
        chunks: std::ops::Range<u64>,
        mut take: F,
    ) -> Result<(), SdfsError>
    where
        F: FnMut(u64, Bytes) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let mut next = chunks.start;
        let mut holders = v.replicas.clone();
        holders.sort_by_key(|h| *h != self.me);
        for h in holders {
            let r = if h == self.me {
                self.chunks_local(&v.blake3, sums, &mut next, chunks.end, &mut take).await
            } else {
                self.chunks_remote(h, &v.blake3, sums, &mut next, chunks.end, &mut take).await
            };
            match r {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(holder = h, %name, version = v.version, chunk = next, error = %e, "replica unreadable; trying the next");
                    if matches!(e, SdfsError::DataLoss(_)) {
                        self.metrics.corrupt_replicas.inc();
                        self.forget_replica(name, v, h).await;
                    }
                }
            }
        }
        Err(SdfsError::Unavailable(format!(
            "no replica of {name} version {} could be read at chunk {next} of {}",
            v.version,
            sums.count()
        )))
    }

    async fn chunks_local<F, Fut>(
        &self,
        hash: &str,
        sums: &ChunkSums,
        next: &mut u64,
        end: u64,
        take: &mut F,
    ) -> Result<(), SdfsError>
    where
        F: FnMut(u64, Bytes) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        while *next < end {
            let chunk = self.store.read_chunk(hash, sums, *next).await.map_err(|e| self.on_local_error(hash, e))?;
            *next += 1;
            if !take(*next - 1, chunk).await {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn chunks_remote<F, Fut>(
        &self,
        node: u64,
        hash: &str,
        sums: &ChunkSums,
        next: &mut u64,
        end: u64,
        take: &mut F,
    ) -> Result<(), SdfsError>
    where
        F: FnMut(u64, Bytes) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        if *next >= end {
            return Ok(());
        }
        let addr = self.addr_of(node).ok_or_else(|| SdfsError::Unavailable(format!("node {node} has no address")))?;
        let mut client = self.peer(&addr).map_err(SdfsError::Unavailable)?;
        let from = sums.span(*next).0;
        let (last_at, last_len) = sums.span(end - 1);
        let req =
            v1::ReadBlobRequest { blake3: hash.to_string(), offset: from, limit: last_at + last_len as u64 - from };
        let mut stream = client.read_blob(req).await?.into_inner();
        let mut pending = bytes::BytesMut::new();
        let what = format!("reading from node {node}");
        while *next < end {
            let want = sums.span(*next).1;
            while pending.len() < want {
                match next_within(&mut stream, &what).await? {
                    Some(c) => pending.extend_from_slice(&c.data),
                    None => return Err(SdfsError::Unavailable(format!("node {node} ended the stream early"))),
                }
            }
            let chunk = pending.split_to(want).freeze();
            if !sums.check(*next, &chunk) {
                return Err(SdfsError::DataLoss(format!("node {node} sent chunk {} of blob {hash} corrupt", *next)));
            }
            *next += 1;
            if !take(*next - 1, chunk).await {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Version `version` (0: the newest) of `name`, whole: its number and
    /// bytes. For files a layer keeps in memory anyway (models, input
    /// sets); larger ones are read with [`Sdfs::open`].
    pub async fn get(self: &Arc<Self>, name: &str, version: u64) -> Result<(u64, Vec<u8>), SdfsError> {
        let mut d = self.open(name, version).await?;
        // Counted as the bytes come, not reserved on the namespace's word.
        let mut data = Vec::new();
        while let Some(piece) = d.next().await? {
            data.extend_from_slice(&piece);
        }
        Ok((d.version.version, data))
    }

    /// Stream `v` to `tx` from its holders, this node first, resuming at
    /// the same offset on the next holder when one fails.
    pub(crate) async fn send_version(
        self: Arc<Self>,
        name: String,
        v: FileVersion,
        tx: mpsc::Sender<Result<Bytes, SdfsError>>,
    ) {
        let started = std::time::Instant::now();
        let mut holders = v.replicas.clone();
        holders.sort_by_key(|h| *h != self.me);
        let mut relay = Relay { offset: 0, hasher: blake3::Hasher::new(), tx };
        for h in holders {
            let r = if h == self.me {
                self.relay_local(&v.blake3, &mut relay).await
            } else {
                self.relay_remote(h, &v.blake3, &mut relay).await
            };
            match r {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(holder = h, %name, version = v.version, error = %e, "replica unreadable; trying the next");
                    if matches!(e, SdfsError::DataLoss(_)) {
                        self.metrics.corrupt_replicas.inc();
                        self.forget_replica(&name, &v, h).await;
                    }
                    if relay.tx.is_closed() {
                        return;
                    }
                }
            }
        }
        if relay.offset != v.size || relay.hasher.finalize().to_hex().as_str() != v.blake3 {
            let msg = format!("no replica of {name} version {} could be read in full", v.version);
            let _ = relay.tx.send(Err(SdfsError::Unavailable(msg))).await;
        } else {
            self.metrics.gets.inc();
            self.metrics.get_bytes.inc_by(v.size);
            self.metrics.get_seconds.observe(started.elapsed().as_secs_f64());
        }
    }

    async fn relay_local(&self, hash: &str, relay: &mut Relay) -> Result<(), SdfsError> {
        let mut r = self.store.reader(hash, relay.offset).await?;
        while let Some(chunk) = r.next().await.map_err(|e| self.on_local_error(hash, e))? {
            if !relay.forward(chunk).await {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn relay_remote(&self, node: u64, hash: &str, relay: &mut Relay) -> Result<(), SdfsError> {
        let addr = self.addr_of(node).ok_or_else(|| SdfsError::Unavailable(format!("node {node} has no address")))?;
        let mut client = self.peer(&addr).map_err(SdfsError::Unavailable)?;
        let req = v1::ReadBlobRequest { blake3: hash.to_string(), offset: relay.offset, limit: 0 };
        let mut stream = client.read_blob(req).await?.into_inner();
        // A holder that stops sending is left for the next one.
        while let Some(chunk) = next_within(&mut stream, &format!("reading from node {node}")).await? {
            if !relay.forward(chunk.data).await {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Copy blob `hash` here from the first of `sources` that can send all
    /// of it; its size.
    pub async fn fetch_blob(&self, hash: &str, sources: &[String]) -> Result<u64, SdfsError> {
        if self.store.has(hash) {
            let held = self.store.list()?.into_iter().find(|(h, _)| h == hash);
            return Ok(held.map_or(0, |b| b.1));
        }
        let mut last = SdfsError::Unavailable("no source given".into());
        for addr in sources {
            let copy = async {
                let mut client = self.peer(addr).map_err(SdfsError::Unavailable)?;
                let mut stream = client
                    .read_blob(v1::ReadBlobRequest { blake3: hash.to_string(), offset: 0, limit: 0 })
                    .await?
                    .into_inner();
                let mut w = self.store.writer().await?;
                while let Some(chunk) = next_within(&mut stream, &format!("copying from {addr}")).await? {
                    w.write(&chunk.data).await?;
                }
                // A copy that is not the blob asked for is discarded before
                // it is stored: a copy already here is never touched.
                Ok::<u64, SdfsError>(w.finish_as(hash).await?)
            };
            match copy.await {
                Ok(size) => return Ok(size),
                Err(e) => {
                    tracing::warn!(source = %addr, hash, error = %e, "repair copy failed; trying the next source");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// A corrupt local blob is removed so it is never served again.
    pub(crate) fn on_local_error(&self, hash: &str, e: BlobError) -> SdfsError {
        if matches!(e, BlobError::Corrupt { .. }) {
            tracing::error!(hash, error = %e, "corrupt replica removed");
            let _ = self.store.remove(hash);
        }
        e.into()
    }

    /// Take a holder with a corrupt copy out of the namespace; repair
    /// restores the replication factor.
    async fn forget_replica(&self, name: &str, v: &FileVersion, bad: u64) {
        let replicas: Vec<u64> = v.replicas.iter().copied().filter(|r| *r != bad).collect();
        let cmd = FileCommand::SetReplicas { name: name.to_string(), version: v.version, replicas };
        if let Err(e) = self.coordinator.apply(cmd).await {
            tracing::warn!(error = %e, "could not record a bad replica");
        }
    }
}
