//! bench/scale: what the control plane costs as the cluster's state grows
//! (issue 15). Real processes, a 5-node local cluster, unless said.
//!
//! 1. `namespace`: the SDFS namespace grows to each of `--files` (filled
//!    with namespace commits through the coordinator, 16 at a time: the
//!    entries have no bytes, which is all the namespace sees); at each
//!    size, real 512-byte puts from 8 concurrent clients (puts/s), and
//!    `get` of a real file through a follower and through the leader (p50
//!    of 200 each, one new connection per get as the in-process client
//!    makes). Targets: puts/s at the largest ≥ 0.8 × at the smallest;
//!    follower p50 ≤ 1.5 × leader p50, and ≤ 1.5 × its value at the
//!    smallest size.
//! 2. `snapshot` (after `namespace`): 100 jobs are added, then a new node
//!    joins: seconds until it has applied the leader's index (target ≤ 5 s).
//! 3. `jobs`: finite jobs (one pass) of the tiny model at batch size 1
//!    over `--inputs` inputs each, on a fresh cluster: queries/s from
//!    start to done, the leader's peak RSS (target ≤ 150 MiB), the bytes
//!    every node wrote to disk during the job against the final results'
//!    size × 4 replicas (target ≤ 2 × that), and reading the results back.
//!    Targets: queries/s at the largest ≥ 0.9 × at the smallest.
//! 4. `dispatch`: the scheduler's sans-IO core, in this process, with
//!    1,000 workers and 100 jobs: decisions (a query handed out and its
//!    report taken) per second (target ≥ 100,000).
//! 5. `encoding`: in this process, the state a snapshot holds at the
//!    largest `--files` files and 100 jobs (each with counted queries and
//!    a result segment): its size and the time to encode and decode it,
//!    as JSON (before) and in the binary form (after), medians of 5.
//! 6. `inprocess`: three nodes in this process (real sockets, real disks,
//!    the cluster secret): p50 of 300 reads and of 300 writes of a
//!    512-byte file by a layer of node 1, through its `Sdfs` in process
//!    (after) and through `sdfs::client` to its own address (before: a
//!    new TLS connection each), interleaved.
//!
//! `cargo run --release -p idunno-bench --bin scale -- --only namespace,snapshot,jobs,dispatch,encoding,inprocess`

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use idunno_bench::{Cluster, cluster, median, rss_mib, status};
use idunno_rpc::{CoordinatorClient, Limited, v1};
use serde_json::Value;
use tonic::transport::Channel;

#[derive(Parser)]
struct Args {
    /// Parts to run: namespace, snapshot, jobs, dispatch, encoding, inprocess.
    #[arg(long, value_delimiter = ',', default_value = "namespace,snapshot,jobs,dispatch,encoding,inprocess")]
    only: Vec<String>,
    /// Namespace sizes, in files.
    #[arg(long, value_delimiter = ',', default_value = "100,10000,100000")]
    files: Vec<usize>,
    /// Input set sizes of the jobs.
    #[arg(long, value_delimiter = ',', default_value = "20000,200000,2000000")]
    inputs: Vec<usize>,
    /// Real puts per namespace size.
    #[arg(long, default_value_t = 400)]
    puts: usize,
}

const NODES: u16 = 5;

fn cli(c: &Cluster, args: &[&str]) -> Value {
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["--json", "--node", &c.node(1).rpc]);
    let mut cmd = idunno_bench::command();
    let out = cmd.args(&full).output().expect("run idunno");
    assert!(out.status.success(), "idunno {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

async fn leader(c: &Cluster) -> u64 {
    for _ in 0..100 {
        if let Some(l) = status(&c.node(1).rpc).await.and_then(|s| s.leader) {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no leader");
}

async fn coordinator(addr: &str) -> CoordinatorClient<Channel> {
    CoordinatorClient::new(idunno_rpc::connect_channel(addr, Duration::from_secs(2)).await.expect("connect")).limited()
}

async fn apply(c: &mut CoordinatorClient<Channel>, cmd: &Value) {
    let json = serde_json::to_vec(cmd).expect("json");
    let r = c.apply(v1::ApplyRequest { command_json: json, forwarded: false }).await.expect("apply").into_inner();
    let v: Value = serde_json::from_slice(&r.applied_json).expect("reply");
    assert!(v.get("Ok").is_some(), "refused: {v}");
}

/// Namespace entries `fill/from .. fill/to`, committed 16 at a time.
async fn fill(addr: &str, from: usize, to: usize) {
    let next = Arc::new(AtomicUsize::new(from));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (addr, next) = (addr.to_string(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = coordinator(&addr).await;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to {
                    return;
                }
                let cmd = serde_json::json!({"op": "commit_file_version", "name": format!("fill/{i:07}"),
                    "size": 512, "blake3": format!("{:064x}", i), "replicas": [1, 2, 3, 4], "keep": 5, "now_ms": 1});
                apply(&mut c, &cmd).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("fill task");
    }
}

/// Real puts from 8 concurrent clients through every node in turn: puts/s.
async fn puts(c: &Cluster, tag: usize, n: usize) -> f64 {
    let next = Arc::new(AtomicUsize::new(0));
    let addrs: Vec<String> = c.nodes.iter().map(|n| n.rpc.clone()).collect();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..8 {
        let (addr, next) = (addrs[k % addrs.len()].clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let data = format!("{tag}/{i}/").into_bytes().repeat(512);
                idunno_sdfs::client::put(&addr, &format!("put/{tag}/{i:05}"), &data[..512]).await.expect("put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("put task");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// p50 of 50 `Stat`s of `name` and of 50 `List`s of `prefix` (its 400
/// names) through `addr`, in ms.
async fn stat_and_list(addr: &str, name: &str, prefix: &str) -> (f64, f64) {
    let ch = idunno_rpc::connect_channel(addr, Duration::from_secs(2)).await.expect("connect");
    let mut c = idunno_rpc::SdfsClient::new(ch).limited();
    let (mut stats, mut lists) = (Vec::new(), Vec::new());
    for _ in 0..50 {
        let t = Instant::now();
        c.stat(v1::StatRequest { name: name.into(), local: false }).await.expect("stat");
        stats.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        let page = c.list(v1::ListRequest { prefix: prefix.into(), ..Default::default() }).await.expect("list");
        assert!(page.into_inner().files.len() >= 100);
        lists.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    (median(&stats), median(&lists))
}

/// p50 of 200 gets of `name` through `addr`, in ms.
async fn gets(addr: &str, name: &str) -> f64 {
    let mut times = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let (_, bytes) = idunno_sdfs::client::get(addr, name, 0).await.expect("get");
        assert_eq!(bytes.len(), 512);
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    median(&times)
}

async fn namespace(args: &Args) -> Option<Cluster> {
    let c = cluster(NODES, None);
    let l = leader(&c).await;
    let follower = c.nodes.iter().find(|n| n.id != l).expect("a follower").rpc.clone();
    let leader_addr = c.node(l).rpc.clone();
    println!("namespace: 5 nodes, leader {l}; {} real puts per size from 8 clients", args.puts);
    let mut filled = 0;
    let mut rows = Vec::new();
    for &size in &args.files {
        let t = Instant::now();
        let target = size.saturating_sub(args.puts);
        fill(&leader_addr, filled, target.max(filled)).await;
        let fill_rate = (target.saturating_sub(filled)) as f64 / t.elapsed().as_secs_f64();
        filled = filled.max(target);
        let rate = puts(&c, size, args.puts).await;
        let name = format!("put/{size}/00000");
        let (f, ld) = (gets(&follower, &name).await, gets(&leader_addr, &name).await);
        let (stat, list) = stat_and_list(&follower, &name, &format!("put/{size}/")).await;
        let rss = rss_mib(c.node(l).pid).unwrap_or(f64::NAN);
        println!(
            "  {:>7} files: puts {rate:>6.1}/s   get p50 follower {f:>6.2} ms  leader {ld:>6.2} ms   stat {stat:.2} ms, list of {} {list:.2} ms (follower)   (fill {fill_rate:.0} commits/s; leader RSS {rss:.0} MiB)",
            filled + args.puts * (rows.len() + 1),
            args.puts,
        );
        rows.push((size, rate, f, ld));
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        println!(
            "  puts/s at {} ÷ at {}: {:.2} (target ≥ 0.8); follower ÷ leader p50 at {}: {:.2} (target ≤ 1.5); follower p50 at {} ÷ at {}: {:.2} (target ≤ 1.5)",
            last.0,
            first.0,
            last.1 / first.1,
            last.0,
            last.2 / last.3,
            last.0,
            first.0,
            last.2 / first.2
        );
    }
    Some(c)
}

async fn snapshot(c: &mut Cluster) {
    let l = leader(c).await;
    let mut co = coordinator(&c.node(l).rpc).await;
    for j in 0..100 {
        let cmd = serde_json::json!({"op": "add_job", "spec": {"name": format!("bench-{j}"), "model": "m",
            "inputs": "i", "labels": null, "batch_size": 1}});
        apply(&mut co, &cmd).await;
    }
    let target = status(&c.node(l).rpc).await.and_then(|s| s.applied_index).expect("leader index");
    let start = Instant::now();
    let node = c.add_node(&c.node(l).rpc.clone());
    loop {
        if let Some(s) = status(&node.rpc).await
            && s.applied_index.is_some_and(|i| i >= target)
        {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "the new node did not catch up in 120 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "snapshot: a new node joined the cluster (its namespace as above, and 100 jobs); caught up with index {target} in {:.2} s (target ≤ 5 s)",
        start.elapsed().as_secs_f64()
    );
}

fn write_inputs(path: &Path, rows: usize) {
    let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, 16), }}");
    let mut h = header.into_bytes();
    let total = 10 + h.len() + 1;
    h.resize(h.len() + (64 - total % 64) % 64, b' ');
    h.push(b'\n');
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    f.write_all(b"\x93NUMPY\x01\x00").expect("write");
    f.write_all(&(h.len() as u16).to_le_bytes()).expect("write");
    f.write_all(&h).expect("write");
    for i in 0..rows * 16 {
        f.write_all(&((i % 1000) as f32 / 1000.0).to_le_bytes()).expect("write");
    }
    f.flush().expect("flush");
}

/// Bytes written to disk so far by every node process.
fn written(c: &Cluster) -> u64 {
    c.nodes
        .iter()
        .filter_map(|n| {
            let io = std::fs::read_to_string(format!("/proc/{}/io", n.pid)).ok()?;
            io.lines().find(|l| l.starts_with("write_bytes:"))?.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

async fn jobs(args: &Args) {
    let assets = idunno_ml::onnx::assets_dir();
    let mut rates = Vec::new();
    println!("jobs: tiny-add, batch size 1, one pass, a fresh 5-node cluster per size");
    for &n in &args.inputs {
        let c = cluster(NODES, None);
        let l = leader(&c).await;
        let work = tempfile::tempdir_in(c.path()).expect("work dir");
        let x = work.path().join("x.npy");
        write_inputs(&x, n);
        cli(&c, &["fs", "put", assets.join("models/tiny-add.onnx").to_str().unwrap(), "tiny.onnx"]);
        cli(&c, &["fs", "put", x.to_str().unwrap(), "x.npy"]);
        cli(
            &c,
            &["job", "add", "big", "--model", "tiny.onnx", "--inputs", "x.npy", "--batch-size", "1", "--passes", "1"],
        );
        let before = written(&c);
        let mut peak = 0f64;
        let start = Instant::now();
        cli(&c, &["job", "start", "big"]);
        let mut last_print = Instant::now();
        loop {
            peak = peak.max(rss_mib(c.node(l).pid).unwrap_or(0.0));
            let s = cli(&c, &["job", "status", "big"]);
            if s[0]["state"] == "done" {
                break;
            }
            assert!(s[0]["state"] != "failed", "job failed: {s}");
            if last_print.elapsed() > Duration::from_secs(30) {
                last_print = Instant::now();
                println!("    … {} queries done", s[0]["queries_done"]);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let secs = start.elapsed().as_secs_f64();
        let rate = n as f64 / secs;
        let wrote = written(&c) - before;
        // The results are compacted into big.results once the job is done.
        let compacted = Instant::now();
        let ls = loop {
            let out =
                idunno_bench::command().args(["fs", "ls", "big.results", "--json", "--node", &c.node(1).rpc]).output();
            if let Ok(out) = out
                && out.status.success()
            {
                break serde_json::from_slice::<Value>(&out.stdout).expect("json");
            }
            assert!(compacted.elapsed() < Duration::from_secs(300), "big.results not written in 300 s");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let compaction = compacted.elapsed().as_secs_f64();
        // Results bytes written: every file under the job's results name
        // (the compacted segments stay a minute for readers).
        let listed = cli(&c, &["fs", "list", "big.results"]);
        let results_bytes: u64 = listed.as_array().into_iter().flatten().filter_map(|f| f["size"].as_u64()).sum();
        let size = ls["versions"][0]["size"].as_u64().unwrap_or(0);
        let t = Instant::now();
        let out = work.path().join("results.json");
        let got = idunno_bench::command()
            .args(["job", "results", "big", "--json", "--node", &c.node(1).rpc])
            .stdout(std::fs::File::create(&out).expect("out"))
            .output()
            .expect("results");
        let read = if got.status.success() {
            let rows: Vec<Value> = serde_json::from_slice(&std::fs::read(&out).expect("read")).expect("rows");
            assert_eq!(rows.len(), n, "every input has its row");
            format!("{} rows read back in {:.1} s", rows.len(), t.elapsed().as_secs_f64())
        } else {
            format!("job results failed: {}", String::from_utf8_lossy(&got.stderr).trim())
        };
        println!(
            "  {n:>8} inputs: {rate:>7.0} q/s ({secs:.1} s)   leader peak RSS {peak:.0} MiB   results written {:.2} × final size ({:.1} MB; {} files); all disk writes {:.1} MB = {:.1} × final × 4   compacted {compaction:.1} s after done; {read}",
            results_bytes as f64 / size.max(1) as f64,
            size as f64 / 1e6,
            listed.as_array().map_or(0, Vec::len),
            wrote as f64 / 1e6,
            wrote as f64 / (size.max(1) * 4) as f64,
        );
        rates.push((n, rate));
    }
    if let (Some(first), Some(last)) = (rates.first(), rates.last()) {
        println!("  q/s at {} ÷ at {}: {:.2} (target ≥ 0.9)", last.0, first.0, last.1 / first.1);
    }
}

/// As the leader drives it: workers take and report, and every 200 ms of
/// the simulated clock (at 100,000 decisions/s, every 20,000) the
/// reported queries are committed (`sync` with the new done ranges).
fn dispatch() {
    use idunno_scheduler::{Dispatcher, DispatcherConfig, JobView};
    let mut d = Dispatcher::new(DispatcherConfig { lease_ms: 10_000 });
    let mut views: Vec<JobView> = (0..100)
        .map(|j| JobView { name: format!("job-{j}"), samples: 1 << 40, passes: None, batch_size: 1, done: Vec::new() })
        .collect();
    d.sync(&views);
    let mut reported: Vec<Vec<(u64, u64)>> = vec![Vec::new(); views.len()];
    let start = Instant::now();
    let mut decisions = 0u64;
    let mut now = 1_000u64;
    while start.elapsed() < Duration::from_secs(5) {
        for w in 0..1000u64 {
            for q in d.take(w, 2, now) {
                d.report(w, &q, 1000, now);
                let j: usize = q.job[4..].parse().expect("job number");
                reported[j].push((q.start, q.start + q.len));
                decisions += 1;
                if decisions % 20_000 == 0 {
                    for (v, r) in views.iter_mut().zip(&mut reported) {
                        v.done.append(r);
                        v.done.sort_unstable();
                        v.done = v.done.iter().fold(Vec::new(), |mut m: Vec<(u64, u64)>, &(s, e)| {
                            match m.last_mut() {
                                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                                _ => m.push((s, e)),
                            }
                            m
                        });
                    }
                    d.sync(&views);
                    now += 200;
                }
            }
        }
    }
    let rate = decisions as f64 / start.elapsed().as_secs_f64();
    println!(
        "dispatch: 1,000 workers, 100 jobs: {rate:.0} decisions/s (a query handed out and its report taken; target ≥ 100,000)"
    );
}

/// The state of a cluster holding `files` files (4 replicas each) and
/// 100 running jobs that counted queries, built by applying commands.
fn grown_state(files: usize) -> idunno_state::ClusterState {
    use idunno_state::{ClusterState, DoneQuery, FileCommand, FileRef, JobCommand, JobSpec, JobState, ResultSegment};
    let mut st = ClusterState::default();
    for i in 0..files {
        let cmd = FileCommand::CommitFileVersion {
            name: format!("datasets/part-{i:07}.npy"),
            size: 512 + i as u64,
            blake3: format!("{:064x}", i as u128 * 0x9e37_79b9_7f4a_7c15),
            replicas: vec![1 + i as u64 % 5, 1 + (i as u64 + 1) % 5, 1 + (i as u64 + 2) % 5, 1 + (i as u64 + 3) % 5],
            keep: 5,
            now_ms: 1_700_000_000_000 + i as u64,
        };
        st.apply(cmd).expect("commit");
    }
    for j in 0..100u64 {
        let job = format!("job-{j:03}");
        let spec = JobSpec {
            name: job.clone(),
            model: "models/resnet.onnx".into(),
            inputs: "datasets/part-0000000.npy".into(),
            batch_size: 8,
            samples: 10_000,
            ..Default::default()
        };
        st.apply(JobCommand::AddJob { spec }).expect("add");
        st.apply(JobCommand::SetJobState { job: job.clone(), state: JobState::Running, now_ms: 1 }).expect("start");
        for k in 0..20u64 {
            let queries = (0..8)
                .map(|q| DoneQuery {
                    start: (k * 8 + q) * 16,
                    len: 8,
                    latency_us: 900 + q * 37,
                    labeled: 8,
                    correct: 7,
                    loss_count: 8,
                    loss_micro: 8 * 310_000,
                })
                .collect();
            let file = FileRef { name: format!("{job}.results.{:012}-ab", k * 8 + 1), version: 1 };
            let segment =
                ResultSegment { file, first_query: k * 8 + 1, queries: 8, rows: 64, bytes: 2048, last_pass: 0 };
            let cmd = JobCommand::CompleteQueries {
                job: job.clone(),
                expect_done: k * 8,
                queries,
                now_ms: 2 + k,
                segment: Some(segment),
            };
            st.apply(cmd).expect("complete");
        }
    }
    st
}

fn encoding(args: &Args) {
    use idunno_coordinator::store::SmData;
    let files = args.files.iter().copied().max().unwrap_or(100_000);
    let data = SmData { state: grown_state(files), ..Default::default() };
    let time = |f: &mut dyn FnMut()| {
        let ms: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        median(&ms)
    };
    let json = serde_json::to_vec(&data).expect("json");
    let binary = data.encode().expect("binary");
    let json_enc = time(&mut || drop(std::hint::black_box(serde_json::to_vec(&data).expect("json"))));
    let bin_enc = time(&mut || drop(std::hint::black_box(data.encode().expect("binary"))));
    let json_dec = time(&mut || drop(std::hint::black_box(SmData::decode(&json).expect("json back"))));
    let bin_dec = time(&mut || drop(std::hint::black_box(SmData::decode(&binary).expect("binary back"))));
    assert_eq!(SmData::decode(&binary).expect("binary back").state, data.state);
    println!(
        "encoding: the state at {files} files and 100 jobs: JSON {:.1} MB, encode {json_enc:.0} ms, decode {json_dec:.0} ms; binary {:.1} MB ({:.2} × JSON), encode {bin_enc:.0} ms ({:.2} ×), decode {bin_dec:.0} ms ({:.2} ×)",
        json.len() as f64 / 1e6,
        binary.len() as f64 / 1e6,
        binary.len() as f64 / json.len() as f64,
        bin_enc / json_enc,
        bin_dec / json_dec,
    );
}

async fn inprocess() {
    use idunno_node::{Node, NodeConfig, NodeOptions};
    let dir = tempfile::tempdir().expect("tempdir");
    let base = idunno_testkit::free_ports(204);
    let mut nodes = Vec::new();
    for id in 1..=3u16 {
        let options = NodeOptions {
            cluster: Some("bench".into()),
            id: Some(id as u64),
            addr: Some(format!("127.0.0.1:{}", base + id)),
            http: Some(format!("127.0.0.1:{}", base + 100 + id)),
            data_dir: Some(dir.path().join(format!("node-{id}"))),
            join: (id != 1).then(|| idunno_node::config::Seeds::One(format!("127.0.0.1:{}", base + 1))),
            voters: Some(3),
            replicas: Some(3),
            secret_file: Some(idunno_testkit::secret_file().to_path_buf()),
            ..Default::default()
        };
        nodes.push(Node::start(NodeConfig::resolve(options).expect("config")).await.expect("node"));
    }
    let sdfs = nodes[0].sdfs.clone();
    let addr = format!("127.0.0.1:{}", base + 1);
    let data = vec![7u8; 512];
    let started = Instant::now();
    while sdfs.put("probe", &data).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(60), "the in-process cluster never formed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (mut get_in, mut get_rpc, mut put_in, mut put_rpc) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    for _ in 0..300 {
        let t = Instant::now();
        sdfs.get("probe", 0).await.expect("in-process get");
        get_in.push(ms(t));
        let t = Instant::now();
        idunno_sdfs::client::get(&addr, "probe", 0).await.expect("rpc get");
        get_rpc.push(ms(t));
        let t = Instant::now();
        sdfs.put("probe", &data).await.expect("in-process put");
        put_in.push(ms(t));
        let t = Instant::now();
        idunno_sdfs::client::put(&addr, "probe", &data).await.expect("rpc put");
        put_rpc.push(ms(t));
    }
    let (gi, gr, pi, pr) = (median(&get_in), median(&get_rpc), median(&put_in), median(&put_rpc));
    println!(
        "inprocess: 512-byte file, node 1's own SDFS, p50 of 300: get {gi:.2} ms in process vs {gr:.2} ms over loopback gRPC ({:.2} ×); put {pi:.2} ms vs {pr:.2} ms ({:.2} ×)",
        gi / gr,
        pi / pr
    );
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::main]
async fn main() {
    idunno_bench::use_secret(Some(idunno_auth::Role::Node));
    let args = Args::parse();
    println!("bench/scale: binary {}", idunno_bench::idunno_bin().display());
    let want = |p: &str| args.only.iter().any(|o| o == p);
    let mut ns = None;
    if want("namespace") {
        ns = namespace(&args).await;
    }
    if want("snapshot") {
        let mut c = match ns.take() {
            Some(c) => c,
            None => cluster(NODES, None),
        };
        snapshot(&mut c).await;
    }
    drop(ns);
    if want("jobs") {
        jobs(&args).await;
    }
    if want("dispatch") {
        dispatch();
    }
    if want("encoding") {
        encoding(&args);
    }
    if want("inprocess") {
        inprocess().await;
    }
}
