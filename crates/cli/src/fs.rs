//! `idunno fs …`: SDFS from the command line. Transfers stream in 1 MiB
//! chunks (memory stays flat for any file size), show a progress bar on a
//! terminal, and a download appears under its final name only once every
//! byte has arrived and matched its BLAKE3.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use idunno_rpc::limits::next_within;
use idunno_rpc::v1::{self, get_message, put_message};
use idunno_rpc::{Limited, RpcError, SdfsClient};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::error::CliError;
use crate::output::{Output, table};
use crate::target;

#[derive(Subcommand)]
pub enum FsCommand {
    /// Store a local file as a new version of NAME.
    Put { local: PathBuf, name: String },
    /// Fetch a version of NAME (default: the newest) into LOCAL.
    Get {
        name: String,
        local: PathBuf,
        #[arg(long, default_value_t = 0)]
        version: u64,
        /// Only bytes START to END (END excluded; either may be left out:
        /// `100:`, `:4096`), read from the chunks that hold them.
        #[arg(long, value_name = "START:END", value_parser = parse_range)]
        range: Option<ByteRange>,
    },
    /// Delete every version of NAME.
    Delete { name: String },
    /// The versions of NAME: size, checksum, holders.
    Ls {
        name: String,
        /// The answering node's own view (no round trip to the leader; may
        /// lag it).
        #[arg(long)]
        local: bool,
    },
    /// Every file, or those whose name starts with PREFIX.
    List {
        prefix: Option<String>,
        /// The answering node's own view (may lag the leader).
        #[arg(long)]
        local: bool,
    },
    /// The files held by one node: the answering node, or the node with id
    /// N given as `--node N`.
    Store,
    /// The last COUNT versions of NAME in one file, newest first, each
    /// behind a delimiter line.
    Versions { name: String, count: usize, local: PathBuf },
}

const CHUNK: usize = 1 << 20;

/// A client whose calls must answer within `deadline` (an upload's comes
/// from its size; a download's stream is bounded by its idle time, not by
/// the call's deadline, which only covers its first answer).
async fn client_within(addr: &str, deadline: Duration) -> Result<SdfsClient<Channel>, CliError> {
    let ch = idunno_rpc::connect_channel_with(addr, Duration::from_secs(5), deadline).await?;
    Ok(SdfsClient::new(ch.clone()).limited())
}

async fn client(addr: &str) -> Result<SdfsClient<Channel>, CliError> {
    client_within(addr, idunno_rpc::limits::UNARY_DEADLINE + Duration::from_secs(5)).await
}

fn bar(len: u64, out: Output) -> ProgressBar {
    if out.json || !std::io::stdout().is_terminal() || len < 8 * CHUNK as u64 {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{bytes}/{total_bytes} [{bar:40}] {bytes_per_sec} eta {eta}") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

/// `--node` for `fs store` may be a node id: find its address.
async fn node_addr(node: Option<String>) -> Result<Option<String>, CliError> {
    let Some(n) = node else { return Ok(None) };
    let Ok(id) = n.parse::<u64>() else { return Ok(Some(n)) };
    let (addr, mut c) = target::connect(None).await?;
    let members = c.members(v1::MembersRequest {}).await.map_err(|s| RpcError::from_status(&addr, s))?.into_inner();
    members
        .members
        .iter()
        .find(|m| m.id == id)
        .map(|m| Some(m.addr.clone()))
        .ok_or_else(|| CliError::bad_input(format!("no member with id {id}")))
}

pub async fn run(cmd: FsCommand, node: Option<String>, out: Output) -> Result<(), CliError> {
    match cmd {
        FsCommand::Put { local, name } => put(&local, &name, node, out).await,
        FsCommand::Get { name, local, version, range } => {
            let h = get(&name, version, range, &local, node, out).await?;
            if out.json {
                let mut doc =
                    json!({"name": name, "version": h.version, "size": h.size, "blake3": h.blake3, "local": local});
                if range.is_some() {
                    doc["range"] = json!({"start": h.start, "end": h.end});
                }
                return out.json(&doc);
            }
            match range {
                Some(_) => println!(
                    "{} version {} bytes {}:{} ({} of {} bytes) -> {}",
                    name,
                    h.version,
                    h.start,
                    h.end,
                    h.end - h.start,
                    h.size,
                    local.display()
                ),
                None => println!("{} version {} ({} bytes) -> {}", name, h.version, h.size, local.display()),
            }
            Ok(())
        }
        FsCommand::Delete { name } => {
            let addr = target::resolve(node);
            let r = client(&addr)
                .await?
                .delete(v1::DeleteRequest { name: name.clone() })
                .await
                .map_err(|s| RpcError::from_status(&addr, s))?
                .into_inner();
            if out.json {
                return out.json(&json!({"name": name, "deleted_versions": r.versions}));
            }
            println!("deleted {name} (versions {:?})", r.versions);
            Ok(())
        }
        FsCommand::Ls { name, local } => {
            let versions = stat(&name, local, node).await?;
            if out.json {
                let vs: Vec<_> = versions
                    .iter()
                    .map(|v| json!({"version": v.version, "size": v.size, "blake3": v.blake3, "replicas": v.replicas}))
                    .collect();
                return out.json(&json!({"name": name, "versions": vs}));
            }
            let mut t = table(&["VERSION", "SIZE", "BLAKE3", "REPLICAS"]);
            for v in versions {
                let holders: Vec<String> = v.replicas.iter().map(u64::to_string).collect();
                t.add_row(vec![v.version.to_string(), v.size.to_string(), v.blake3.clone(), holders.join(", ")]);
            }
            println!("{name}\n{t}");
            Ok(())
        }
        FsCommand::List { prefix, local } => {
            let addr = target::resolve(node);
            let mut c = client(&addr).await?;
            let mut rows = Vec::new();
            let mut after = String::new();
            // Page by page: no message holds the whole namespace.
            loop {
                let req = v1::ListRequest { prefix: prefix.clone().unwrap_or_default(), after, limit: 0, local };
                let page = c.list(req).await.map_err(|s| RpcError::from_status(&addr, s))?.into_inner();
                rows.extend(page.files);
                if page.next.is_empty() {
                    break;
                }
                after = page.next;
            }
            if out.json {
                let doc: Vec<_> =
                    rows.iter().map(|f| json!({"name": f.name, "latest_version": f.version, "size": f.size})).collect();
                return out.json(&doc);
            }
            let mut t = table(&["NAME", "LATEST VERSION", "SIZE"]);
            for f in &rows {
                t.add_row(vec![f.name.clone(), f.version.to_string(), f.size.to_string()]);
            }
            println!("{t}\n{} file(s)", rows.len());
            Ok(())
        }
        FsCommand::Store => {
            let addr = node_addr(node).await?.unwrap_or_else(|| target::resolve(None));
            let r = client(&addr)
                .await?
                .store(v1::StoreRequest {})
                .await
                .map_err(|s| RpcError::from_status(&addr, s))?
                .into_inner();
            if out.json {
                let doc: Vec<_> =
                    r.files.iter().map(|f| json!({"name": f.name, "version": f.version, "size": f.size})).collect();
                return out.json(&json!({"node": addr, "files": doc, "blobs": r.blobs.len()}));
            }
            let mut t = table(&["NAME", "VERSION", "SIZE"]);
            for f in &r.files {
                t.add_row(vec![f.name.clone(), f.version.to_string(), f.size.to_string()]);
            }
            println!("{t}\n{} file version(s) on {addr}", r.files.len());
            Ok(())
        }
        FsCommand::Versions { name, count, local } => versions(&name, count, &local, node, out).await,
    }
}

async fn put(local: &Path, name: &str, node: Option<String>, out: Output) -> Result<(), CliError> {
    let meta = tokio::fs::metadata(local)
        .await
        .map_err(|e| CliError::bad_input(format!("cannot read local file {}: {e}", local.display())))?;
    if !meta.is_file() {
        return Err(CliError::bad_input(format!("{} is not a regular file", local.display())));
    }
    let mut file = tokio::fs::File::open(local)
        .await
        .map_err(|e| CliError::bad_input(format!("cannot read local file {}: {e}", local.display())))?;
    let size = meta.len();
    let pb = bar(size, out);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let header =
        v1::PutMessage { part: Some(put_message::Part::Header(v1::PutHeader { name: name.to_string(), size })) };
    let _ = tx.send(header).await;
    let reader_pb = pb.clone();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            reader_pb.inc(n as u64);
            let msg = v1::PutMessage { part: Some(put_message::Part::Data(bytes::Bytes::copy_from_slice(&buf[..n]))) };
            if tx.send(msg).await.is_err() {
                return Ok(());
            }
        }
    });
    let addr = target::resolve(node);
    let deadline = idunno_rpc::limits::transfer_deadline(size);
    let reply = client_within(&addr, deadline).await?.put(ReceiverStream::new(rx)).await;
    pb.finish_and_clear();
    if let Ok(Err(e)) = reader.await {
        return Err(CliError::failed(format!("reading {}: {e}", local.display())));
    }
    let r = reply.map_err(|s| RpcError::from_status(&addr, s))?.into_inner();
    if out.json {
        return out.json(&json!({
            "name": r.name, "version": r.version, "size": r.size, "blake3": r.blake3,
            "replicas": r.replicas, "dropped_versions": r.dropped,
        }));
    }
    println!(
        "{} version {} stored: {} bytes, blake3 {}, on nodes {:?}",
        r.name, r.version, r.size, r.blake3, r.replicas
    );
    Ok(())
}

/// A file being downloaded next to its destination, removed unless kept.
struct Partial {
    path: PathBuf,
    keep: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn partial_path(dest: &Path) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "download".into());
    dest.with_file_name(format!(".{name}.idunno-part-{:08x}", rand_u32()))
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish() as u32
}

/// `START:END` of `fs get --range`: either end may be left out.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ByteRange {
    start: u64,
    end: Option<u64>,
}

fn parse_range(s: &str) -> Result<ByteRange, String> {
    let (a, b) = s.split_once(':').ok_or_else(|| format!("{s:?} is not START:END"))?;
    let num = |t: &str| t.trim().parse::<u64>().map_err(|_| format!("{t:?} in {s:?} is not a byte offset"));
    let start = if a.trim().is_empty() { 0 } else { num(a)? };
    let end = if b.trim().is_empty() { None } else { Some(num(b)?) };
    if end.is_some_and(|e| e < start) {
        return Err(format!("range {s} ends before it starts"));
    }
    Ok(ByteRange { start, end })
}

/// Stream `name`@`version` (or a range of it) into `w`, verifying size
/// and BLAKE3 (a range: its size; the node verified its chunks).
async fn fetch(
    name: &str,
    version: u64,
    range: Option<ByteRange>,
    addr: &str,
    w: &mut tokio::fs::File,
    out: Output,
) -> Result<v1::GetHeader, CliError> {
    let req = v1::GetRequest {
        name: name.to_string(),
        version,
        start: range.map(|r| r.start),
        end: range.and_then(|r| r.end),
    };
    let mut stream = client(addr).await?.get(req).await.map_err(|s| RpcError::from_status(addr, s))?.into_inner();
    let what = format!("reading {name}");
    let header = match next_within(&mut stream, &what).await.map_err(|s| RpcError::from_status(addr, s))? {
        Some(v1::GetMessage { part: Some(get_message::Part::Header(h)) }) => h,
        _ => return Err(CliError::failed("the node sent no header")),
    };
    let expected = if range.is_some() { header.end.saturating_sub(header.start) } else { header.size };
    let pb = bar(expected, out);
    let mut hasher = blake3::Hasher::new();
    let mut got = 0u64;
    while let Some(msg) = next_within(&mut stream, &what).await.map_err(|s| RpcError::from_status(addr, s))? {
        if let Some(get_message::Part::Data(d)) = msg.part {
            hasher.update(&d);
            got += d.len() as u64;
            pb.inc(d.len() as u64);
            w.write_all(&d).await.map_err(|e| CliError::failed(format!("writing: {e}")))?;
        }
    }
    pb.finish_and_clear();
    let whole_ok = range.is_some() || hasher.finalize().to_hex().as_str() == header.blake3;
    if got != expected || !whole_ok {
        return Err(CliError::failed(format!(
            "{name} version {}: received {got} of {expected} bytes or a wrong checksum; nothing written",
            header.version
        )));
    }
    Ok(header)
}

async fn get(
    name: &str,
    version: u64,
    range: Option<ByteRange>,
    local: &Path,
    node: Option<String>,
    out: Output,
) -> Result<v1::GetHeader, CliError> {
    let addr = target::resolve(node);
    let mut partial = Partial { path: partial_path(local), keep: false };
    let mut f = tokio::fs::File::create(&partial.path)
        .await
        .map_err(|e| CliError::bad_input(format!("cannot write {}: {e}", local.display())))?;
    let h = fetch(name, version, range, &addr, &mut f, out).await?;
    f.sync_all().await.map_err(|e| CliError::failed(format!("writing {}: {e}", local.display())))?;
    tokio::fs::rename(&partial.path, local)
        .await
        .map_err(|e| CliError::failed(format!("cannot write {}: {e}", local.display())))?;
    partial.keep = true;
    Ok(h)
}

/// The versions of `name`, newest first; a name with none is bad input.
async fn stat(name: &str, local: bool, node: Option<String>) -> Result<Vec<v1::FileVersionInfo>, CliError> {
    let addr = target::resolve(node);
    let req = v1::StatRequest { name: name.to_string(), local };
    match client(&addr).await?.stat(req).await {
        Ok(r) => Ok(r.into_inner().versions),
        Err(s) if s.code() == tonic::Code::NotFound => Err(CliError::bad_input(s.message().to_string())),
        Err(s) => Err(RpcError::from_status(&addr, s).into()),
    }
}

async fn versions(name: &str, count: usize, local: &Path, node: Option<String>, out: Output) -> Result<(), CliError> {
    if count == 0 {
        return Err(CliError::bad_input("count must be at least 1"));
    }
    let kept = stat(name, false, node.clone()).await?;
    let wanted: Vec<u64> = kept.iter().take(count).map(|v| v.version).collect();
    let addr = target::resolve(node);
    let mut partial = Partial { path: partial_path(local), keep: false };
    let mut f = tokio::fs::File::create(&partial.path)
        .await
        .map_err(|e| CliError::bad_input(format!("cannot write {}: {e}", local.display())))?;
    let mut done = Vec::new();
    for v in &wanted {
        let v_meta = kept.iter().find(|x| x.version == *v).map(|x| (x.size, x.blake3.clone()));
        let (size, hash) = v_meta.unwrap_or_default();
        let delim = format!("==> idunno: {name} version {v} ({size} bytes, blake3 {hash}) <==\n");
        f.write_all(delim.as_bytes()).await.map_err(|e| CliError::failed(e.to_string()))?;
        fetch(name, *v, None, &addr, &mut f, out).await?;
        f.write_all(b"\n").await.map_err(|e| CliError::failed(e.to_string()))?;
        done.push(*v);
    }
    f.sync_all().await.map_err(|e| CliError::failed(e.to_string()))?;
    tokio::fs::rename(&partial.path, local).await.map_err(|e| CliError::failed(e.to_string()))?;
    partial.keep = true;
    if out.json {
        return out.json(&json!({"name": name, "versions": done, "local": local}));
    }
    println!("{name}: versions {done:?} -> {}", local.display());
    Ok(())
}
