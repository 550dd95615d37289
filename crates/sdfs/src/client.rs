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
    let status = |s| RpcError::from_status(addr, s);
    let mut stream = client(addr, limits::UNARY_DEADLINE)
        .await?
        .get(v1::GetRequest { name: name.to_string(), version })
        .await
        .map_err(status)?
        .into_inner();
    let mut got_version = 0;
    let mut data = Vec::new();
    let what = format!("reading {name}");
    while let Some(msg) = limits::next_within(&mut stream, &what).await.map_err(status)? {
        match msg.part {
            Some(get_message::Part::Header(h)) => {
                got_version = h.version;
                // The bytes are counted as they come rather than reserved
                // up front on the header's word.
            }
            Some(get_message::Part::Data(d)) => data.extend_from_slice(&d),
            None => {}
        }
    }
    Ok((got_version, data))
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
