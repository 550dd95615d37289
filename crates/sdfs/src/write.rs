//! Writing files, in process: a put streams the bytes to the replicas
//! placement chooses, in parallel, and is acknowledged only once a write
//! quorum of them hold the bytes durably *and* the new version is
//! committed in the coordinator group. Deletes go through the group.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use idunno_rpc::limits::STREAM_IDLE;
use idunno_rpc::v1;
use idunno_state::{FileCommand, Reply};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};

use crate::Sdfs;
use crate::blobs::CHUNK;
use crate::error::{SdfsError, check_name};
use crate::placement::{place, write_quorum};

/// How long one replica may take to accept a chunk before it is dropped
/// from a put.
const REPLICA_STALL: Duration = Duration::from_secs(10);

/// How long a replica may take to confirm a complete blob (its fsync).
const REPLICA_ANSWER: Duration = Duration::from_secs(60);

/// A version stored: its number, what it holds, where, and the versions
/// the put pushed out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub version: u64,
    pub size: u64,
    pub blake3: String,
    pub replicas: Vec<u64>,
    pub dropped: Vec<u64>,
}

/// One replica being written during a put.
struct ReplicaWrite {
    node: u64,
    tx: Option<mpsc::Sender<v1::Chunk>>,
    task: tokio::task::JoinHandle<Result<v1::WriteBlobReply, tonic::Status>>,
}

fn now_ms() -> u64 {
    idunno_net::now_ms()
}

impl Sdfs {
    /// Store `data` as a new version of `name`.
    pub async fn put(self: &Arc<Self>, name: &str, data: &[u8]) -> Result<Stored, SdfsError> {
        let pieces: Vec<Result<Bytes, SdfsError>> = data.chunks(CHUNK).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        self.put_stream(name, data.len() as u64, tokio_stream::iter(pieces)).await
    }

    /// Store a new version of `name` of `size` bytes, given in pieces as
    /// they are made (memory stays bounded); the pieces must add up to
    /// `size`, or nothing is stored. A source that fails, or gives nothing
    /// for [`STREAM_IDLE`], ends the put with nothing stored.
    pub async fn put_stream<S>(self: &Arc<Self>, name: &str, size: u64, pieces: S) -> Result<Stored, SdfsError>
    where
        S: Stream<Item = Result<Bytes, SdfsError>> + Unpin,
    {
        check_name(name)?;
        let started = std::time::Instant::now();
        let live = self.placeable_nodes();
        let targets = place(name, &live, self.config.replicas);
        if targets.is_empty() {
            return Err(SdfsError::Unavailable("no live node to store the file on".into()));
        }
        let mut writes = Vec::new();
        for node in &targets {
            match self.open_replica(*node) {
                Ok(w) => writes.push(w),
                Err(e) => tracing::warn!(node, error = %e, "replica not reachable for a put"),
            }
        }
        let hash = match Self::send_all(&mut writes, size, pieces).await {
            Ok(hash) => hash,
            Err(e) => {
                // Ending a replica's stream without its last chunk makes it
                // discard what it got. (Dropping the sender ends the stream
                // cleanly; aborting the call task does not reliably reset
                // it, and the replica would wait for its idle timeout.)
                for w in writes.iter_mut() {
                    w.tx = None;
                }
                return Err(e);
            }
        };
        let holders = Self::collect(writes, &hash, size, targets.len(), name).await?;
        let cmd = FileCommand::CommitFileVersion {
            name: name.to_string(),
            size,
            blake3: hash.clone(),
            replicas: holders.clone(),
            keep: self.config.keep_versions,
            now_ms: now_ms(),
        };
        match self.coordinator.apply(cmd).await?.applied {
            Ok(Reply::Committed { version, dropped }) => {
                self.metrics.puts.inc();
                self.metrics.put_bytes.inc_by(size);
                self.metrics.put_seconds.observe(started.elapsed().as_secs_f64());
                Ok(Stored { version, size, blake3: hash, replicas: holders, dropped })
            }
            Ok(other) => Err(SdfsError::Internal(format!("unexpected reply {other:?}"))),
            Err(refusal) => Err(SdfsError::Invalid(refusal.to_string())),
        }
    }

    /// Send every piece on to the replicas in chunks, then — only if the
    /// pieces added up to `size` — the last chunk that tells them the
    /// upload is whole; the content's BLAKE3.
    async fn send_all<S>(writes: &mut [ReplicaWrite], size: u64, mut pieces: S) -> Result<String, SdfsError>
    where
        S: Stream<Item = Result<Bytes, SdfsError>> + Unpin,
    {
        let mut hasher = blake3::Hasher::new();
        let mut sent = 0u64;
        let mut buf = BytesMut::new();
        loop {
            let piece = match tokio::time::timeout(STREAM_IDLE, pieces.next()).await {
                Ok(Some(Ok(piece))) => piece,
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(e),
                Err(_) => {
                    let secs = STREAM_IDLE.as_secs();
                    return Err(SdfsError::Interrupted(format!("nothing arrived for {secs} s; nothing was stored")));
                }
            };
            hasher.update(&piece);
            sent += piece.len() as u64;
            buf.extend_from_slice(&piece);
            while buf.len() >= CHUNK {
                Self::fan_out(writes, buf.split_to(CHUNK).freeze()).await;
            }
        }
        if !buf.is_empty() {
            Self::fan_out(writes, buf.split().freeze()).await;
        }
        if sent != size {
            return Err(SdfsError::Invalid(format!(
                "the header announced {size} bytes but {sent} arrived; nothing was stored"
            )));
        }
        // Only now do the replicas learn the upload is whole: a stream that
        // ends any other way (the caller gone, an error above) makes them
        // discard what they got.
        for w in writes.iter_mut() {
            if let Some(tx) = &w.tx {
                let last = v1::Chunk { data: Bytes::new(), last: true, total: size };
                if !matches!(tokio::time::timeout(REPLICA_STALL, tx.send(last)).await, Ok(Ok(()))) {
                    w.tx = None;
                }
            }
        }
        Ok(hasher.finalize().to_hex().to_string())
    }

    /// The replicas that stored the blob `hash`, once a write quorum of
    /// the `placed` did.
    async fn collect(
        mut writes: Vec<ReplicaWrite>,
        hash: &str,
        size: u64,
        placed: usize,
        name: &str,
    ) -> Result<Vec<u64>, SdfsError> {
        for w in writes.iter_mut() {
            w.tx = None; // end of stream: the replica finishes and fsyncs
        }
        let mut holders = Vec::new();
        let mut failures = Vec::new();
        // A replica that accepted every chunk but never answers is given up
        // on (and its call cancelled) rather than waited for; the replicas
        // share one deadline, so silent ones do not add up.
        let deadline = tokio::time::Instant::now() + REPLICA_ANSWER;
        for mut w in writes {
            let answer = tokio::time::timeout_at(deadline, &mut w.task).await;
            if answer.is_err() {
                w.task.abort();
            }
            match answer.unwrap_or_else(|_| Ok(Err(tonic::Status::deadline_exceeded("no answer")))) {
                Ok(Ok(r)) if r.blake3 == hash && r.size == size => holders.push(w.node),
                Ok(Ok(r)) => {
                    tracing::error!(node = w.node, got = r.blake3, want = hash, "replica stored other bytes");
                    failures.push(format!("node {} stored other bytes", w.node));
                }
                Ok(Err(e)) => {
                    tracing::warn!(node = w.node, error = %e, "replica write failed");
                    failures.push(format!("node {}: {}", w.node, e.message()));
                }
                Err(_) => failures.push(format!("node {}: stopped answering", w.node)),
            }
        }
        let need = write_quorum(placed);
        if holders.len() < need {
            return Err(SdfsError::Unavailable(format!(
                "only {} of {placed} replicas stored {name} (need {need}); nothing was committed{}",
                holders.len(),
                if failures.is_empty() { String::new() } else { format!(" ({})", failures.join("; ")) }
            )));
        }
        Ok(holders)
    }

    /// Start streaming a blob to node `node`.
    fn open_replica(self: &Arc<Self>, node: u64) -> Result<ReplicaWrite, SdfsError> {
        let addr = self.addr_of(node).ok_or_else(|| SdfsError::Unavailable(format!("node {node} has no address")))?;
        let mut client = self.peer(&addr).map_err(SdfsError::Unavailable)?;
        let (tx, rx) = mpsc::channel(4);
        let task =
            tokio::spawn(async move { client.write_blob(ReceiverStream::new(rx)).await.map(|r| r.into_inner()) });
        Ok(ReplicaWrite { node, tx: Some(tx), task })
    }

    /// Send one chunk to every replica still in the write; a replica that
    /// fails or stalls is dropped from it.
    async fn fan_out(writes: &mut [ReplicaWrite], data: Bytes) {
        for w in writes.iter_mut() {
            let Some(tx) = &w.tx else { continue };
            let chunk = v1::Chunk { data: data.clone(), ..Default::default() };
            let sent = tokio::time::timeout(REPLICA_STALL, tx.send(chunk)).await;
            if !matches!(sent, Ok(Ok(()))) {
                tracing::warn!(node = w.node, "replica dropped from a put");
                w.tx = None;
            }
        }
    }

    /// Forget every version of `name`; the versions removed.
    pub async fn delete(&self, name: &str) -> Result<Vec<u64>, SdfsError> {
        check_name(name)?;
        let cmd = FileCommand::DeleteFile { name: name.to_string(), now_ms: now_ms() };
        match self.coordinator.apply(cmd).await?.applied {
            Ok(Reply::Deleted { versions }) => Ok(versions),
            Ok(other) => Err(SdfsError::Internal(format!("unexpected reply {other:?}"))),
            Err(refusal) => Err(SdfsError::NotFound(refusal.to_string())),
        }
    }
}
