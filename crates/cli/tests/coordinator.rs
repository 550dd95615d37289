//! The coordinator group end to end: real node processes, the leader
//! killed with SIGKILL, voters killed, the whole cluster restarted.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, kill9, run, up, wait_for};
use serde_json::Value;

fn add_job(c: &Cluster, via: u64, name: &str) -> std::process::Output {
    let cmd = format!(
        r#"{{"op":"add_job","spec":{{"name":"{name}","model":"m.onnx","inputs":"x.npy","labels":null,"batch_size":4}}}}"#
    );
    run(&["coord", "apply", &cmd, "--json", "--node", &c.node(via).rpc], Duration::from_secs(30))
}

fn status(c: &Cluster, id: u64) -> Option<Value> {
    let out = run(&["status", "--json", "--node", &c.node(id).rpc], Duration::from_secs(10));
    out.status.success().then(|| serde_json::from_slice(&out.stdout).ok()).flatten()
}

fn leader(c: &Cluster, via: u64) -> Option<u64> {
    status(c, via)?["leader"].as_u64()
}

fn voters(c: &Cluster, via: u64) -> Vec<u64> {
    status(c, via)
        .map(|s| s["voters"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect())
        .unwrap_or_default()
}

fn jobs(c: &Cluster, via: u64) -> Vec<String> {
    let v = common::json(&["coord", "state", "--json", "--node", &c.node(via).rpc]);
    v["state"]["inference"]["jobs"].as_object().unwrap().keys().cloned().collect()
}

fn wait_group(c: &Cluster, via: u64, n: usize) {
    let ok = wait_for(Duration::from_secs(20), || voters(c, via).len() == n && leader(c, via).is_some());
    assert!(ok.is_some(), "group never reached {n} voters with a leader: {:?}", status(c, via));
}

#[test]
fn killing_the_leader_loses_no_acknowledged_write() {
    let c = up(5);
    wait_group(&c, 1, 5);
    // Roles: one leader, the other voters are standbys.
    let members = common::members(&c, 2);
    let roles: Vec<&str> = members.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles.iter().filter(|r| **r == "leader").count(), 1, "{roles:?}");
    assert_eq!(roles.iter().filter(|r| **r == "standby").count(), 4, "{roles:?}");

    let mut acked = Vec::new();
    for i in 0..10 {
        let name = format!("job{i}");
        let out = add_job(&c, 1 + (i % 5), &name);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        acked.push(name);
    }
    let old = leader(&c, 1).expect("a leader");
    let survivor = if old == 1 { 2 } else { 1 };
    let start = Instant::now();
    kill9(c.node(old).pid);
    let elected = wait_for(Duration::from_secs(15), || matches!(leader(&c, survivor), Some(l) if l != old));
    let elected = elected.expect("a new leader within 15 s");
    // Serving: a write through a survivor succeeds.
    let out = add_job(&c, survivor, "after-failover");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let serving = start.elapsed();
    println!("leader {old} killed: new leader seen after {elected:?}, first write done after {serving:?}");
    let have = jobs(&c, survivor);
    for name in acked.iter().chain(std::iter::once(&"after-failover".to_string())) {
        assert!(have.contains(name), "acknowledged {name} lost: {have:?}");
    }
}

#[test]
fn two_voters_then_the_new_leader_die_and_the_group_still_serves() {
    let c = up(5);
    wait_group(&c, 1, 5);
    for i in 0..3 {
        assert!(add_job(&c, 1, &format!("before{i}")).status.success());
    }
    let lead = leader(&c, 1).unwrap();
    let victims: Vec<u64> = (1..=5).filter(|id| *id != lead).take(2).collect();
    for v in &victims {
        kill9(c.node(*v).pid);
    }
    // The leader replaces the dead voters (here: shrinks to the 3 left).
    wait_group(&c, lead, 3);
    assert!(voters(&c, lead).iter().all(|v| !victims.contains(v)));
    assert!(add_job(&c, lead, "after-two").status.success());

    // Now the leader itself: the remaining two still form a majority of 3.
    kill9(c.node(lead).pid);
    let survivor = (1..=5).find(|id| *id != lead && !victims.contains(id)).unwrap();
    let out = add_job(&c, survivor, "after-leader");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let have = jobs(&c, survivor);
    for name in ["before0", "before1", "before2", "after-two", "after-leader"] {
        assert!(have.contains(&name.to_string()), "{name} lost: {have:?}");
    }
}

#[test]
fn the_whole_cluster_restarts_from_its_data_folders() {
    let mut c = up(3);
    wait_group(&c, 1, 3);
    for i in 0..5 {
        assert!(add_job(&c, 1 + (i % 3), &format!("kept{i}")).status.success());
    }
    c.restart_all();
    wait_group(&c, 2, 3);
    let have = jobs(&c, 3);
    for i in 0..5 {
        assert!(have.contains(&format!("kept{i}")), "kept{i} lost over a restart: {have:?}");
    }
    assert!(add_job(&c, 2, "after-restart").status.success());
}

#[test]
fn a_refused_or_malformed_command_changes_nothing() {
    let c = up(3);
    wait_group(&c, 1, 3);
    assert!(add_job(&c, 1, "j").status.success());
    let before = common::json(&["coord", "state", "--json", "--node", &c.node(2).rpc])["state"].clone();
    let out = add_job(&c, 2, "j");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("job j already exists"), "{err}");
    assert_eq!(err.trim().lines().count(), 1);
    let out = run(&["coord", "apply", "{\"op\":\"explode\"}", "--node", &c.node(3).rpc], Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a coordinator command"));
    let after = common::json(&["coord", "state", "--json", "--node", &c.node(3).rpc])["state"].clone();
    assert_eq!(before, after);
}

#[test]
fn a_dead_voter_is_replaced_and_comes_back_as_a_voter() {
    let mut c = up(4);
    wait_group(&c, 1, 4);
    let lead = leader(&c, 1).unwrap();
    let victim = (1..=4).find(|id| *id != lead).unwrap();
    kill9(c.node(victim).pid);
    wait_group(&c, lead, 3);
    assert!(!voters(&c, lead).contains(&victim));
    let via = c.node(lead).rpc.clone();
    c.restart(victim, &via);
    let back = wait_for(Duration::from_secs(20), || voters(&c, lead).contains(&victim));
    assert!(back.is_some(), "restarted node {victim} not a voter again: {:?}", status(&c, lead));
    // It caught up with the log: its own applied index reaches the leader's.
    let caught_up = wait_for(Duration::from_secs(10), || {
        let l = status(&c, lead).and_then(|s| s["applied_index"].as_u64());
        let v = status(&c, victim).and_then(|s| s["applied_index"].as_u64());
        l.is_some() && l == v
    });
    assert!(caught_up.is_some());
}

#[test]
fn there_is_never_more_than_one_leader_per_term() {
    let c = up(5);
    wait_group(&c, 1, 5);
    let mut seen: std::collections::BTreeMap<u64, u64> = Default::default();
    let mut observe = |c: &Cluster, alive: &[u64]| {
        for id in alive {
            if let Some(s) = status(c, *id)
                && let (Some(term), Some(l)) = (s["term"].as_u64(), s["leader"].as_u64())
            {
                let prev = seen.insert(term, l);
                assert!(prev.is_none() || prev == Some(l), "term {term}: leaders {prev:?} and {l}");
            }
        }
    };
    let mut alive: Vec<u64> = (1..=5).collect();
    for _ in 0..2 {
        observe(&c, &alive);
        let l = leader(&c, alive[0]).unwrap();
        kill9(c.node(l).pid);
        alive.retain(|id| *id != l);
        let new = wait_for(Duration::from_secs(15), || matches!(leader(&c, alive[0]), Some(x) if x != l));
        assert!(new.is_some());
        observe(&c, &alive);
    }
    assert!(seen.len() >= 3, "three terms observed: {seen:?}");
}

#[test]
fn a_node_far_behind_catches_up_from_a_snapshot() {
    // Snapshot every 20 entries and keep 5 before it, so the log a
    // returning node needs is gone and the leader must send a snapshot.
    let config = "[raft]\nsnapshot_every = 20\nkeep_logs = 5\n";
    let mut c = Cluster::up(common::bin(), 3, Some(config));
    wait_group(&c, 1, 3);
    let lead = leader(&c, 1).unwrap();
    let behind = (1..=3).find(|id| *id != lead).unwrap();
    kill9(c.node(behind).pid);
    wait_group(&c, lead, 2);
    for i in 0..60 {
        let out = add_job(&c, lead, &format!("s{i}"));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let via = c.node(lead).rpc.clone();
    c.restart(behind, &via);
    let caught_up = wait_for(Duration::from_secs(30), || {
        let l = status(&c, lead).and_then(|s| s["applied_index"].as_u64());
        let v = status(&c, behind).and_then(|s| s["applied_index"].as_u64());
        voters(&c, lead).contains(&behind) && l.is_some() && l == v
    });
    assert!(caught_up.is_some(), "node {behind} never caught up: {:?}", status(&c, behind));
    // Its own replica (not the leader's) holds every job, and it got there
    // through an installed snapshot.
    let local = common::json(&["coord", "state", "--local", "--json", "--node", &c.node(behind).rpc]);
    let have = local["state"]["inference"]["jobs"].as_object().unwrap();
    assert_eq!((0..60).filter(|i| have.contains_key(&format!("s{i}"))).count(), 60);
    let log = std::fs::read_to_string(c.data_dir(behind).join("restart.log")).unwrap();
    // openraft logs this at info level when a follower installs one.
    assert!(log.contains("install_full_snapshot"), "no snapshot was installed");
    assert!(c.data_dir(behind).join("raft/snapshot.bin").exists());
}
