//! The `Sdfs` gRPC service.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use idunno_coordinator::CoordError;
use idunno_rpc::limits::{STREAM_IDLE, next_within};
use idunno_rpc::v1::{self, get_message, put_message};
use idunno_state::{FileCommand, FileVersion, Reply};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::Sdfs;
use crate::blobs::{BlobError, CHUNK};
use crate::placement::{place, write_quorum};

pub struct SdfsService(pub Arc<Sdfs>);

/// Names per page of `List`, by default and at most.
const LIST_PAGE: usize = 10_000;
const LIST_PAGE_MAX: usize = 100_000;

type GetStream = Pin<Box<dyn Stream<Item = Result<v1::GetMessage, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<v1::Chunk, Status>> + Send>>;

/// How long one replica may take to accept a chunk before it is dropped
/// from a put.
const REPLICA_STALL: Duration = Duration::from_secs(10);

/// How long a replica may take to confirm a complete blob (its fsync).
const REPLICA_ANSWER: Duration = Duration::from_secs(60);

fn coord_status(e: CoordError) -> Status {
    match e {
        CoordError::BadCommand(m) => Status::invalid_argument(m),
        e => Status::unavailable(e.to_string()),
    }
}

fn blob_status(e: BlobError) -> Status {
    match e {
        BlobError::Missing(_) => Status::not_found(e.to_string()),
        BlobError::Corrupt { .. } | BlobError::Mismatch { .. } => Status::data_loss(e.to_string()),
        BlobError::Io { .. } => Status::internal(e.to_string()),
    }
}

pub fn check_name(name: &str) -> Result<(), Status> {
    if name.is_empty() || name.len() > 1024 || name.chars().any(|c| c.is_control()) {
        return Err(Status::invalid_argument(format!(
            "bad file name {name:?}: 1 to 1024 characters, no control characters"
        )));
    }
    Ok(())
}

fn now_ms() -> u64 {
    idunno_net::now_ms()
}

/// Where a get's bytes go, and how far it got (so the next holder can go
/// on from there).
struct Relay {
    offset: u64,
    hasher: blake3::Hasher,
    tx: mpsc::Sender<Result<v1::GetMessage, Status>>,
}

impl Relay {
    /// Pass one chunk on; false once the client has gone away, or has
    /// taken nothing for [`STREAM_IDLE`].
    async fn forward(&mut self, chunk: Bytes) -> bool {
        self.hasher.update(&chunk);
        self.offset += chunk.len() as u64;
        let msg = Ok(v1::GetMessage { part: Some(get_message::Part::Data(chunk)) });
        matches!(tokio::time::timeout(STREAM_IDLE, self.tx.send(msg)).await, Ok(Ok(())))
    }
}

/// One replica being written during a put.
struct ReplicaWrite {
    node: u64,
    tx: Option<mpsc::Sender<v1::Chunk>>,
    task: tokio::task::JoinHandle<Result<v1::WriteBlobReply, Status>>,
}

impl Sdfs {
    /// Start streaming a blob to node `node`.
    fn open_replica(self: &Arc<Self>, node: u64) -> Result<ReplicaWrite, Status> {
        let addr = self.addr_of(node).ok_or_else(|| Status::unavailable(format!("node {node} has no address")))?;
        let mut client = self.peer(&addr).map_err(Status::unavailable)?;
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
            let sent =
                tokio::time::timeout(REPLICA_STALL, tx.send(v1::Chunk { data: data.clone(), ..Default::default() }))
                    .await;
            if !matches!(sent, Ok(Ok(()))) {
                tracing::warn!(node = w.node, "replica dropped from a put");
                w.tx = None;
            }
        }
    }

    async fn put(self: &Arc<Self>, mut incoming: Streaming<v1::PutMessage>) -> Result<v1::PutReply, Status> {
        let header = match incoming.message().await? {
            Some(v1::PutMessage { part: Some(put_message::Part::Header(h)) }) => h,
            _ => return Err(Status::invalid_argument("a put must start with its header")),
        };
        check_name(&header.name)?;
        let live: Vec<u64> = self.live_nodes().into_iter().map(|(id, _)| id).collect();
        let targets = place(&header.name, &live, self.config.replicas);
        if targets.is_empty() {
            return Err(Status::unavailable("no live node to store the file on"));
        }
        let need = write_quorum(targets.len());
        let mut writes = Vec::new();
        for node in &targets {
            match self.open_replica(*node) {
                Ok(w) => writes.push(w),
                Err(e) => tracing::warn!(node, error = %e, "replica not reachable for a put"),
            }
        }
        // Ending a replica's stream without its last chunk makes it discard
        // what it got. (Dropping the sender ends the stream cleanly;
        // aborting the call task does not reliably reset it, and the
        // replica would wait for its idle timeout.)
        let abort = |writes: &mut Vec<ReplicaWrite>| {
            for w in writes.iter_mut() {
                w.tx = None;
            }
        };
        let mut hasher = blake3::Hasher::new();
        let mut size = 0u64;
        let mut buf = BytesMut::new();
        loop {
            let msg = match next_within(&mut incoming, "the upload").await {
                Ok(m) => m,
                Err(e) => {
                    abort(&mut writes);
                    return Err(Status::cancelled(format!("the upload was interrupted: {}", e.message())));
                }
            };
            let Some(msg) = msg else { break };
            let Some(put_message::Part::Data(data)) = msg.part else {
                abort(&mut writes);
                return Err(Status::invalid_argument("only one header per put"));
            };
            hasher.update(&data);
            size += data.len() as u64;
            buf.extend_from_slice(&data);
            while buf.len() >= CHUNK {
                let chunk = buf.split_to(CHUNK).freeze();
                Self::fan_out(&mut writes, chunk).await;
            }
        }
        if !buf.is_empty() {
            Self::fan_out(&mut writes, buf.split().freeze()).await;
        }
        if size != header.size {
            abort(&mut writes);
            return Err(Status::invalid_argument(format!(
                "the header announced {} bytes but {size} arrived; nothing was stored",
                header.size
            )));
        }
        let hash = hasher.finalize().to_hex().to_string();
        // Only now do the replicas learn the upload is whole: a stream that
        // ends any other way (this handler dropped because the client went
        // away, an error above) makes them discard what they got.
        for w in writes.iter_mut() {
            if let Some(tx) = &w.tx {
                let last = v1::Chunk { data: Bytes::new(), last: true, total: size };
                if !matches!(tokio::time::timeout(REPLICA_STALL, tx.send(last)).await, Ok(Ok(()))) {
                    w.tx = None;
                }
            }
        }
        let mut holders = Vec::new();
        let mut failures = Vec::new();
        for w in writes.iter_mut() {
            w.tx = None; // end of stream: the replica finishes and fsyncs
        }
        // A replica that accepted every chunk but never answers is given up
        // on (and its call cancelled) rather than waited for; the replicas
        // share one deadline, so silent ones do not add up.
        let deadline = tokio::time::Instant::now() + REPLICA_ANSWER;
        for mut w in writes {
            let answer = tokio::time::timeout_at(deadline, &mut w.task).await;
            if answer.is_err() {
                w.task.abort();
            }
            match answer.unwrap_or_else(|_| Ok(Err(Status::deadline_exceeded("no answer")))) {
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
        if holders.len() < need {
            return Err(Status::unavailable(format!(
                "only {} of {} replicas stored {} (need {need}); nothing was committed{}",
                holders.len(),
                targets.len(),
                header.name,
                if failures.is_empty() { String::new() } else { format!(" ({})", failures.join("; ")) }
            )));
        }
        let cmd = FileCommand::CommitFileVersion {
            name: header.name.clone(),
            size,
            blake3: hash.clone(),
            replicas: holders.clone(),
            keep: self.config.keep_versions,
            now_ms: now_ms(),
        };
        match self.coordinator.apply(cmd).await.map_err(coord_status)?.applied {
            Ok(Reply::Committed { version, dropped }) => {
                Ok(v1::PutReply { name: header.name, version, size, blake3: hash, replicas: holders, dropped })
            }
            Ok(other) => Err(Status::internal(format!("unexpected reply {other:?}"))),
            Err(refusal) => Err(Status::invalid_argument(refusal.to_string())),
        }
    }

    /// The namespace as of now (linearizable), or as this node has it
    /// (`local`: may lag).
    async fn read(&self, local: bool) -> Result<Arc<idunno_coordinator::store::SmData>, Status> {
        if local {
            return Ok(self.coordinator.local_state());
        }
        Ok(self.coordinator.read().await.map_err(coord_status)?.0)
    }

    /// The version `version` (0: newest) of `name`, from a fresh read of
    /// the namespace at the leader.
    pub async fn find(&self, name: &str, version: u64) -> Result<FileVersion, Status> {
        let (data, _) = self.coordinator.read().await.map_err(coord_status)?;
        let entry = data
            .state
            .namespace
            .files
            .get(name)
            .filter(|e| !e.versions.is_empty())
            .ok_or_else(|| Status::not_found(format!("no such file: {name}")))?;
        let found =
            if version == 0 { entry.versions.last() } else { entry.versions.iter().find(|v| v.version == version) };
        found.cloned().ok_or_else(|| {
            let have: Vec<String> = entry.versions.iter().map(|v| v.version.to_string()).collect();
            Status::not_found(format!("file {name} has no version {version} (kept: {})", have.join(", ")))
        })
    }

    /// Stream `v` to `tx` from its holders, this node first, resuming at
    /// the same offset on the next holder when one fails.
    async fn send_version(
        self: Arc<Self>,
        name: String,
        v: FileVersion,
        tx: mpsc::Sender<Result<v1::GetMessage, Status>>,
    ) {
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
                    if e.code() == tonic::Code::DataLoss {
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
            let _ = relay.tx.send(Err(Status::unavailable(msg))).await;
        }
    }

    async fn relay_local(&self, hash: &str, relay: &mut Relay) -> Result<(), Status> {
        let mut r = self.store.reader(hash, relay.offset).await.map_err(blob_status)?;
        while let Some(chunk) = r.next().await.map_err(|e| self.on_local_error(hash, e))? {
            if !relay.forward(chunk).await {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn relay_remote(&self, node: u64, hash: &str, relay: &mut Relay) -> Result<(), Status> {
        let addr = self.addr_of(node).ok_or_else(|| Status::unavailable(format!("node {node} has no address")))?;
        let mut client = self.peer(&addr).map_err(Status::unavailable)?;
        let req = v1::ReadBlobRequest { blake3: hash.to_string(), offset: relay.offset };
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
    /// of it.
    pub async fn fetch_blob(&self, hash: &str, sources: &[String]) -> Result<v1::WriteBlobReply, Status> {
        if self.store.has(hash) {
            let size = self.store.list().map_err(blob_status)?.into_iter().find(|(h, _)| h == hash).map_or(0, |b| b.1);
            return Ok(v1::WriteBlobReply { blake3: hash.to_string(), size });
        }
        let mut last = Status::unavailable("no source given");
        for addr in sources {
            let copy = async {
                let mut client = self.peer(addr).map_err(Status::unavailable)?;
                let mut stream =
                    client.read_blob(v1::ReadBlobRequest { blake3: hash.to_string(), offset: 0 }).await?.into_inner();
                let mut w = self.store.writer().await.map_err(blob_status)?;
                while let Some(chunk) = next_within(&mut stream, &format!("copying from {addr}")).await? {
                    w.write(&chunk.data).await.map_err(blob_status)?;
                }
                // A copy that is not the blob asked for is discarded before
                // it is stored: a copy already here is never touched.
                let size = w.finish_as(hash).await.map_err(blob_status)?;
                Ok(v1::WriteBlobReply { blake3: hash.to_string(), size })
            };
            match copy.await {
                Ok(r) => return Ok(r),
                Err(e) => {
                    tracing::warn!(source = %addr, hash, error = %e, "repair copy failed; trying the next source");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// A corrupt local blob is removed so it is never served again.
    fn on_local_error(&self, hash: &str, e: BlobError) -> Status {
        if matches!(e, BlobError::Corrupt { .. }) {
            tracing::error!(hash, error = %e, "corrupt replica removed");
            let _ = self.store.remove(hash);
        }
        blob_status(e)
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

#[tonic::async_trait]
impl idunno_rpc::Sdfs for SdfsService {
    async fn put(&self, req: Request<Streaming<v1::PutMessage>>) -> Result<Response<v1::PutReply>, Status> {
        Ok(Response::new(self.0.put(req.into_inner()).await?))
    }

    type GetStream = GetStream;

    async fn get(&self, req: Request<v1::GetRequest>) -> Result<Response<GetStream>, Status> {
        let req = req.into_inner();
        check_name(&req.name)?;
        let v = self.0.find(&req.name, req.version).await?;
        let (tx, rx) = mpsc::channel(4);
        let header =
            v1::GetHeader { name: req.name.clone(), version: v.version, size: v.size, blake3: v.blake3.clone() };
        let _ = tx.send(Ok(v1::GetMessage { part: Some(get_message::Part::Header(header)) })).await;
        tokio::spawn(self.0.clone().send_version(req.name, v, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delete(&self, req: Request<v1::DeleteRequest>) -> Result<Response<v1::DeleteReply>, Status> {
        let name = req.into_inner().name;
        check_name(&name)?;
        match self
            .0
            .coordinator
            .apply(FileCommand::DeleteFile { name, now_ms: now_ms() })
            .await
            .map_err(coord_status)?
            .applied
        {
            Ok(Reply::Deleted { versions }) => Ok(Response::new(v1::DeleteReply { versions })),
            Ok(other) => Err(Status::internal(format!("unexpected reply {other:?}"))),
            Err(refusal) => Err(Status::not_found(refusal.to_string())),
        }
    }

    async fn store(&self, _: Request<v1::StoreRequest>) -> Result<Response<v1::StoreReply>, Status> {
        let blobs = self.0.store.list().map_err(blob_status)?;
        let held: std::collections::BTreeSet<&str> = blobs.iter().map(|(b, _)| b.as_str()).collect();
        let data = self.0.coordinator.local_state();
        let mut files = Vec::new();
        for (name, e) in data.state.namespace.files.iter() {
            for v in e.versions.iter().filter(|v| held.contains(v.blake3.as_str())) {
                files.push(v1::ListedFile { name: name.clone(), version: v.version, size: v.size });
            }
        }
        Ok(Response::new(v1::StoreReply {
            blobs: blobs.into_iter().map(|(blake3, size)| v1::StoredBlob { blake3, size }).collect(),
            files,
        }))
    }

    async fn stat(&self, req: Request<v1::StatRequest>) -> Result<Response<v1::StatReply>, Status> {
        let req = req.into_inner();
        check_name(&req.name)?;
        let data = self.0.read(req.local).await?;
        let entry = data.state.namespace.files.get(&req.name).filter(|e| !e.versions.is_empty());
        let entry = entry.ok_or_else(|| Status::not_found(format!("no such file: {}", req.name)))?;
        let versions = entry
            .versions
            .iter()
            .rev()
            .map(|v| v1::FileVersionInfo {
                version: v.version,
                size: v.size,
                blake3: v.blake3.clone(),
                replicas: v.replicas.clone(),
                committed_at_ms: v.committed_at_ms,
            })
            .collect();
        Ok(Response::new(v1::StatReply { name: req.name, versions }))
    }

    async fn list(&self, req: Request<v1::ListRequest>) -> Result<Response<v1::ListReply>, Status> {
        let req = req.into_inner();
        let limit = match req.limit {
            0 => LIST_PAGE,
            n => (n as usize).min(LIST_PAGE_MAX),
        };
        let data = self.0.read(req.local).await?;
        let after = std::ops::Bound::Excluded(req.after.clone());
        let from = if req.after.is_empty() || req.after < req.prefix {
            std::ops::Bound::Included(req.prefix.clone())
        } else {
            after
        };
        let mut files = Vec::new();
        let mut next = String::new();
        // From the prefix on, in name order, until a name without it.
        for (name, e) in data.state.namespace.files.range((from, std::ops::Bound::Unbounded)) {
            if !name.starts_with(&req.prefix) {
                break;
            }
            let Some(v) = e.versions.last() else { continue };
            if files.len() == limit {
                next = files.last().map_or_else(String::new, |f: &v1::ListedFile| f.name.clone());
                break;
            }
            files.push(v1::ListedFile { name: name.clone(), version: v.version, size: v.size });
        }
        Ok(Response::new(v1::ListReply { files, next }))
    }

    async fn write_blob(&self, req: Request<Streaming<v1::Chunk>>) -> Result<Response<v1::WriteBlobReply>, Status> {
        let mut incoming = req.into_inner();
        let mut w = self.0.store.writer().await.map_err(blob_status)?;
        let mut written = 0u64;
        loop {
            // A sender that goes quiet is treated like one that went away.
            let Some(chunk) = next_within(&mut incoming, "a replica write (nothing stored)").await? else {
                return Err(Status::cancelled("the upload ended before its last chunk; nothing stored"));
            };
            w.write(&chunk.data).await.map_err(blob_status)?;
            written += chunk.data.len() as u64;
            if chunk.last {
                if chunk.total != written {
                    return Err(Status::invalid_argument(format!(
                        "{written} bytes arrived but the upload says {}; nothing stored",
                        chunk.total
                    )));
                }
                break;
            }
        }
        let (blake3, size) = w.finish().await.map_err(blob_status)?;
        Ok(Response::new(v1::WriteBlobReply { blake3, size }))
    }

    async fn fetch_blob(&self, req: Request<v1::FetchBlobRequest>) -> Result<Response<v1::WriteBlobReply>, Status> {
        let req = req.into_inner();
        Ok(Response::new(self.0.fetch_blob(&req.blake3, &req.sources).await?))
    }

    type ReadBlobStream = ChunkStream;

    async fn read_blob(&self, req: Request<v1::ReadBlobRequest>) -> Result<Response<ChunkStream>, Status> {
        let req = req.into_inner();
        let mut r = self.0.store.reader(&req.blake3, req.offset).await.map_err(blob_status)?;
        let (tx, rx) = mpsc::channel(4);
        let sdfs = self.0.clone();
        tokio::spawn(async move {
            loop {
                match r.next().await {
                    Ok(Some(data)) => {
                        // A reader that takes nothing for a while is gone.
                        let sent =
                            tokio::time::timeout(STREAM_IDLE, tx.send(Ok(v1::Chunk { data, ..Default::default() })));
                        if !matches!(sent.await, Ok(Ok(()))) {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(sdfs.on_local_error(&req.blake3, e))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
