//! The `Sdfs` gRPC service: a thin adapter over the in-process API
//! ([`crate::read`], [`crate::write`]) for clients, and the node-to-node
//! blob transfers (`WriteBlob`, `ReadBlob`, `FetchBlob`).

use std::pin::Pin;
use std::sync::Arc;

use idunno_rpc::limits::{STREAM_IDLE, next_within};
use idunno_rpc::v1::{self, get_message, put_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::error::SdfsError;
use crate::{BlobError, Sdfs};

pub struct SdfsService(pub Arc<Sdfs>);

type GetStream = Pin<Box<dyn Stream<Item = Result<v1::GetMessage, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<v1::Chunk, Status>> + Send>>;

fn blob_status(e: BlobError) -> Status {
    SdfsError::from(e).into()
}

/// A name SDFS takes, as a gRPC answer (for other layers' checks).
pub fn check_name(name: &str) -> Result<(), Status> {
    crate::error::check_name(name).map_err(Status::from)
}

fn version_info(v: idunno_state::FileVersion) -> v1::FileVersionInfo {
    v1::FileVersionInfo {
        version: v.version,
        size: v.size,
        blake3: v.blake3,
        replicas: v.replicas,
        committed_at_ms: v.committed_at_ms,
    }
}

#[tonic::async_trait]
impl idunno_rpc::Sdfs for SdfsService {
    async fn put(&self, req: Request<Streaming<v1::PutMessage>>) -> Result<Response<v1::PutReply>, Status> {
        let mut incoming = req.into_inner();
        let header = match next_within(&mut incoming, "the upload").await? {
            Some(v1::PutMessage { part: Some(put_message::Part::Header(h)) }) => h,
            _ => return Err(Status::invalid_argument("a put must start with its header")),
        };
        let pieces = incoming.map(|m| match m {
            Ok(v1::PutMessage { part: Some(put_message::Part::Data(d)) }) => Ok(d),
            Ok(_) => Err(SdfsError::Invalid("only one header per put".into())),
            Err(e) => Err(SdfsError::Interrupted(format!("the upload was interrupted: {}", e.message()))),
        });
        let s = self.0.put_stream(&header.name, header.size, pieces).await?;
        Ok(Response::new(v1::PutReply {
            name: header.name,
            version: s.version,
            size: s.size,
            blake3: s.blake3,
            replicas: s.replicas,
            dropped: s.dropped,
        }))
    }

    type GetStream = GetStream;

    async fn get(&self, req: Request<v1::GetRequest>) -> Result<Response<GetStream>, Status> {
        let req = req.into_inner();
        let d = if req.start.is_some() || req.end.is_some() {
            self.0.open_range(&req.name, req.version, req.start.unwrap_or(0), req.end).await?
        } else {
            self.0.open(&req.name, req.version).await?
        };
        let v = d.version.clone();
        let header = v1::GetHeader {
            name: req.name,
            version: v.version,
            size: v.size,
            blake3: v.blake3,
            start: d.range.start,
            end: d.range.end,
        };
        let first = tokio_stream::once(Ok(v1::GetMessage { part: Some(get_message::Part::Header(header)) }));
        let rest = d.into_stream().map(|piece| match piece {
            Ok(data) => Ok(v1::GetMessage { part: Some(get_message::Part::Data(data)) }),
            Err(e) => Err(Status::from(e)),
        });
        Ok(Response::new(Box::pin(first.chain(rest))))
    }

    async fn delete(&self, req: Request<v1::DeleteRequest>) -> Result<Response<v1::DeleteReply>, Status> {
        let versions = self.0.delete(&req.into_inner().name).await?;
        Ok(Response::new(v1::DeleteReply { versions }))
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
        let versions = self.0.stat(&req.name, req.local).await?;
        Ok(Response::new(v1::StatReply { name: req.name, versions: versions.into_iter().map(version_info).collect() }))
    }

    async fn list(&self, req: Request<v1::ListRequest>) -> Result<Response<v1::ListReply>, Status> {
        let req = req.into_inner();
        let (files, next) = self.0.list(&req.prefix, &req.after, req.limit as usize, req.local).await?;
        let files =
            files.into_iter().map(|f| v1::ListedFile { name: f.name, version: f.version, size: f.size }).collect();
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
        let size = self.0.fetch_blob(&req.blake3, &req.sources).await?;
        Ok(Response::new(v1::WriteBlobReply { blake3: req.blake3, size }))
    }

    async fn blob_chunks(&self, req: Request<v1::BlobChunksRequest>) -> Result<Response<v1::BlobChunksReply>, Status> {
        /// Checksums per reply: 8 MiB, well within a message.
        const PAGE: u64 = 1 << 18;
        let req = req.into_inner();
        let cvs = self.0.store.chunk_cvs(&req.blake3).await.map_err(blob_status)?;
        let count = if req.count == 0 { PAGE } else { req.count.min(PAGE) };
        let from = req.first.min(cvs.len() as u64) as usize;
        let to = (req.first.saturating_add(count)).min(cvs.len() as u64) as usize;
        Ok(Response::new(v1::BlobChunksReply { cvs: cvs[from..to].concat(), chunks: cvs.len() as u64 }))
    }

    type ReadBlobStream = ChunkStream;

    async fn read_blob(&self, req: Request<v1::ReadBlobRequest>) -> Result<Response<ChunkStream>, Status> {
        let req = req.into_inner();
        let mut r = self.0.store.reader(&req.blake3, req.offset).await.map_err(blob_status)?;
        let (tx, rx) = mpsc::channel(4);
        let sdfs = self.0.clone();
        let mut left = if req.limit == 0 { u64::MAX } else { req.limit };
        tokio::spawn(async move {
            while left > 0 {
                match r.next().await {
                    Ok(Some(mut data)) => {
                        data.truncate(data.len().min(left.try_into().unwrap_or(usize::MAX)));
                        left -= data.len() as u64;
                        // A reader that takes nothing for a while is gone.
                        let sent =
                            tokio::time::timeout(STREAM_IDLE, tx.send(Ok(v1::Chunk { data, ..Default::default() })));
                        if !matches!(sent.await, Ok(Ok(()))) {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(sdfs.on_local_error(&req.blake3, e).into())).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
