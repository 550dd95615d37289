//! bench/coordinator: the coordinator group on a real 5-node local cluster.
//!
//! 1. Failover: kill -9 the leader, time until a survivor reports a new
//!    leader and until a write through a survivor is acknowledged; restart
//!    the victim, let it rejoin, repeat. Target: new leader ≤ 2 s median.
//! 2. Commit throughput and latency of small commands (`record_progress`),
//!    one client in a loop, then 16 concurrent clients, through a follower
//!    (forwarded) and through the leader.
//!
//! `cargo run --release -p idunno-bench --bin coordinator -- --kills 10`

use std::time::{Duration, Instant};

use clap::Parser;
use idunno_bench::{Cluster, cluster, kill9, median, status, summary};
use idunno_rpc::{CoordinatorClient, Limited, v1};
use tonic::transport::Channel;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10)]
    kills: usize,
    /// Commands per throughput phase.
    #[arg(long, default_value_t = 2000)]
    commands: usize,
}

const NODES: u16 = 5;

async fn client(addr: &str) -> CoordinatorClient<Channel> {
    CoordinatorClient::new(idunno_rpc::connect_channel(addr, Duration::from_secs(2)).await.expect("connect")).limited()
}

async fn apply(c: &mut CoordinatorClient<Channel>, json: &[u8]) -> Result<(), String> {
    let mut req = tonic::Request::new(v1::ApplyRequest { command_json: json.to_vec(), forwarded: false });
    req.set_timeout(Duration::from_secs(15));
    let r = c.apply(req).await.map_err(|s| s.message().to_string())?.into_inner();
    let v: serde_json::Value = serde_json::from_slice(&r.applied_json).map_err(|e| e.to_string())?;
    if v.get("Ok").is_some() { Ok(()) } else { Err(format!("refused: {v}")) }
}

async fn leader_of(c: &Cluster, via: u64) -> Option<u64> {
    status(&c.node(via).rpc).await?.leader
}

async fn wait_voters(c: &Cluster, via: u64, n: usize) {
    let start = Instant::now();
    loop {
        if let Some(s) = status(&c.node(via).rpc).await
            && s.voters.len() == n
            && s.leader.is_some()
        {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "group did not reach {n} voters");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const JOB: &str = r#"{"op":"add_job","spec":{"name":"bench","model":"m","inputs":"i","labels":null,"batch_size":1}}"#;
const PROGRESS: &str = r#"{"op":"record_progress","job":"bench","queries":1,"inputs":1}"#;

#[tokio::main]
async fn main() {
    idunno_bench::use_secret(Some(idunno_auth::Role::Node));
    let args = Args::parse();
    let mut c = cluster(NODES, None);
    wait_voters(&c, 1, NODES as usize).await;
    println!("bench/coordinator: {NODES}-node local cluster, binary {}", idunno_bench::idunno_bin().display());

    let mut elected = Vec::new();
    let mut serving = Vec::new();
    for k in 0..args.kills {
        let old = leader_of(&c, 1 + (k as u64 % NODES as u64)).await.expect("leader");
        let survivor = (1..=NODES as u64).find(|id| *id != old).unwrap();
        let start = Instant::now();
        kill9(c.node(old).pid);
        let mut t_elected = None;
        loop {
            if t_elected.is_none()
                && let Some(l) = leader_of(&c, survivor).await
                && l != old
            {
                t_elected = Some(start.elapsed().as_secs_f64());
            }
            if t_elected.is_some() {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "no new leader after 20 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut cl = client(&c.node(survivor).rpc).await;
        let cmd = format!(
            r#"{{"op":"add_job","spec":{{"name":"k{k}","model":"m","inputs":"i","labels":null,"batch_size":1}}}}"#
        );
        apply(&mut cl, cmd.as_bytes()).await.expect("write after failover");
        let t_serving = start.elapsed().as_secs_f64();
        println!(
            "  kill {:>2}: leader {old} -> new leader after {:.2}s, first write acknowledged after {t_serving:.2}s",
            k + 1,
            t_elected.unwrap()
        );
        elected.push(t_elected.unwrap());
        serving.push(t_serving);
        c.restart(old, &c.node(survivor).rpc.clone());
        wait_voters(&c, survivor, NODES as usize).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!("failover, kill -9 leader -> new leader seen:   {}", summary(&elected));
    println!("failover, kill -9 leader -> write acknowledged: {}", summary(&serving));
    println!("failover target (new leader <= 2 s median): {}", if median(&elected) <= 2.0 { "MET" } else { "MISSED" });

    // Throughput and latency.
    let lead = leader_of(&c, 1).await.expect("leader");
    let follower = (1..=NODES as u64).find(|id| *id != lead).unwrap();
    apply(&mut client(&c.node(lead).rpc).await, JOB.as_bytes()).await.expect("add bench job");
    for (label, via) in [("leader", lead), ("follower (forwarded)", follower)] {
        let addr = c.node(via).rpc.clone();
        let mut cl = client(&addr).await;
        let mut lat = Vec::new();
        let start = Instant::now();
        for _ in 0..args.commands / 4 {
            let t = Instant::now();
            apply(&mut cl, PROGRESS.as_bytes()).await.expect("apply");
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
        lat.sort_by(|a, b| a.total_cmp(b));
        let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
        println!(
            "one client via {label}: {rate:.0} commits/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2}",
            p(0.5),
            p(0.9),
            p(0.99)
        );

        let clients = 16;
        let per = args.commands / clients;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let addr = addr.clone();
            tasks.push(tokio::spawn(async move {
                let mut cl = client(&addr).await;
                for _ in 0..per {
                    apply(&mut cl, PROGRESS.as_bytes()).await.expect("apply");
                }
            }));
        }
        for t in tasks {
            t.await.expect("client task");
        }
        let rate = (clients * per) as f64 / start.elapsed().as_secs_f64();
        println!("{clients} clients via {label}: {rate:.0} commits/s");
    }
}
