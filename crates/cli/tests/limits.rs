//! The limits on what crosses the wire are not cliffs: a state of 50,000
//! files is still read through any node and caught up by a new one, an
//! upload takes as long as it keeps moving, and a query whose outputs no
//! message can carry fails its job with the reason instead of being
//! resent for ever. Real processes throughout.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, alive, wait_for};
use idunno_rpc::v1::{self, put_message};
use idunno_rpc::{CoordinatorClient, Limited, SdfsClient};
use serde_json::Value;

fn idunno(c: &Cluster, via: u64, args: &[&str]) -> std::process::Output {
    common::via(c, via, args, Duration::from_secs(120))
}

fn ok(c: &Cluster, via: u64, args: &[&str]) -> Value {
    common::json_via(c, via, args, Duration::from_secs(120))
}

/// How long `f` takes, with its result.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let r = f();
    (r, start.elapsed())
}

/// `n` namespace entries committed straight through the coordinator (no
/// bytes behind them: the namespace is what is being measured), from
/// concurrent clients.
fn commit_many(addr: &str, n: usize) {
    // Apply is a node-to-node method: these calls present node credentials.
    common::use_secret(idunno_auth::Role::Node);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    rt.block_on(async {
        let clients = 32;
        let mut tasks = Vec::new();
        for k in 0..clients {
            let addr = addr.to_string();
            tasks.push(tokio::spawn(async move {
                let ch = idunno_rpc::connect_channel_with(&addr, Duration::from_secs(5), Duration::from_secs(30))
                    .await
                    .unwrap();
                let mut c = CoordinatorClient::new(ch).limited();
                for i in (k..n).step_by(clients) {
                    if k == 0 && i % 3200 == 0 {
                        println!("{i} commits after {:?}", started.elapsed());
                    }
                    let cmd = serde_json::json!({
                        "op": "commit_file_version", "name": format!("bulk/{i:06}"), "size": 512,
                        "blake3": format!("{i:064x}"), "replicas": [1, 2, 3], "keep": 5, "now_ms": 1,
                    });
                    let req = v1::ApplyRequest { command_json: serde_json::to_vec(&cmd).unwrap(), forwarded: false };
                    let reply = c.apply(req).await.expect("commit").into_inner();
                    let applied: Value = serde_json::from_slice(&reply.applied_json).unwrap();
                    assert!(applied.get("Ok").is_some(), "{applied}");
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn fifty_thousand_files_are_read_through_any_node_and_a_new_node_catches_up() {
    // Three copies on three nodes: the bulk entries are complete, and a
    // fourth node does not make repair chase 50,000 copies.
    let mut c = Cluster::up(common::bin(), 3, Some("replicas = 3\n"));
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    std::fs::write(&real, b"the one file with bytes behind it").unwrap();
    ok(&c, 1, &["fs", "put", real.to_str().unwrap(), "real"]);
    let leader = ok(&c, 1, &["status"])["leader"].as_u64().unwrap();
    let follower = c.nodes.iter().map(|n| n.id).find(|id| *id != leader).unwrap();

    let (_, took) = timed(|| commit_many(&c.node(leader).rpc, 50_000));
    println!("50,000 namespace commits in {took:?}");

    let back = tmp.path().join("back");
    for via in [follower, leader] {
        let (out, took) = timed(|| idunno(&c, via, &["fs", "get", "real", back.to_str().unwrap()]));
        assert!(out.status.success(), "get via {via}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&real).unwrap());
        println!("fs get through node {via} ({}): {took:?}", if via == leader { "leader" } else { "follower" });
    }
    let (st, took) = timed(|| ok(&c, follower, &["job", "status"]));
    assert_eq!(st, serde_json::json!([]));
    println!("job status through a follower: {took:?}");
    let (ls, took) = timed(|| ok(&c, follower, &["fs", "ls", "bulk/049999"]));
    assert_eq!(ls["versions"][0]["size"], 512);
    println!("fs ls through a follower: {took:?}");
    let list = ok(&c, follower, &["fs", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 50_001);

    // A node that joins now finds the early log purged: it catches up
    // from a snapshot of the whole namespace (many MiB), in chunks.
    let newcomer = c.add_node(&c.node(leader).rpc.clone());
    let caught_up = wait_for(Duration::from_secs(60), || {
        let out = idunno(&c, newcomer.id, &["coord", "state", "--local", "--json"]);
        out.status.success()
            && serde_json::from_slice::<Value>(&out.stdout)
                .is_ok_and(|v| v["state"]["namespace"]["files"].as_object().is_some_and(|f| f.len() == 50_001))
    });
    assert!(
        caught_up.is_some(),
        "the new node never caught up: {}",
        std::fs::read_to_string(c.data_dir(newcomer.id).join("restart.log")).unwrap_or_default()
    );
    println!("a new node held all 50,001 entries {:?} after it started", caught_up.unwrap());
    assert!(c.data_dir(newcomer.id).join("raft/snapshot.bin").exists(), "it was sent a snapshot");
    let out = idunno(&c, newcomer.id, &["fs", "get", "real", back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for n in &c.nodes {
        assert!(alive(c.node(n.id).pid), "node {} died", n.id);
    }
}

/// An upload that trickles in for longer than any per-call deadline:
/// 36 MiB at about 1 MiB a second.
#[test]
fn an_upload_takes_as_long_as_it_keeps_moving() {
    let c = common::up(3);
    let addr = c.node(1).rpc.clone();
    let chunk = |i: u8| bytes::Bytes::from(vec![i; 1 << 20]);
    let n = 36u8;
    common::use_secret(idunno_auth::Role::Client);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (reply, took) = timed(|| {
        rt.block_on(async {
            let ch = idunno_rpc::connect_channel_with(&addr, Duration::from_secs(5), Duration::from_secs(300))
                .await
                .unwrap();
            let mut client = SdfsClient::new(ch).limited();
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tokio::spawn(async move {
                let header = v1::PutHeader { name: "slow".into(), size: u64::from(n) << 20 };
                tx.send(v1::PutMessage { part: Some(put_message::Part::Header(header)) }).await.unwrap();
                for i in 0..n {
                    tokio::time::sleep(Duration::from_millis(1000)).await;
                    tx.send(v1::PutMessage { part: Some(put_message::Part::Data(chunk(i))) }).await.unwrap();
                }
            });
            client.put(tokio_stream::wrappers::ReceiverStream::new(rx)).await
        })
    });
    let reply = reply.unwrap_or_else(|e| panic!("the slow upload failed after {took:?}: {e}"));
    assert!(took > Duration::from_secs(31), "it took {took:?}: not slower than the old 30 s limit");
    assert_eq!(reply.into_inner().size, u64::from(n) << 20);
    let tmp = tempfile::tempdir().unwrap();
    let back = tmp.path().join("slow");
    let out = idunno(&c, 2, &["fs", "get", "slow", back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = std::fs::read(&back).unwrap();
    let want: Vec<u8> = (0..n).flat_map(|i| vec![i; 1 << 20]).collect();
    assert!(got == want, "the slow upload came back different");
}

/// MiniLM's token states (128 × 384 values per sentence) for 128
/// sentences in one query are about 70 MB as JSON: more than any message
/// carries. The job fails with that reason; its workers go on.
#[test]
fn outputs_no_message_can_carry_fail_the_job_with_the_reason() {
    let c = common::up(3);
    let assets = idunno_ml::onnx::assets_dir();
    // 16 floats in, 65,536 out per input (256 KiB); the model's input
    // length is free, so `job add` cannot bound its outputs: a query of
    // 300 inputs has 75 MiB of them.
    ok(&c, 1, &["fs", "put", assets.join("models/widen.onnx").to_str().unwrap(), "models/widen.onnx"]);
    // 400 inputs: queries of 300 and 100.
    let x = idunno_ml::npy::read(&std::fs::read(assets.join("datasets/tiny/x.npy")).unwrap()).unwrap();
    let rows = idunno_ml::Tensor { dtype: x.dtype, shape: vec![400, 16], data: x.data[..400 * 16 * 4].to_vec() };
    let tmp = tempfile::tempdir().unwrap();
    let local = tmp.path().join("x.npy");
    std::fs::write(&local, idunno_ml::npy::write(&rows)).unwrap();
    ok(&c, 1, &["fs", "put", local.to_str().unwrap(), "data/x.npy"]);
    let add = ["job", "add", "wide", "--model", "models/widen.onnx", "--inputs", "data/x.npy"];
    ok(&c, 1, &[&add[..], &["--batch-size", "300", "--passes", "1"]].concat());
    ok(&c, 1, &["job", "start", "wide"]);
    let failed = wait_for(Duration::from_secs(120), || ok(&c, 2, &["job", "status", "wide"])[0]["state"] == "failed");
    let st = ok(&c, 2, &["job", "status", "wide"])[0].clone();
    assert!(failed.is_some(), "the job never failed: {st}");
    let error = st["error"].as_str().unwrap_or_default();
    assert!(error.contains("more than one message carries") && error.contains("lower the batch size"), "{st}");
    // Smaller batches of the same job go through.
    ok(&c, 1, &["job", "set-batch-size", "wide", "100"]);
    ok(&c, 1, &["job", "start", "wide"]);
    let done = wait_for(Duration::from_secs(120), || ok(&c, 2, &["job", "status", "wide"])[0]["state"] == "done");
    assert!(done.is_some(), "{}", ok(&c, 2, &["job", "status", "wide"]));
}
