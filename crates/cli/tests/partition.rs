//! A minority of the coordinator group partitioned away, with real node
//! processes in network namespaces (root only; skipped with a message
//! otherwise): it cannot commit, the majority elects a new leader and goes
//! on, there is never more than one leader per term, and after healing the
//! minority catches up and rejoins the group.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use idunno_testkit::netns::{self, NetnsCluster};
use idunno_testkit::wait_for;
use serde_json::Value;

fn add_job(c: &NetnsCluster, via: u32, name: &str) -> std::process::Output {
    let cmd = format!(
        r#"{{"op":"add_job","spec":{{"name":"{name}","model":"m","inputs":"i","labels":null,"batch_size":1}}}}"#
    );
    c.cli(via, &["coord", "apply", &cmd], Duration::from_secs(30))
}

fn jobs(c: &NetnsCluster, via: u32) -> Option<Vec<String>> {
    let out = c.cli(via, &["coord", "state", "--json"], Duration::from_secs(20));
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(v["state"]["inference"]["jobs"].as_object()?.keys().cloned().collect())
}

fn leader(c: &NetnsCluster, i: u32) -> Option<u64> {
    c.status(i)?["leader"].as_u64()
}

/// Record every (term → leader) claim; panic on two leaders in one term.
fn observe(c: &NetnsCluster, seen: &mut BTreeMap<u64, u64>) {
    for i in 1..=c.n {
        if let Some(s) = c.status(i)
            && let (Some(t), Some(l)) = (s["term"].as_u64(), s["leader"].as_u64())
        {
            let prev = seen.insert(t, l);
            assert!(prev.is_none() || prev == Some(l), "term {t} has two leaders: {prev:?} and {l}");
        }
    }
}

#[test]
fn a_partitioned_minority_cannot_commit_and_catches_up_after_healing() {
    if let Some(why) = netns::unavailable() {
        println!("SKIPPED: partition test {why}");
        return;
    }
    let mut c = NetnsCluster::new(common::bin(), 5);
    c.start(1);
    assert!(wait_for(Duration::from_secs(10), || c.status(1).is_some()).is_some(), "node 1: {}", c.log(1));
    for i in 2..=5 {
        c.start(i);
    }
    let formed = wait_for(Duration::from_secs(30), || {
        c.status(1).is_some_and(|s| s["voters"].as_array().is_some_and(|v| v.len() == 5))
    });
    assert!(formed.is_some(), "group of 5 never formed: {:?}", c.status(1));
    for k in 0..3 {
        let out = add_job(&c, 1 + k, &format!("before{k}"));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut seen = BTreeMap::new();
    observe(&c, &mut seen);

    // Cut the leader and one more node off from the other three.
    let old = leader(&c, 1).expect("leader") as u32;
    let other = (1..=5).find(|i| *i != old).unwrap();
    let minority = [old, other];
    let majority: Vec<u32> = (1..=5).filter(|i| !minority.contains(i)).collect();
    c.partition(&minority);

    let m = majority[0];
    let elected = wait_for(Duration::from_secs(20), || leader(&c, m).is_some_and(|l| !minority.contains(&(l as u32))));
    assert!(elected.is_some(), "the majority elected no leader: {:?}", c.status(m));
    println!("majority elected a new leader {:?} after the partition", elected.unwrap());
    let out = add_job(&c, majority[1], "during");
    assert!(out.status.success(), "majority write failed: {}", String::from_utf8_lossy(&out.stderr));

    // The old leader cannot commit: its write fails instead of being acked.
    let out = add_job(&c, old, "minority");
    assert!(!out.status.success(), "the minority acknowledged a write");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not committed") || err.contains("no coordinator leader"), "{err}");
    observe(&c, &mut seen);

    c.heal();
    let agreed = wait_for(Duration::from_secs(40), || {
        let leaders: Vec<Option<u64>> = (1..=5).map(|i| leader(&c, i)).collect();
        leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0])
    });
    assert!(agreed.is_some(), "after healing the nodes do not agree on a leader");
    observe(&c, &mut seen);
    let whole = wait_for(Duration::from_secs(40), || {
        c.status(m).is_some_and(|s| s["voters"].as_array().is_some_and(|v| v.len() == 5))
    });
    assert!(whole.is_some(), "the group did not grow back to 5 voters: {:?}", c.status(m));
    for i in minority {
        let have = jobs(&c, i).expect("state readable through a former minority node");
        for name in ["before0", "before1", "before2", "during"] {
            assert!(have.contains(&name.to_string()), "node {i} lacks {name}: {have:?}");
        }
        assert!(!have.contains(&"minority".to_string()), "an unacknowledged minority write was applied");
    }
    println!("terms and leaders observed: {seen:?}");
}
