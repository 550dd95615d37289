//! Whole-file reads and writes through a node's SDFS service, for layers
//! that keep small files in memory (models, input sets, job results).
//! Large files stream instead (the CLI's `fs put/get`).

use std::time::Duration;

use idunno_rpc::v1::{self, get_message, put_message};
use idunno_rpc::{RpcError, SdfsClient};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const CHUNK: usize = 1 << 20;

async fn client(addr: &str) -> Result<SdfsClient<Channel>, RpcError> {
    let ch = idunno_rpc::connect_channel_with(addr, Duration::from_secs(5), Duration::from_secs(600)).await?;
    Ok(SdfsClient::new(ch).max_decoding_message_size(16 << 20).max_encoding_message_size(16 << 20))
}

/// A version of `name` (0: the newest) read through the node at `addr`:
/// its version number and bytes, checked end to end by the service.
pub async fn get(addr: &str, name: &str, version: u64) -> Result<(u64, Vec<u8>), RpcError> {
    let status = |s| RpcError::from_status(addr, s);
    let mut stream =
        client(addr).await?.get(v1::GetRequest { name: name.to_string(), version }).await.map_err(status)?.into_inner();
    let mut got_version = 0;
    let mut data = Vec::new();
    while let Some(msg) = stream.next().await {
        match msg.map_err(status)?.part {
            Some(get_message::Part::Header(h)) => {
                got_version = h.version;
                data.reserve(h.size as usize);
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
    let reply = client(addr).await?.put(tokio_stream::iter(msgs)).await.map_err(|s| RpcError::from_status(addr, s))?;
    Ok(reply.into_inner().version)
}
