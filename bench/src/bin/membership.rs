//! bench/membership: failure-detection time and false positives of SWIM on
//! a real 5-node local cluster (real processes, real UDP on loopback).
//!
//! 0. Idle memory: resident set of every node of a fresh cluster
//!    (target ≤ 50 MB).
//! 1. Detection: kill -9 one node (then two, then three at once), and time
//!    until every survivor lists each victim as dead; restart the victims
//!    and repeat. Targets: median ≤ 2 s, worst ≤ 4 s.
//! 2. False positives: 5% of every node's outgoing SWIM datagrams dropped
//!    (in-process, at the UDP layer) for several minutes; count members
//!    declared dead while alive. Target: 0.
//!
//! `cargo run --release -p idunno-bench --bin membership -- --kills 20 --fp-minutes 5`

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Parser;
use idunno_bench::{Cluster, cluster, kill9, median, rss_mib, states, status, summary};

#[derive(Parser)]
struct Args {
    /// Single-node kills to time.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Rounds of two simultaneous kills, and of three.
    #[arg(long, default_value_t = 5)]
    multi_rounds: usize,
    /// Minutes of 5% packet loss for the false-positive count (0 skips).
    #[arg(long, default_value_t = 5.0)]
    fp_minutes: f64,
    /// Loss rate for the false-positive phase.
    #[arg(long, default_value_t = 0.05)]
    loss: f64,
}

const NODES: u16 = 5;

#[tokio::main]
async fn main() {
    idunno_bench::use_secret(Some(idunno_auth::Role::Client));
    let args = Args::parse();
    println!("bench/membership: {NODES}-node local cluster, binary {}", idunno_bench::idunno_bin().display());
    detection(&args).await;
    if args.fp_minutes > 0.0 {
        false_positives(&args).await;
    }
}

/// Kill `victims` at once; return, per victim, the time until the last
/// survivor listed it dead (the "every survivor" figure), and every
/// individual survivor's time.
async fn kill_and_time(c: &Cluster, victims: &[u64]) -> Option<(Vec<f64>, Vec<f64>)> {
    let survivors: Vec<_> = c.nodes.iter().filter(|n| !victims.contains(&n.id)).cloned().collect();
    let start = Instant::now();
    for v in victims {
        kill9(c.nodes.iter().find(|n| n.id == *v)?.pid);
    }
    let mut seen: HashMap<(u64, u64), f64> = HashMap::new();
    let want = survivors.len() * victims.len();
    while seen.len() < want {
        if start.elapsed() > Duration::from_secs(20) {
            eprintln!("  victims {victims:?} not all detected within 20 s: {seen:?}");
            return None;
        }
        for s in &survivors {
            if let Some(list) = states(&s.rpc).await {
                let t = start.elapsed().as_secs_f64();
                for (id, state, _) in list {
                    if victims.contains(&id) && state == "dead" {
                        seen.entry((s.id, id)).or_insert(t);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let per_victim = victims
        .iter()
        .map(|v| seen.iter().filter(|((_, id), _)| id == v).map(|(_, t)| *t).fold(0.0, f64::max))
        .collect();
    Some((per_victim, seen.values().copied().collect()))
}

async fn restart_and_settle(c: &mut Cluster, victims: &[u64]) {
    let via = c.nodes.iter().find(|n| !victims.contains(&n.id)).map(|n| n.rpc.clone()).expect("a survivor");
    for v in victims {
        c.restart(*v, &via);
    }
    let start = Instant::now();
    loop {
        let mut all = true;
        for n in &c.nodes {
            match states(&n.rpc).await {
                Some(l) => all &= l.iter().filter(|(_, s, _)| *s == "alive").count() == NODES as usize,
                None => all = false,
            }
        }
        if all {
            break;
        }
        if start.elapsed() > Duration::from_secs(30) {
            panic!("restarted nodes {victims:?} did not rejoin within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let gossip about the rejoin die down so the next kill starts clean.
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

async fn detection(args: &Args) {
    let mut c = cluster(NODES, None);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss: Vec<f64> = c.nodes.iter().filter_map(|n| rss_mib(n.pid)).collect();
    let worst = rss.iter().copied().fold(0.0, f64::max);
    println!(
        "idle node memory (RSS, MiB): {} -> worst {worst:.1} MiB; target <= 50 MB: {}",
        rss.iter().map(|r| format!("{r:.1}")).collect::<Vec<_>>().join(", "),
        if worst <= 50.0 { "MET" } else { "MISSED" }
    );
    let mut all_survivors = Vec::new();
    let mut each_observer = Vec::new();
    for k in 0..args.kills {
        let victim = (k % NODES as usize) as u64 + 1;
        if let Some((per_victim, each)) = kill_and_time(&c, &[victim]).await {
            println!("  kill {:>2}: node {victim} dead at every survivor after {:.2}s", k + 1, per_victim[0]);
            all_survivors.extend(per_victim);
            each_observer.extend(each);
        }
        restart_and_settle(&mut c, &[victim]).await;
    }
    println!("single kill, until EVERY survivor lists it dead: {}", summary(&all_survivors));
    println!("single kill, per survivor:                       {}", summary(&each_observer));

    for (count, label) in [(2usize, "two"), (3, "three")] {
        let mut times = Vec::new();
        for r in 0..args.multi_rounds {
            let victims: Vec<u64> = (0..count).map(|i| ((r + i) % NODES as usize) as u64 + 1).collect();
            if let Some((per_victim, _)) = kill_and_time(&c, &victims).await {
                println!(
                    "  {label} at once {victims:?}: all dead at every survivor after {:.2}s",
                    per_victim.iter().copied().fold(0.0, f64::max)
                );
                times.extend(per_victim);
            }
            restart_and_settle(&mut c, &victims).await;
        }
        println!("{label} simultaneous kills, per victim until every survivor knows: {}", summary(&times));
    }
    let ok = median(&all_survivors) <= 2.0 && all_survivors.iter().all(|t| *t <= 4.0);
    println!("detection target (median <= 2 s, worst <= 4 s): {}", if ok { "MET" } else { "MISSED" });
}

async fn false_positives(args: &Args) {
    let config = format!("udp_loss = {}\n", args.loss);
    let c = cluster(NODES, Some(&config));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let start_gen: HashMap<u64, u64> = {
        let mut m = HashMap::new();
        for n in &c.nodes {
            m.insert(n.id, status(&n.rpc).await.expect("status").generation);
        }
        m
    };
    let dur = Duration::from_secs_f64(args.fp_minutes * 60.0);
    println!(
        "false positives: {:.0}% outgoing UDP loss at every node for {:.1} min",
        args.loss * 100.0,
        args.fp_minutes
    );
    let start = Instant::now();
    let mut suspect_obs = 0usize;
    let mut dead_obs = 0usize;
    let mut polls = 0usize;
    while start.elapsed() < dur {
        for n in &c.nodes {
            if let Some(list) = states(&n.rpc).await {
                polls += 1;
                suspect_obs += list.iter().filter(|(_, s, _)| *s == "suspect").count();
                dead_obs += list.iter().filter(|(_, s, _)| *s == "dead").count();
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut dead_events = 0;
    let mut renewals = 0;
    let mut datagrams = 0;
    for n in &c.nodes {
        let s = status(&n.rpc).await.expect("status");
        let swim = s.swim.unwrap_or_default();
        dead_events += swim.dead_events;
        renewals += swim.self_renewals;
        datagrams += swim.datagrams_in;
        if s.generation != start_gen[&n.id] {
            println!("  node {} changed generation (it was declared dead and rejoined)", n.id);
        }
    }
    println!(
        "  {polls} member-list polls; member rows seen suspect: {suspect_obs}, seen dead: {dead_obs}; datagrams received: {datagrams}"
    );
    println!(
        "false positives (dead declarations of live members, summed over observers): {dead_events}; self-renewals: {renewals}"
    );
    println!("false-positive target (0): {}", if dead_events == 0 { "MET" } else { "MISSED" });
}
