//! bench/sdfs: SDFS on a real 5-node local cluster, beside `cp` in the
//! same run.
//!
//! 1. put and get of a 1 GiB file with the CLI, against `cp` (+ fsync) of
//!    the same file on the same disk: throughput ratio (target ≥ 0.5), and
//!    the peak RSS of every node (target: tens of MiB).
//! 2. Re-replication: kill -9 one holder of a 100 MiB file, time until
//!    the namespace lists 4 live holders again, from the kill and from the
//!    moment the leader saw the holder dead (target ≤ 5 s from detection).
//!
//! `cargo run --release -p idunno-bench --bin sdfs -- --gib 1`

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use idunno_bench::{cluster, kill9, states, status};

#[derive(Parser)]
struct Args {
    /// Size of the big file, in GiB.
    #[arg(long, default_value_t = 1.0)]
    gib: f64,
    /// Size of the re-replicated file, in MiB.
    #[arg(long, default_value_t = 100)]
    repair_mib: usize,
}

fn make_file(path: &Path, len: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut x = 0x9e3779b97f4a7c15u64;
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for w in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len());
        f.write_all(&block[..n]).expect("write");
        left -= n;
    }
    f.flush().expect("flush");
    f.get_ref().sync_all().expect("sync");
}

fn timed(cmd: &mut Command) -> f64 {
    let t = Instant::now();
    let out = cmd.output().expect("run");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    t.elapsed().as_secs_f64()
}

fn vm(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .map_or(f64::NAN, |kb: f64| kb / 1024.0)
}

fn holders(addr: &str, name: &str) -> Vec<u64> {
    let out = idunno_bench::command().args(["fs", "ls", name, "--json", "--node", addr]).output().expect("ls");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["versions"][0]["replicas"].as_array().map(|a| a.iter().filter_map(|x| x.as_u64()).collect()).unwrap_or_default()
}

#[tokio::main]
async fn main() {
    idunno_bench::use_secret(Some(idunno_auth::Role::Client));
    let args = Args::parse();
    let c = cluster(5, None);
    let work = tempfile::tempdir_in(c.path()).expect("work dir");
    let len = (args.gib * (1u64 << 30) as f64) as usize;
    let mib = len as f64 / (1 << 20) as f64;
    let src = work.path().join("big");
    make_file(&src, len);
    println!("bench/sdfs: 5-node local cluster, {mib:.0} MiB file, all on one disk");

    let copy = work.path().join("copy");
    let t_cp = timed(Command::new("sh").arg("-c").arg(format!(
        "cp {} {} && sync {}",
        src.display(),
        copy.display(),
        copy.display()
    )));
    std::fs::remove_file(&copy).ok();
    let addr = c.node(1).rpc.clone();
    let t_put = timed(idunno_bench::command().args(["fs", "put", src.to_str().unwrap(), "big", "--node", &addr]));
    let back = work.path().join("back");
    let t_get = timed(idunno_bench::command().args(["fs", "get", "big", back.to_str().unwrap(), "--node", &addr]));
    assert_eq!(std::fs::metadata(&back).unwrap().len() as usize, len);
    println!("cp + fsync:          {:.2}s  {:.0} MiB/s", t_cp, mib / t_cp);
    println!(
        "idunno fs put:       {:.2}s  {:.0} MiB/s of file ({:.0} MiB/s written: 4 replicas)  ratio to cp {:.2}",
        t_put,
        mib / t_put,
        4.0 * mib / t_put,
        t_cp / t_put
    );
    println!("idunno fs get:       {:.2}s  {:.0} MiB/s  ratio to cp {:.2}", t_get, mib / t_get, t_cp / t_get);
    println!(
        "put/get target (>= 0.5 of cp): put {} get {}",
        if t_cp / t_put >= 0.5 { "MET" } else { "MISSED" },
        if t_cp / t_get >= 0.5 { "MET" } else { "MISSED" }
    );
    let peaks: Vec<String> = c.nodes.iter().map(|n| format!("{:.0}", vm(n.pid, "VmHWM:"))).collect();
    println!("peak RSS of each node during the transfers (MiB): {}", peaks.join(", "));

    // Re-replication.
    let small = work.path().join("small");
    make_file(&small, args.repair_mib << 20);
    timed(idunno_bench::command().args(["fs", "put", small.to_str().unwrap(), "repair-me", "--node", &addr]));
    let leader = status(&addr).await.and_then(|s| s.leader).expect("leader");
    let before = holders(&addr, "repair-me");
    let victim = *before.iter().find(|h| **h != leader).expect("a holder that is not the leader");
    let leader_addr = c.node(leader).rpc.clone();
    let start = Instant::now();
    kill9(c.node(victim).pid);
    let mut detected = None;
    loop {
        if detected.is_none()
            && let Some(list) = states(&leader_addr).await
            && list.iter().any(|(id, s, _)| *id == victim && *s == "dead")
        {
            detected = Some(start.elapsed().as_secs_f64());
        }
        let now = holders(&leader_addr, "repair-me");
        if now.len() == 4 && !now.contains(&victim) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no repair after 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = start.elapsed().as_secs_f64();
    let detected = detected.unwrap_or(done);
    println!(
        "re-replication of {} MiB after kill -9 of a holder: {done:.2}s from the kill, {:.2}s from detection ({detected:.2}s); target <= 5 s from detection: {}",
        args.repair_mib,
        done - detected,
        if done - detected <= 5.0 { "MET" } else { "MISSED" }
    );
}
