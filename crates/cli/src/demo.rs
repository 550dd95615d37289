//! `idunno demo`: the whole story on a local cluster, told by the
//! client's own commands. Five nodes come up; EfficientNet-Lite0 with real
//! photos and the MNIST digits go into SDFS; two workers train an MNIST
//! classifier with `idunno train`; EfficientNet and the freshly trained
//! model run as jobs side by side (costs a hundredfold apart, equal query
//! rates); two workers are killed at once, then the coordinator leader;
//! the jobs go on with every query counted once; the photos' classes and
//! the re-replicated model end it. The models and data come from
//! `scripts/setup` (the assets folder).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use idunno_rpc::{JobsClient, Limited, v1};
use serde_json::Value;

use crate::cluster::{self, ClusterFile, UpArgs};
use crate::error::CliError;
use crate::fs::FsCommand;
use crate::job::JobCommand;
use crate::member::MemberCommand;
use crate::output::Output;

#[derive(Args)]
pub struct DemoArgs {
    /// Folder for the demo cluster (emptied first).
    #[arg(long, default_value = ".idunno/demo")]
    dir: PathBuf,
    /// Node i listens on BASE+2(i-1).
    #[arg(long, default_value_t = 8088)]
    base_port: u16,
    /// Keep the cluster up this many seconds at the end, to look at the
    /// dashboard (its address is printed at the start), then stop it.
    #[arg(long, default_value_t = 0)]
    hold: u64,
}

const ASSETS: &[&str] = &[
    "models/efficientnet-lite0.onnx",
    "datasets/photos/photos.npy",
    "datasets/photos/photos-labels.npy",
    "datasets/photos/photos.txt",
    "datasets/mnist/train-images-idx3-ubyte",
    "datasets/mnist/train-labels-idx1-ubyte",
    "datasets/mnist/t10k-images-idx3-ubyte",
    "datasets/mnist/t10k-labels-idx1-ubyte",
    "lib/libonnxruntime.so.1.31.1",
];

/// Wait a full rate window and then some, so that the rates and the
/// prediction shown next are those of the cluster as it is now, not a
/// mix with before. The measured rate counts queries when their results
/// are committed, which on a busy disk lags their run by a few seconds
/// (results are written to SDFS and the count through Raft, both
/// synced); the prediction is recorded every 3 s. With only 11 s after a
/// leader kill, the window still held the pause of the kill and the
/// demo's check of predicted/measured failed (0.39) on a loaded machine.
async fn steady() {
    println!("(rates and costs are over the last 10 s; results are counted once committed: waiting 16 s)");
    tokio::time::sleep(Duration::from_secs(16)).await;
}

fn say(what: &str) {
    println!("\n== {what}");
}

pub async fn run(args: DemoArgs) -> Result<(), CliError> {
    let assets = idunno_ml::onnx::assets_dir();
    if let Some(missing) = ASSETS.iter().find(|a| !assets.join(a).exists()) {
        return Err(CliError::bad_input(format!(
            "{} is missing: run ./scripts/setup first (it fetches the models and data sets)",
            assets.join(missing).display()
        )));
    }
    let table = Output { json: false };
    let _ = cluster::down(&args.dir, Output { json: true }).await;
    let _ = std::fs::remove_dir_all(&args.dir);
    say("idunno up --nodes 5");
    cluster::up(UpArgs::local(5, args.dir.clone(), args.base_port), &Default::default(), table).await?;
    let file = ClusterFile::load(&args.dir)?;
    let story = Story { file, assets, out: table, dir: args.dir.clone() };
    say("the dashboard: watch the rates, the kills and the recovery live (every node serves it)");
    for id in [1, 2] {
        println!("  node {id}: {}", story.dashboard(id).unwrap_or_else(|| "-".into()));
    }
    let result = story.tell().await;
    if result.is_ok() && args.hold > 0 {
        let survivor = story.file.nodes.iter().find(|n| crate::cluster::is_running(n.pid)).map(|n| n.id);
        say(&format!(
            "holding the cluster up for {} s (--hold): the dashboard, the metrics and `idunno events`",
            args.hold
        ));
        if let Some(url) = survivor.and_then(|id| story.dashboard(id)) {
            println!("  {url}");
        }
        tokio::time::sleep(Duration::from_secs(args.hold)).await;
    }
    say("idunno down");
    cluster::down(&args.dir, table).await?;
    result
}

struct Story {
    file: ClusterFile,
    assets: PathBuf,
    out: Output,
    dir: PathBuf,
}

impl Story {
    /// Node `id`'s dashboard address, with the login token.
    fn dashboard(&self, id: u64) -> Option<String> {
        let node = self.file.nodes.iter().find(|n| n.id == id)?;
        match &self.file.secret_file {
            Some(f) => {
                let ring = idunno_auth::Keyring::read(std::path::Path::new(f), &[]).ok()?;
                Some(format!("https://{}/?token={}", node.http, idunno_auth::TokenCheck::new(&ring).primary()))
            }
            None => Some(format!("http://{}/", node.http)),
        }
    }

    fn rpc(&self, id: u64) -> Option<String> {
        self.file.nodes.iter().find(|n| n.id == id).map(|n| n.rpc.clone())
    }

    fn pid(&self, id: u64) -> Option<u32> {
        self.file.nodes.iter().find(|n| n.id == id).map(|n| n.pid)
    }

    async fn put(&self, node: &str, asset: &str, name: &str) -> Result<(), CliError> {
        let cmd = FsCommand::Put { local: self.assets.join(asset), name: name.to_string() };
        crate::fs::run(cmd, Some(node.to_string()), self.out).await
    }

    async fn job(&self, node: &str, cmd: JobCommand) -> Result<(), CliError> {
        crate::job::run(cmd, Some(node.to_string()), self.out).await
    }

    async fn status_json(&self, node: &str) -> Result<Value, CliError> {
        let ch = idunno_rpc::connect_channel(node, Duration::from_secs(10)).await?;
        let r = JobsClient::new(ch)
            .limited()
            .status(v1::JobQuery { job: String::new(), explain: false })
            .await
            .map_err(|s| idunno_rpc::RpcError::from_status(node, s))?;
        serde_json::from_slice(&r.into_inner().json).map_err(|e| CliError::failed(e.to_string()))
    }

    async fn leader(&self, node: &str) -> Option<u64> {
        let mut c = crate::target::connect_quick(node).await.ok()?;
        c.status(v1::StatusRequest {}).await.ok()?.into_inner().leader
    }

    async fn dead_seen_by(&self, node: &str) -> usize {
        let Ok(mut c) = crate::target::connect_quick(node).await else { return 0 };
        let Ok(r) = c.members(v1::MembersRequest {}).await else { return 0 };
        r.into_inner().members.iter().filter(|m| m.state() == v1::MemberState::Dead).count()
    }

    async fn tell(&self) -> Result<(), CliError> {
        let first = self.rpc(1).ok_or_else(|| CliError::failed("no node 1"))?;
        crate::member::run(MemberCommand::List, Some(first.clone()), self.out).await?;

        say("SDFS: EfficientNet-Lite0, 14 real photos and their labels (4 replicas each)");
        self.put(&first, "models/efficientnet-lite0.onnx", "models/effnet-lite0.onnx").await?;
        self.put(&first, "datasets/photos/photos.npy", "data/photos.npy").await?;
        self.put(&first, "datasets/photos/photos-labels.npy", "data/photos-labels.npy").await?;
        say("SDFS: MNIST, 60,000 training and 10,000 test digits with their labels");
        for f in
            ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
        {
            self.put(&first, &format!("datasets/mnist/{f}"), &format!("mnist/{f}")).await?;
        }

        say("idunno train digits: an MLP, 2 epochs, data-parallel over 2 workers, checkpoints in SDFS");
        let req = v1::TrainRequest {
            name: "train-digits".into(),
            arch: "mlp".into(),
            inputs: "mnist/train-images-idx3-ubyte".into(),
            labels: "mnist/train-labels-idx1-ubyte".into(),
            test_inputs: "mnist/t10k-images-idx3-ubyte".into(),
            test_labels: "mnist/t10k-labels-idx1-ubyte".into(),
            epochs: 2,
            batch_size: 64,
            workers: 2,
            lr: "0.001".into(),
            out: "models/digits-mlp".into(),
            checkpoint_every: 200,
            seed: 1,
        };
        let trained = crate::train::submit(req, Some(first.clone()), self.out, false).await?;
        let trained_acc = trained["test_accuracy"].as_f64();

        say("job 1: EfficientNet-Lite0 over the photos, 2 per query, looping");
        let add = |job: &str, model: &str, inputs: Vec<String>, labels: Option<&str>, batch| JobCommand::Add {
            job: job.into(),
            model: model.into(),
            inputs,
            labels: labels.map(String::from),
            batch_size: batch,
            passes: None,
            output: None,
            transpose: Vec::new(),
        };
        let photos = add(
            "photos",
            "models/effnet-lite0.onnx",
            vec!["data/photos.npy".into()],
            Some("data/photos-labels.npy"),
            2,
        );
        self.job(&first, photos).await?;
        say(
            "job 2: the model just trained, over the 10,000 test digits, 10 per query, looping (added now, started later)",
        );
        let digits = vec!["mnist/t10k-images-idx3-ubyte".to_string()];
        self.job(&first, add("digits", "models/digits-mlp", digits, Some("mnist/t10k-labels-idx1-ubyte"), 10)).await?;
        say("start job 1; job 2 three seconds later");
        self.job(&first, JobCommand::Start { job: "photos".into() }).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let start = Instant::now();
        self.job(&first, JobCommand::Start { job: "digits".into() }).await?;
        let mut first_query = None;
        while first_query.is_none() && start.elapsed() < Duration::from_secs(10) {
            if self.counts(&first).await.is_some_and(|c| c[1] > 0) {
                first_query = Some(start.elapsed().as_secs_f64());
            } else {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        println!("its first query was counted {} after `job start`", secs(first_query));
        steady().await;
        let (ratio, share) = self.show_rates(&first).await?;

        let leader = self.leader(&first).await.ok_or_else(|| CliError::failed("no coordinator leader"))?;
        let victims: Vec<u64> = [5, 4, 3, 2].into_iter().filter(|i| *i != leader).take(2).collect();
        let survivor = (1..=5).find(|i| *i != leader && !victims.contains(i)).unwrap_or(leader);
        let via = self.rpc(survivor).unwrap_or(first.clone());
        say(&format!("kill -9 workers {victims:?} at the same moment"));
        let (workers_back, detected) = self.kill(&victims, &via, Event::BothDead).await;
        println!(
            "both listed dead after {}; their queries went back to the queue; rates back within 20% after {}",
            secs(detected),
            secs(workers_back)
        );
        steady().await;
        self.show_rates(&via).await?;

        say(&format!("kill -9 the coordinator leader (node {leader})"));
        let (leader_back, elected) = self.kill(&[leader], &via, Event::NewLeader(leader)).await;
        println!(
            "a new leader serves after {}; the jobs go on from the replicated state; rates back after {}",
            secs(elected),
            secs(leader_back)
        );
        steady().await;
        self.show_rates(&via).await?;
        crate::member::run(MemberCommand::List, Some(via.clone()), self.out).await?;

        say("stop the jobs: their counts, and one result row per photo");
        self.job(&via, JobCommand::Stop { job: "photos".into() }).await?;
        self.job(&via, JobCommand::Stop { job: "digits".into() }).await?;
        self.summary(&via).await?;

        say("the trained model served once over the 10,000 test digits: the accuracy training measured");
        let mut once = add("digits-once", "models/digits-mlp", vec!["mnist/t10k-images-idx3-ubyte".into()], None, 100);
        if let JobCommand::Add { labels, passes, .. } = &mut once {
            *labels = Some("mnist/t10k-labels-idx1-ubyte".into());
            *passes = Some(1);
        }
        self.job(&via, once).await?;
        self.job(&via, JobCommand::Start { job: "digits-once".into() }).await?;
        let t0 = Instant::now();
        while self.state_of(&via, "digits-once").await.as_deref() == Some("running")
            && t0.elapsed() < Duration::from_secs(60)
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!(
            "  served: {} of the test digits right; training reported {}",
            pct(self.accuracy_of(&via, "digits-once").await),
            pct(trained_acc)
        );

        say("SDFS after the kills: the model re-replicated on the survivors");
        let ls = FsCommand::Ls { name: "models/effnet-lite0.onnx".into(), local: false };
        crate::fs::run(ls, Some(via.clone()), self.out).await?;

        say("the timeline: what happened, as every node's `idunno events` tells it");
        crate::events::print_all(Some(via.clone()), self.out).await?;

        say("the four measurements (bench/fairness repeats them over many trials)");
        println!(
            "  1. from one job to two: EfficientNet holds {} of the workers' time; query rates max/min - 1 = {} (target 0.05)",
            share.map_or("-".into(), |s| format!("{:.0}%", s * 100.0)),
            ratio.map_or("-".into(), |r| format!("{r:.3}"))
        );
        println!("  2. second job's first query: {} after `job start` (target 1 s)", secs(first_query));
        println!("  3. two workers killed at once: rates back within 20% after {} (target 3 s)", secs(workers_back));
        println!("  4. coordinator leader killed: rates back within 20% after {} (target 3 s)", secs(leader_back));
        println!("\nnode logs and data: {}", self.dir.display());
        Ok(())
    }

    /// Print the jobs' status and assignments; the rate ratio and
    /// EfficientNet's mean share of the workers' time, when known.
    async fn show_rates(&self, node: &str) -> Result<(Option<f64>, Option<f64>), CliError> {
        self.job(node, JobCommand::Status { job: None }).await?;
        self.job(node, JobCommand::Assignments).await?;
        let doc = self.status_json(node).await?;
        let jobs: Vec<&Value> = doc.as_array().into_iter().flatten().filter(|j| j["kind"] != "train").collect();
        let rates: Vec<f64> = jobs.iter().filter_map(|j| j["query_rate"].as_f64()).collect();
        let (max, min) = rates.iter().fold((0f64, f64::MAX), |(a, b), r| (a.max(*r), b.min(*r)));
        let ratio = (rates.len() > 1 && min > 0.0).then(|| max / min - 1.0);
        if let Some(r) = ratio {
            println!("query rates {rates:?}: max/min - 1 = {r:.3} (SPEC: within 0.2)");
        }
        // C5: what the fair split predicted against what it did.
        let measured = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
        if let Some(p) = jobs.iter().find_map(|j| j["predicted_rate"].as_f64()).filter(|_| measured > 0.0) {
            println!(
                "predicted {p:.1} q/s per job, measured {measured:.1}: predicted/measured - 1 = {:.3}",
                p / measured - 1.0
            );
        }
        let share = jobs.iter().find(|j| j["job"] == "photos").and_then(|j| {
            let shares: Vec<f64> = j["worker_shares"].as_object()?.values().filter_map(Value::as_f64).collect();
            (!shares.is_empty()).then(|| shares.iter().sum::<f64>() / shares.len() as f64)
        });
        Ok((ratio, share))
    }

    async fn state_of(&self, node: &str, job: &str) -> Option<String> {
        let doc = self.status_json(node).await.ok()?;
        doc.as_array()?.iter().find(|j| j["job"] == job)?["state"].as_str().map(String::from)
    }

    /// The accuracy `job status` gives a job.
    async fn accuracy_of(&self, node: &str, job: &str) -> Option<f64> {
        let doc = self.status_json(node).await.ok()?;
        doc.as_array()?.iter().find(|j| j["job"] == job)?["accuracy"].as_f64()
    }

    /// Both jobs' counted queries (photos, digits).
    async fn counts(&self, node: &str) -> Option<[u64; 2]> {
        let doc = tokio::time::timeout(Duration::from_millis(500), self.status_json(node)).await.ok()?.ok()?;
        let get = |name: &str| doc.as_array()?.iter().find(|j| j["job"] == name)?["queries_done"].as_u64();
        Some([get("photos")?, get("digits")?])
    }

    /// Kill `victims` with SIGKILL and watch through `via`: seconds until
    /// both jobs' rates (over a trailing second, starting after the kill)
    /// are back within 20% of their rates before it, and until `event`.
    async fn kill(&self, victims: &[u64], via: &str, event: Event) -> (Option<f64>, Option<f64>) {
        let mut meter = Meter::default();
        let mut before = Vec::new();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            if let Some(r) = self.counts(via).await.and_then(|c| meter.push(c)) {
                before.push(r);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let n = before.len().max(1) as f64;
        let normal = [0, 1].map(|k| before.iter().map(|r| r[k]).sum::<f64>() / n);
        let killed = Instant::now();
        for v in victims {
            if let Some(pid) = self.pid(*v) {
                // SAFETY: a signal to a process this cluster started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        let mut meter = Meter::default();
        let (mut back, mut seen) = (None, None);
        while (back.is_none() || seen.is_none()) && killed.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let rates = self.counts(via).await.and_then(|c| meter.push(c));
            if back.is_none() && rates.is_some_and(|r| r[0] >= 0.8 * normal[0] && r[1] >= 0.8 * normal[1]) {
                // The trailing second's middle: the rates got there then.
                back = Some(killed.elapsed().as_secs_f64() - 0.5);
            }
            if seen.is_none() {
                let happened = match event {
                    Event::BothDead => self.dead_seen_by(via).await >= victims.len(),
                    Event::NewLeader(old) => self.leader(via).await.is_some_and(|l| l != old),
                };
                if happened {
                    seen = Some(killed.elapsed().as_secs_f64());
                }
            }
        }
        (back, seen)
    }

    async fn summary(&self, node: &str) -> Result<(), CliError> {
        let doc = self.status_json(node).await?;
        for j in doc.as_array().into_iter().flatten().filter(|j| j["kind"] != "train") {
            let l = &j["latency_ms"];
            println!(
                "  {}: {} queries, {} inputs, accuracy {}, mean loss {}; {} ms per query (std {} ms, variance {} ms²)",
                j["job"].as_str().unwrap_or(""),
                j["queries_done"],
                j["inputs_done"],
                j["accuracy"].as_f64().map_or("-".into(), |a| if j["job"] == "photos" {
                    format!("{:.0}% (photos with a known class)", a * 100.0)
                } else {
                    format!("{:.2}%", a * 100.0)
                }),
                crate::job::num(&j["loss"], 4),
                crate::job::num(&l["avg"], 2),
                crate::job::num(&l["std"], 2),
                crate::job::num(&l["var"], 2),
            );
        }
        let ch = idunno_rpc::connect_channel(node, Duration::from_secs(10)).await?;
        let rows = idunno_jobs::results::fetch(&mut JobsClient::new(ch).limited(), "photos")
            .await
            .map_err(|s| idunno_rpc::RpcError::from_status(node, s))?;
        let rows = Value::Array(rows.iter().map(|r| r.to_json()).collect());
        let names = std::fs::read_to_string(self.assets.join("datasets/photos/photos.txt")).unwrap_or_default();
        let names: Vec<&str> = names.lines().collect();
        let seen = ["espresso", "a cat", "missile", "tripod", "moped", "palace"];
        for row in rows.as_array().into_iter().flatten() {
            let i = row["input"].as_u64().unwrap_or(0) as usize;
            let name = names.get(i).copied().unwrap_or("?");
            println!("  {name:<24} class {:>4}   {}", row["output"], seen.get(i).copied().unwrap_or(""));
        }
        Ok(())
    }
}

/// What a kill waits for besides the rates.
#[derive(Clone, Copy)]
enum Event {
    /// The survivors list every victim dead.
    BothDead,
    /// A node other than this (killed) one leads.
    NewLeader(u64),
}

/// Counted queries sampled over time, and the rates over the trailing second.
#[derive(Default)]
struct Meter {
    samples: VecDeque<(Instant, [u64; 2])>,
}

impl Meter {
    fn push(&mut self, counts: [u64; 2]) -> Option<[f64; 2]> {
        let now = Instant::now();
        self.samples.push_back((now, counts));
        while self.samples.len() > 2 && now - self.samples[1].0 >= Duration::from_secs(1) {
            self.samples.pop_front();
        }
        let (then, old) = *self.samples.front()?;
        let dt = (now - then).as_secs_f64();
        (dt >= 0.9).then(|| [0, 1].map(|k| counts[k].saturating_sub(old[k]) as f64 / dt))
    }
}

fn pct(a: Option<f64>) -> String {
    a.map_or("-".into(), |a| format!("{:.2}%", a * 100.0))
}

fn secs(s: Option<f64>) -> String {
    s.map_or("- (not seen)".into(), |s| format!("{s:.2} s"))
}
