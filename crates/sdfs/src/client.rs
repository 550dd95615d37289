//! Whole-file reads and writes through a node's SDFS service, for layers
//! that keep small files in memory (models, input sets, job results).
//! Large files stream instead (the CLI's `fs put/get`).

use std::time::Duration;

use idunno_rpc::v1::{self, get_message, put_message};
use idunno_rpc::{Limited, RpcError, SdfsClient, limits};
use tonic::transport::Channel;

const CHUNK: usize = 1 << 20;

/// A client whose calls must answer within `deadline` (a get's stream
/// is bounded by its idle time instead; the deadline covers its header).
async fn client(addr: &str, deadline: Duration) -> Result<SdfsClient<Channel>, RpcError> {
    let ch = idunno_rpc::connect_channel_with(addr, Duration::from_secs(5), deadline).await?;
    Ok(SdfsClient::new(ch).limited())
}

/// A version of `name` (0: the newest) read through the node at `addr`:
/// its version number and bytes, checked end to end by the service.
pub async fn get(addr: &str, name: &str, version: u64) -> Result<(u64, Vec<u8>), RpcError> {
    let mut download = open(addr, name, version).await?;
    // The bytes are counted as they come rather than reserved up front on
    // the header's word.
    let mut data = Vec::new();
    while let Some(piece) = download.next().await? {
        data.extend_from_slice(&piece);
    }
    Ok((download.version, data))
}

/// A file being read, piece by piece: memory stays bounded whatever its
/// size.
pub struct Download {
    pub version: u64,
    /// The version's size.
    pub size: u64,
    /// The bytes being sent (all of them unless a range was asked for).
    pub range: std::ops::Range<u64>,
    addr: String,
    what: String,
    stream: tonic::Streaming<v1::GetMessage>,
}

/// Start reading a version of `name` (0: the newest) through the node at
/// `addr`; the version and size are known once this returns.
pub async fn open(addr: &str, name: &str, version: u64) -> Result<Download, RpcError> {
    open_request(addr, v1::GetRequest { name: name.to_string(), version, start: None, end: None }).await
}

/// Start reading bytes `start..end` (`end` absent: to the end) of a
/// version of `name` (0: the newest) through the node at `addr`: only
/// the chunks that hold them are read, each verified.
pub async fn open_range(
    addr: &str,
    name: &str,
    version: u64,
    start: u64,
    end: Option<u64>,
) -> Result<Download, RpcError> {
    open_request(addr, v1::GetRequest { name: name.to_string(), version, start: Some(start), end }).await
}

async fn open_request(addr: &str, req: v1::GetRequest) -> Result<Download, RpcError> {
    let name = req.name.clone();
    let ranged = req.start.is_some() || req.end.is_some();
    let status = |s| RpcError::from_status(addr, s);
    let mut stream = client(addr, limits::UNARY_DEADLINE).await?.get(req).await.map_err(status)?.into_inner();
    let what = format!("reading {name}");
    // The service sends its header first.
    while let Some(msg) = limits::next_within(&mut stream, &what).await.map_err(status)? {
        if let Some(get_message::Part::Header(h)) = msg.part {
            let range = if ranged { h.start..h.end } else { 0..h.size };
            return Ok(Download { version: h.version, size: h.size, range, addr: addr.to_string(), what, stream });
        }
    }
    Err(RpcError::from_status(addr, tonic::Status::data_loss(format!("{what}: the reply had no header"))))
}

impl Download {
    /// The next piece of the file; `None` at its end (the service checked
    /// it whole by then).
    pub async fn next(&mut self) -> Result<Option<bytes::Bytes>, RpcError> {
        loop {
            let msg = limits::next_within(&mut self.stream, &self.what)
                .await
                .map_err(|s| RpcError::from_status(&self.addr, s))?;
            match msg {
                None => return Ok(None),
                Some(v1::GetMessage { part: Some(get_message::Part::Data(d)) }) => return Ok(Some(d)),
                Some(_) => {}
            }
        }
    }
}

/// Store a new version of `name` of `size` bytes, given in pieces as they
/// are made (memory stays bounded); the pieces must add up to `size`.
pub async fn put_stream<S>(addr: &str, name: &str, size: u64, pieces: S) -> Result<u64, RpcError>
where
    S: tokio_stream::Stream<Item = bytes::Bytes> + Send + 'static,
{
    use tokio_stream::StreamExt;
    let header = v1::PutHeader { name: name.to_string(), size };
    let first = tokio_stream::once(v1::PutMessage { part: Some(put_message::Part::Header(header)) });
    let data = pieces.map(|d| v1::PutMessage { part: Some(put_message::Part::Data(d)) });
    let reply = client(addr, limits::transfer_deadline(size))
        .await?
        .put(first.chain(data))
        .await
        .map_err(|s| RpcError::from_status(addr, s))?;
    Ok(reply.into_inner().version)
}

/// Store `data` as a new version of `name` through the node at `addr`;
/// returns the version.
pub async fn put(addr: &str, name: &str, data: &[u8]) -> Result<u64, RpcError> {
    let mut msgs = Vec::with_capacity(1 + data.len() / CHUNK + 1);
    let header = v1::PutHeader { name: name.to_string(), size: data.len() as u64 };
    msgs.push(v1::PutMessage { part: Some(put_message::Part::Header(header)) });
    for c in data.chunks(CHUNK) {
        msgs.push(v1::PutMessage { part: Some(put_message::Part::Data(bytes::Bytes::copy_from_slice(c))) });
    }
    let deadline = limits::transfer_deadline(data.len() as u64);
    let reply = client(addr, deadline)
        .await?
        .put(tokio_stream::iter(msgs))
        .await
        .map_err(|s| RpcError::from_status(addr, s))?;
    Ok(reply.into_inner().version)
}
