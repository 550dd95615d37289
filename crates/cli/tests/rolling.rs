//! The rolling restart of `docs/deploy.md`, on a real 5-node cluster under
//! two running jobs and a training: each node in turn is drained, stopped,
//! started again on its data folder, and waited for (alive, and every file
//! back to full replication) before the next. Every query is counted once,
//! the training goes on from its checkpoints, and the total time and the
//! dip in the jobs' query rate are printed.

mod common;

use std::time::{Duration, Instant};

use common::{alive, json_via, wait_for};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(120);

fn asset(rel: &str) -> std::path::PathBuf {
    let p = idunno_ml::onnx::assets_dir().join(rel);
    assert!(p.exists(), "{} is missing: run scripts/assets", p.display());
    p
}

fn live_node(c: &common::Cluster, not: u64) -> u64 {
    c.nodes.iter().map(|n| n.id).find(|id| *id != not && alive(c.node(*id).pid)).expect("a live node")
}

fn status(c: &common::Cluster, via: u64, job: &str) -> Value {
    json_via(c, via, &["job", "status", job], LIMIT)[0].clone()
}

/// Whether every version of every file has at least `want` replicas (a
/// drained node that comes back with its copies adds one), none on a node
/// that is not alive.
fn fully_replicated(c: &common::Cluster, via: u64, want: usize) -> bool {
    let members = common::members(c, via);
    let up = |id: u64| members.iter().any(|m| m["id"] == id && m["state"] == "alive");
    let list = json_via(c, via, &["fs", "list"], LIMIT);
    list.as_array().unwrap().iter().all(|f| {
        // (A job's results segments are compacted away as it runs.)
        let out = common::via(c, via, &["fs", "ls", f["name"].as_str().unwrap(), "--json"], LIMIT);
        let Ok(ls) = serde_json::from_slice::<Value>(&out.stdout) else { return true };
        ls["versions"].as_array().unwrap().iter().all(|v| {
            let r = v["replicas"].as_array().unwrap();
            r.len() >= want && r.iter().all(|id| up(id.as_u64().unwrap()))
        })
    })
}

#[test]
fn a_rolling_restart_of_every_node_under_load_loses_nothing() {
    let mut c = common::up(5);
    for (file, name) in common::WORKLOAD {
        json_via(&c, 1, &["fs", "put", asset(file).to_str().unwrap(), name], LIMIT);
    }
    let (photo_passes, tiny_passes) = (400u64, 90u64);
    json_via(&c, 1, &common::strs(&common::photos_job(photo_passes)), LIMIT);
    json_via(&c, 1, &common::strs(&common::tiny_job(tiny_passes)), LIMIT);
    json_via(&c, 1, &["job", "start", "photos"], LIMIT);
    json_via(&c, 1, &["job", "start", "tiny"], LIMIT);
    json_via(&c, 1, common::TRAIN_MLP, LIMIT);

    let rate = |c: &common::Cluster, via: u64| -> f64 {
        ["photos", "tiny"].iter().map(|j| status(c, via, j)["query_rate"].as_f64().unwrap_or(0.0)).sum()
    };
    // The rate before: once both jobs and the training are under way.
    let loaded = wait_for(Duration::from_secs(60), || {
        let busy = |j: &str| status(&c, 1, j)["queries_done"].as_u64() >= Some(200);
        busy("photos") && busy("tiny") && status(&c, 1, "mlp")["step"].as_u64() >= Some(50)
    });
    assert!(loaded.is_some(), "the load never got under way");
    // Three samples 0.7 s apart (a measurement's spacing, not a wait).
    let before: Vec<f64> = (0..3)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(700));
            rate(&c, 1)
        })
        .collect();
    let baseline = before.iter().sum::<f64>() / before.len() as f64;
    for j in ["photos", "tiny", "mlp"] {
        assert_eq!(status(&c, 1, j)["state"], "running", "{j} over before the restarts");
    }

    let started = Instant::now();
    let mut lowest = f64::MAX;
    let mut per_node = Vec::new();
    for id in 1..=5u64 {
        let t0 = Instant::now();
        let via = live_node(&c, id);
        let out = common::via(&c, via, &["member", "drain", &id.to_string(), "--json"], Duration::from_secs(240));
        assert!(out.status.success(), "drain {id}: {}", String::from_utf8_lossy(&out.stderr));
        let pid = c.node(id).pid;
        assert!(wait_for(Duration::from_secs(20), || !alive(pid)).is_some(), "node {id} did not stop after its drain");
        let drained = t0.elapsed();
        let seed = c.node(via).rpc.clone();
        c.restart(id, &seed);
        let mut last = String::new();
        let back = wait_for(Duration::from_secs(90), || {
            lowest = lowest.min(rate(&c, via));
            let members = common::members(&c, via);
            let alive = members.iter().filter(|m| m["state"] == "alive").count();
            let out = common::via(&c, id, &["status", "--json"], LIMIT);
            let leader = serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|s| s["leader"].is_u64());
            let whole = fully_replicated(&c, via, 4);
            last = format!("{alive} alive, node {id} knows a leader: {leader}, files whole: {whole}; {members:?}");
            alive == 5 && leader && whole
        });
        assert!(back.is_some(), "node {id} not back: {last}");
        per_node.push((id, drained.as_secs_f64(), t0.elapsed().as_secs_f64()));
    }
    let total = started.elapsed().as_secs_f64();
    println!(
        "rolling restart of 5 nodes: {total:.1} s in all; per node (id, drained s, back s): {per_node:?}; \
         query rate of the two jobs {baseline:.0}/s before, lowest {lowest:.0}/s during ({:.0}% of before)",
        100.0 * lowest / baseline.max(1e-9)
    );

    let finished = wait_for(Duration::from_secs(300), || {
        ["photos", "tiny", "mlp"].iter().all(|j| {
            let s = status(&c, 1, j);
            s["state"].is_string() && s["state"] != "running"
        })
    });
    assert!(finished.is_some(), "not finished: {:?}", ["photos", "tiny", "mlp"].map(|j| status(&c, 1, j)));
    let p = status(&c, 1, "photos");
    assert_eq!((p["state"].as_str(), p["queries_done"].as_u64()), (Some("done"), Some(photo_passes * 14)), "{p:#}");
    assert_eq!(p["accuracy"].as_f64(), Some(1.0), "{p:#}");
    let t = status(&c, 1, "tiny");
    assert_eq!((t["state"].as_str(), t["inputs_done"].as_u64()), (Some("done"), Some(tiny_passes * 4096)), "{t:#}");
    assert_eq!(t["queries_done"].as_u64(), Some(tiny_passes * 64), "{t:#}");
    let m = status(&c, 1, "mlp");
    assert_eq!(m["state"], "done", "{m:#}");
    assert_eq!(m["step"], 1875, "{m:#}");
    for g in m["regroups"].as_array().unwrap().iter().skip(1) {
        assert!(g["from_step"].as_u64() > Some(0), "a group restarted the training from scratch: {m:#}");
    }
    assert!(wait_for(Duration::from_secs(30), || fully_replicated(&c, 1, 4)).is_some(), "files not whole at the end");
}
