//! `idunno demo`: the whole story on a local cluster, told by the
//! client's own commands. Five nodes come up; EfficientNet-Lite0 with real
//! photos and MiniLM with tokenized sentences go into SDFS; both run as
//! jobs side by side (different costs, equal query rates); two workers are
//! killed at once, then the coordinator leader; the jobs go on with every
//! query counted once; the photos' classes and the re-replicated model end
//! it. The models and data come from `scripts/setup` (the assets folder).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use idunno_rpc::{JobsClient, v1};
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
}

const ASSETS: &[&str] = &[
    "models/efficientnet-lite0.onnx",
    "datasets/photos/photos.npy",
    "datasets/photos/photos-labels.npy",
    "datasets/photos/photos.txt",
    "models/minilm-embed.onnx",
    "datasets/minilm/input_ids.npy",
    "datasets/minilm/attention_mask.npy",
    "datasets/minilm/token_type_ids.npy",
    "lib/libonnxruntime.so.1.31.1",
];

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
    cluster::up(UpArgs::local(5, args.dir.clone(), args.base_port), table).await?;
    let file = ClusterFile::load(&args.dir)?;
    let story = Story { file, assets, out: table, dir: args.dir.clone() };
    let result = story.tell().await;
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
        say("SDFS: MiniLM (int8, with pooling) and 16 tokenized sentences");
        self.put(&first, "models/minilm-embed.onnx", "models/minilm.onnx").await?;
        for t in ["input_ids", "attention_mask", "token_type_ids"] {
            self.put(&first, &format!("datasets/minilm/{t}.npy"), &format!("text/{t}.npy")).await?;
        }

        say("job 1: EfficientNet-Lite0 over the photos, 2 per query, looping");
        let add = |job: &str, model: &str, inputs: Vec<String>, labels: Option<&str>, batch| JobCommand::Add {
            job: job.into(),
            model: model.into(),
            inputs,
            labels: labels.map(String::from),
            batch_size: batch,
            passes: None,
            output: None,
        };
        let photos = add(
            "photos",
            "models/effnet-lite0.onnx",
            vec!["data/photos.npy".into()],
            Some("data/photos-labels.npy"),
            2,
        );
        self.job(&first, photos).await?;
        self.job(&first, JobCommand::Start { job: "photos".into() }).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        say("job 2: MiniLM sentence embeddings, 1 sentence per query, looping");
        let texts = ["input_ids", "attention_mask", "token_type_ids"].map(|t| format!("text/{t}.npy")).to_vec();
        self.job(&first, add("sentences", "models/minilm.onnx", texts, None, 1)).await?;
        self.job(&first, JobCommand::Start { job: "sentences".into() }).await?;
        println!("(rates are over the last 10 s: waiting 11 s)");
        tokio::time::sleep(Duration::from_secs(11)).await;
        self.show_rates(&first).await?;

        let leader = self.leader(&first).await.ok_or_else(|| CliError::failed("no coordinator leader"))?;
        let victims: Vec<u64> = [5, 4, 3, 2].into_iter().filter(|i| *i != leader).take(2).collect();
        let survivor = (1..=5).find(|i| *i != leader && !victims.contains(i)).unwrap_or(leader);
        let via = self.rpc(survivor).unwrap_or(first.clone());
        say(&format!("kill -9 workers {victims:?} at the same moment"));
        let start = Instant::now();
        for v in &victims {
            if let Some(pid) = self.pid(*v) {
                // SAFETY: a signal to a process this cluster started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        while self.dead_seen_by(&via).await < 2 && start.elapsed() < Duration::from_secs(15) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("both listed dead after {:.2} s; their queries went back to the queue", start.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_secs(4)).await;
        self.show_rates(&via).await?;

        say(&format!("kill -9 the coordinator leader (node {leader})"));
        let start = Instant::now();
        if let Some(pid) = self.pid(leader) {
            // SAFETY: as above.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let mut now = None;
        while start.elapsed() < Duration::from_secs(15) {
            now = self.leader(&via).await.filter(|l| *l != leader);
            if now.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!(
            "node {} leads after {:.2} s; the jobs go on from the replicated state",
            now.map_or("-".into(), |l| l.to_string()),
            start.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_secs(4)).await;
        self.show_rates(&via).await?;
        crate::member::run(MemberCommand::List, Some(via.clone()), self.out).await?;

        say("stop the jobs: their counts, and one result row per photo");
        self.job(&via, JobCommand::Stop { job: "photos".into() }).await?;
        self.job(&via, JobCommand::Stop { job: "sentences".into() }).await?;
        self.summary(&via).await?;

        say("SDFS after the kills: the model re-replicated on the survivors");
        crate::fs::run(FsCommand::Ls { name: "models/effnet-lite0.onnx".into() }, Some(via), self.out).await?;
        println!("\nnode logs and data: {}", self.dir.display());
        Ok(())
    }

    async fn show_rates(&self, node: &str) -> Result<(), CliError> {
        self.job(node, JobCommand::Status { job: None }).await?;
        self.job(node, JobCommand::Assignments).await?;
        let doc = self.status_json(node).await?;
        let rates: Vec<f64> = doc.as_array().into_iter().flatten().filter_map(|j| j["query_rate"].as_f64()).collect();
        let (max, min) = rates.iter().fold((0f64, f64::MAX), |(a, b), r| (a.max(*r), b.min(*r)));
        if rates.len() > 1 && min > 0.0 {
            println!("query rates {rates:?}: max/min - 1 = {:.3} (SPEC: within 0.2)", max / min - 1.0);
        }
        Ok(())
    }

    async fn summary(&self, node: &str) -> Result<(), CliError> {
        let doc = self.status_json(node).await?;
        for j in doc.as_array().into_iter().flatten() {
            println!(
                "  {}: {} queries, {} inputs, accuracy {}",
                j["job"].as_str().unwrap_or(""),
                j["queries_done"],
                j["inputs_done"],
                j["accuracy"].as_f64().map_or("-".into(), |a| format!("{:.0}% (photos with a known class)", a * 100.0))
            );
        }
        let ch = idunno_rpc::connect_channel(node, Duration::from_secs(10)).await?;
        let r = JobsClient::new(ch)
            .results(v1::JobQuery { job: "photos".into(), explain: false })
            .await
            .map_err(|s| idunno_rpc::RpcError::from_status(node, s))?;
        let rows: Value = serde_json::from_slice(&r.into_inner().json).map_err(|e| CliError::failed(e.to_string()))?;
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
