//! `idunno member drain` on a real 5-node cluster under a running job: a
//! worker, then the coordinator leader, are emptied and stopped; `member
//! list` shows them draining meanwhile; no query is lost or counted twice,
//! and no file version is ever held by fewer than a write quorum of nodes
//! that stay.

mod common;

use std::time::Duration;

use common::{json_via, wait_for};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(120);

fn asset(rel: &str) -> std::path::PathBuf {
    let p = idunno_ml::onnx::assets_dir().join(rel);
    assert!(p.exists(), "{} is missing: run scripts/assets", p.display());
    p
}

/// The replicas of every version of `file`, as node `via` sees them.
fn holders(c: &common::Cluster, via: u64, file: &str) -> Vec<Vec<u64>> {
    let ls = json_via(c, via, &["fs", "ls", file], LIMIT);
    ls["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["replicas"].as_array().unwrap().iter().map(|r| r.as_u64().unwrap()).collect())
        .collect()
}

/// Drain `node` through `via` while watching the cluster through
/// `watch`: it must show as draining, every file must keep a write quorum
/// (2 of 4) on nodes that are neither draining nor gone.
fn drain(c: &common::Cluster, via: u64, watch: u64, node: u64, files: &[&str]) -> f64 {
    let bin = common::bin().to_path_buf();
    let addr = c.node(via).rpc.clone();
    let id = node.to_string();
    let drainer = std::thread::spawn(move || {
        idunno_testkit::run(&bin, &["member", "drain", &id, "--json", "--node", &addr], Duration::from_secs(240))
    });
    // One watcher only lists members (a drain with little to do takes
    // about a second); this thread checks the files meanwhile.
    let (bin, waddr) = (common::bin().to_path_buf(), c.node(watch).rpc.clone());
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lister = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut seen = false;
            while !done.load(std::sync::atomic::Ordering::Relaxed) && !seen {
                let out = idunno_testkit::run(&bin, &["member", "list", "--json", "--node", &waddr], LIMIT);
                let members: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                seen =
                    members.as_array().is_some_and(|m| m.iter().any(|m| m["id"] == node && m["state"] == "draining"));
            }
            seen
        })
    };
    while !drainer.is_finished() {
        let members = common::members(c, watch);
        let state = |id: u64| members.iter().find(|m| m["id"] == id).map(|m| m["state"].as_str().unwrap().to_string());
        let staying = |r: &u64| *r != node && state(*r).as_deref() == Some("alive");
        for f in files {
            for (i, v) in holders(c, watch, f).iter().enumerate() {
                let n = v.iter().filter(|r| staying(r)).count();
                assert!(n >= 2, "{f} version #{i} held by {n} staying nodes ({v:?}) while node {node} drains");
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen_draining = lister.join().unwrap();
    let out = drainer.join().unwrap();
    assert!(out.status.success(), "drain {node}: {}", String::from_utf8_lossy(&out.stderr));
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["drained"], node);
    assert!(seen_draining, "node {node} was never listed as draining");
    let members = common::members(c, watch);
    let row = members.iter().find(|m| m["id"] == node).expect("still listed");
    assert_eq!(row["state"], "left", "{row}");
    reply["seconds"].as_f64().unwrap()
}

#[test]
fn draining_a_worker_and_then_the_leader_loses_no_query_and_keeps_every_file() {
    let c = common::up(5);
    let put = |file: &str, name: &str| json_via(&c, 1, &["fs", "put", asset(file).to_str().unwrap(), name], LIMIT);
    put("models/efficientnet-lite0.onnx", "models/effnet.onnx");
    put("datasets/photos/photos.npy", "data/photos.npy");
    put("datasets/photos/photos-labels.npy", "data/photos-labels.npy");
    let files = ["models/effnet.onnx", "data/photos.npy", "data/photos-labels.npy"];
    let passes = 150u64;
    json_via(&c, 1, &common::strs(&common::photos_job(passes)), LIMIT);
    json_via(&c, 1, &["job", "start", "photos"], LIMIT);
    let status = |via: u64| json_via(&c, via, &["job", "status", "photos"], LIMIT)[0].clone();
    assert!(wait_for(LIMIT, || status(1)["queries_done"].as_u64() >= Some(20)).is_some(), "no progress");

    let leader = json_via(&c, 1, &["status"], LIMIT)["leader"].as_u64().unwrap();
    let worker = (1..=5).rev().find(|id| *id != leader).unwrap();
    let watch = (1..=5).find(|id| *id != leader && *id != worker).unwrap();
    let s = drain(&c, watch, watch, worker, &files);
    println!("worker {worker} drained in {s:.1} s");
    let st = status(watch);
    assert_eq!(st["state"], "running", "the job was over before the leader's drain: {st}");
    assert!(!st["workers"].as_array().unwrap().contains(&worker.into()), "{st}");

    let s = drain(&c, watch, watch, leader, &files);
    println!("leader {leader} drained in {s:.1} s");
    let now = json_via(&c, watch, &["status"], LIMIT);
    assert!(now["leader"].as_u64().is_some_and(|l| l != leader), "{now}");
    assert!(!now["voters"].as_array().unwrap().contains(&leader.into()), "{now}");

    let done = wait_for(Duration::from_secs(180), || status(watch)["state"] == "done");
    let st = status(watch);
    assert!(done.is_some(), "{st}");
    assert_eq!(st["queries_done"].as_u64(), Some(passes * 14), "every query counted once: {st}");
    assert_eq!(st["inputs_done"].as_u64(), Some(passes * 14), "{st}");
    assert_eq!(st["accuracy"].as_f64(), Some(1.0), "{st}");
    // Every file back to as many copies as there are nodes left (3 < 4),
    // on nodes that stay.
    let whole = wait_for(Duration::from_secs(30), || {
        files
            .iter()
            .all(|f| holders(&c, watch, f).iter().all(|v| v.len() == 3 && !v.contains(&leader) && !v.contains(&worker)))
    });
    assert!(whole.is_some(), "{:?}", files.map(|f| holders(&c, watch, f)));
    let events = json_via(&c, watch, &["events"], LIMIT);
    let drains = events.as_array().unwrap().iter().filter(|e| e["kind"] == "node_draining").count();
    assert_eq!(drains, 2, "{events:#}");
}

#[test]
fn a_bad_drain_changes_nothing() {
    let c = common::up(2);
    let out = common::via(&c, 1, &["member", "drain", "77"], LIMIT);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node 77"), "{}", String::from_utf8_lossy(&out.stderr));
    let members = common::members(&c, 1);
    assert!(members.iter().all(|m| m["state"] == "alive"), "{members:?}");
}

/// With one copy per file, the drained node holds the only replica of
/// what it stores: the drain waits until that copy is on a node that
/// stays, and the file reads back the same afterwards.
#[test]
fn a_node_holding_the_only_replica_drains_only_once_it_is_copied() {
    let c = common::Cluster::up(common::bin(), 3, Some("replicas = 1\n"));
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("one.bin");
    let bytes: Vec<u8> = (0..6u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    std::fs::write(&src, &bytes).unwrap();
    json_via(&c, 1, &["fs", "put", src.to_str().unwrap(), "only"], LIMIT);
    let held = holders(&c, 1, "only");
    assert_eq!(held[0].len(), 1, "{held:?}");
    let holder = held[0][0];
    let watch = (1..=3).find(|id| *id != holder).unwrap();
    // The drain returns only once the holder has stopped, which it does
    // only once a node that stays holds a copy.
    let out = common::via(&c, watch, &["member", "drain", &holder.to_string(), "--json"], Duration::from_secs(120));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = holders(&c, watch, "only");
    assert!(after[0].iter().any(|r| *r != holder), "no copy outside the drained node: {after:?}");
    let got = dir.path().join("got.bin");
    json_via(&c, watch, &["fs", "get", "only", got.to_str().unwrap()], LIMIT);
    assert!(std::fs::read(&got).unwrap() == bytes, "other bytes after the drain");
}
