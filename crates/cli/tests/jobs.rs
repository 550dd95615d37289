//! Inference jobs end to end: real node processes, real models
//! (EfficientNet-Lite0 built from its packaged weights, MiniLM int8) on
//! ONNX Runtime, real photos and sentences, all from `scripts/assets`.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use common::{Cluster, kill9, up, wait_for};
use serde_json::Value;

fn asset(rel: &str) -> PathBuf {
    let p = idunno_ml::onnx::assets_dir().join(rel);
    assert!(p.exists(), "{} is missing: run scripts/assets", p.display());
    p
}

fn idunno(c: &Cluster, via: u64, args: &[&str]) -> std::process::Output {
    common::via(c, via, args, Duration::from_secs(120))
}

fn ok(c: &Cluster, via: u64, args: &[&str]) -> Value {
    common::json_via(c, via, args, Duration::from_secs(120))
}

fn put(c: &Cluster, asset_path: &str, name: &str) {
    ok(c, 1, &["fs", "put", asset(asset_path).to_str().unwrap(), name]);
}

fn status(c: &Cluster, via: u64, job: &str) -> Value {
    ok(c, via, &["job", "status", job])[0].clone()
}

fn wait_until(c: &Cluster, job: &str, limit: Duration, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let found = wait_for(limit, || {
        // Any live node answers; the test may have killed some.
        let via = c.nodes.iter().map(|n| n.id).find(|id| common::alive(c.node(*id).pid)).unwrap_or(1);
        let out = idunno(c, via, &["job", "status", job, "--json"]);
        if let Ok(v) = serde_json::from_slice::<Value>(&out.stdout) {
            last = v[0].clone();
        }
        f(&last)
    });
    assert!(found.is_some(), "{job}: {what} not reached within {limit:?}; last status {last:#}");
    last
}

fn put_photos(c: &Cluster) {
    put(c, "models/efficientnet-lite0.onnx", "models/effnet-lite0.onnx");
    put(c, "datasets/photos/photos.npy", "data/photos.npy");
    put(c, "datasets/photos/photos-labels.npy", "data/photos-labels.npy");
}

/// Add and start a job of EfficientNet-Lite0 over the photos.
fn start_photo_job(c: &Cluster, job: &str, batch: u32, passes: Option<u64>, labels: bool) {
    let batch = batch.to_string();
    let passes = passes.map(|p| p.to_string());
    let mut args = vec!["job", "add", job, "--model", "models/effnet-lite0.onnx", "--inputs", "data/photos.npy"];
    args.extend(["--batch-size", &batch]);
    if labels {
        args.extend(["--labels", "data/photos-labels.npy"]);
    }
    if let Some(p) = &passes {
        args.extend(["--passes", p]);
    }
    assert_eq!(ok(c, 1, &args)["action"], "added");
    ok(c, 1, &["job", "start", job]);
}

/// The photos' labels as the assets step wrote them (-1: no known class).
fn photo_labels() -> Vec<i64> {
    let t = idunno_ml::npy::read(&std::fs::read(asset("datasets/photos/photos-labels.npy")).unwrap()).unwrap();
    t.to_i64()
}

#[test]
fn efficientnet_job_runs_across_the_workers_and_classifies_the_photos() {
    // Segments no job names are deleted 1 s after (not a minute).
    let c = Cluster::up(common::bin(), 3, Some("[worker]\nsegment_grace_ms = 1000\n"));
    put_photos(&c);
    let add = ok(
        &c,
        2,
        &[
            "job",
            "add",
            "photos",
            "--model",
            "models/effnet-lite0.onnx",
            "--inputs",
            "data/photos.npy",
            "--labels",
            "data/photos-labels.npy",
            "--batch-size",
            "3",
        ],
    );
    assert_eq!(add["action"], "added");
    let st = status(&c, 3, "photos");
    assert_eq!((st["state"].as_str(), st["queries_done"].as_u64()), (Some("added"), Some(0)));
    ok(&c, 1, &["job", "start", "photos"]);
    let st = wait_until(&c, "photos", Duration::from_secs(60), "30 queries", |s| {
        s["queries_done"].as_u64() >= Some(30) && s["workers"].as_array().is_some_and(|w| w.len() == 3)
    });
    assert_eq!(st["state"], "running");
    assert!(st["query_rate"].as_f64().unwrap() > 0.0, "{st}");
    let l = &st["latency_ms"];
    let (avg, med, p90, p95, p99) = (
        l["avg"].as_f64().unwrap(),
        l["median"].as_f64().unwrap(),
        l["p90"].as_f64().unwrap(),
        l["p95"].as_f64().unwrap(),
        l["p99"].as_f64().unwrap(),
    );
    let (std, var) = (l["std"].as_f64().unwrap(), l["var"].as_f64().unwrap());
    assert!(avg > 0.0 && std > 0.0, "{st}");
    // The variance is the deviation squared (each rounded to µs, ms²).
    assert!((var - std * std).abs() <= 0.01 * var + 0.002 * std + 1e-3, "var {var}, std {std}");
    assert!(0.0 < med && med <= p90 && p90 <= p95 && p95 <= p99, "{st}");
    // The labelled photos are recognised (the assets step checked the model
    // on them): accuracy counts only photos with a known class.
    assert_eq!(st["accuracy"].as_f64(), Some(1.0), "{st}");
    assert_eq!(ok(&c, 3, &["job", "assignments"])["photos"].as_array().unwrap().len(), 3);

    ok(&c, 1, &["job", "stop", "photos"]);
    let stopped = status(&c, 2, "photos");
    assert_eq!(stopped["state"], "stopped");
    // Batches of 3 over 14 photos: 3, 3, 3, 3, 2 per pass.
    let (q, i) = (stopped["queries_done"].as_u64().unwrap(), stopped["inputs_done"].as_u64().unwrap());
    let passes = i / 14;
    assert!(q >= passes * 5 && q <= passes * 5 + 5, "{q} queries for {i} inputs");

    let rows = ok(&c, 2, &["job", "results", "photos"]);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 14, "one row per input");
    let labels = photo_labels();
    for r in rows {
        let input = r["input"].as_u64().unwrap() as usize;
        if labels[input] >= 0 {
            assert_eq!(r["output"].as_i64(), Some(labels[input]), "photo {input}: {r}");
        }
        assert!(r["query"].as_u64().unwrap() <= q);
    }
    assert_eq!(labels[0], 967, "the first photo is the espresso");

    // Once stopped, the job's result segments are compacted into one
    // file in SDFS, and reading gives the same rows; the segments are
    // deleted once no job names them (and no count of theirs can still be
    // on its way: 30 s after they were written).
    let compacted =
        wait_for(Duration::from_secs(30), || idunno(&c, 1, &["fs", "ls", "photos.results"]).status.success());
    assert!(compacted.is_some(), "photos.results written within 30 s of the stop");
    let ls = ok(&c, 1, &["fs", "ls", "photos.results"]);
    assert_eq!(ls["versions"][0]["size"].as_u64(), Some(16 + 14 * 32), "a header and 14 rows of 32 bytes");
    assert_eq!(&ok(&c, 3, &["job", "results", "photos"]), &Value::Array(rows.clone()));
    let segments = || ok(&c, 1, &["fs", "list", "photos.results."]).as_array().unwrap().len();
    assert!(segments() > 0, "the compacted segments are kept a while for readers");
    let deleted = wait_for(Duration::from_secs(60), || segments() == 0);
    assert!(deleted.is_some(), "the segments are deleted within 60 s");
    let out = idunno(&c, 1, &["job", "remove", "photos"]);
    assert!(out.status.success());
    assert!(ok(&c, 1, &["job", "status"]).as_array().unwrap().is_empty());
}

#[test]
fn minilm_job_outputs_match_a_single_process_run() {
    let c = up(3);
    put(&c, "models/minilm-embed.onnx", "models/minilm.onnx");
    for n in ["input_ids", "attention_mask", "token_type_ids"] {
        put(&c, &format!("datasets/minilm/{n}.npy"), &format!("text/{n}.npy"));
    }
    // Inputs by name, in another order than the model's.
    ok(
        &c,
        1,
        &[
            "job",
            "add",
            "embed",
            "--model",
            "models/minilm.onnx",
            "--inputs",
            "token_type_ids=text/token_type_ids.npy,input_ids=text/input_ids.npy,attention_mask=text/attention_mask.npy",
            "--batch-size",
            "5",
            "--passes",
            "1",
        ],
    );
    ok(&c, 1, &["job", "start", "embed"]);
    let st = wait_until(&c, "embed", Duration::from_secs(60), "done", |s| s["state"] == "done");
    assert_eq!((st["queries_done"].as_u64(), st["inputs_done"].as_u64()), (Some(4), Some(16)));
    assert_eq!(st["accuracy"], Value::Null);

    // The same model in this process, on all 16 sentences at once.
    let read =
        |n: &str| idunno_ml::npy::read(&std::fs::read(asset(&format!("datasets/minilm/{n}.npy"))).unwrap()).unwrap();
    let inputs = [read("input_ids"), read("attention_mask"), read("token_type_ids")];
    let mut model =
        idunno_ml::onnx::OnnxModel::load(&std::fs::read(asset("models/minilm-embed.onnx")).unwrap(), 1).unwrap();
    let want = model.run(&inputs).unwrap()[0].to_f32();
    let rows = ok(&c, 2, &["job", "results", "embed"]);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 16);
    for r in rows {
        let i = r["input"].as_u64().unwrap() as usize;
        let got: Vec<f64> = r["output"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(got.len(), 384);
        for (k, g) in got.iter().enumerate() {
            let w = want[i * 384 + k] as f64;
            assert!((g - w).abs() < 1e-4, "sentence {i} dim {k}: {g} vs {w}");
        }
    }
}

/// Run a job over the photos on 5 nodes, kill -9 mid-job the coordinator
/// leader or `workers` workers that are not it (at the same moment), and
/// check that the job finishes with every query counted exactly once and
/// a row per photo.
fn kill_mid_job(kill_leader: bool, workers: usize, batch: u32, passes: u64) {
    let c = up(5);
    put_photos(&c);
    start_photo_job(&c, "long", batch, Some(passes), true);
    wait_until(&c, "long", Duration::from_secs(60), "some progress", |s| s["queries_done"].as_u64() >= Some(40));
    let leader = ok(&c, 1, &["status"])["leader"].as_u64().unwrap();
    let victims: Vec<u64> =
        if kill_leader { vec![leader] } else { (1..=5).rev().filter(|id| *id != leader).take(workers).collect() };
    for v in &victims {
        kill9(c.node(*v).pid);
    }
    // A dead worker's queries go back to the queue; through a leader's
    // death, workers keep their results and hand them to the new leader,
    // which resumes from the replicated state.
    let st = wait_until(&c, "long", Duration::from_secs(120), "done", |s| s["state"] == "done");
    let per_pass = 14u64.div_ceil(batch as u64);
    assert_eq!(st["queries_done"].as_u64(), Some(passes * per_pass), "every query counted once: {st}");
    assert_eq!(st["inputs_done"].as_u64(), Some(passes * 14), "{st}");
    assert_eq!(st["accuracy"].as_f64(), Some(1.0));
    let survivor = (1..=5).find(|id| !victims.contains(id)).unwrap();
    if kill_leader {
        assert_ne!(ok(&c, survivor, &["status"])["leader"].as_u64(), Some(leader));
    }
    let rows = ok(&c, survivor, &["job", "results", "long"]);
    let rows = rows.as_array().unwrap();
    let inputs: Vec<u64> = rows.iter().map(|r| r["input"].as_u64().unwrap()).collect();
    assert_eq!(inputs, (0..14).collect::<Vec<_>>(), "one row per input");
    assert!(rows.iter().all(|r| r["pass"].as_u64() == Some(passes - 1)), "the last pass's rows");
    let labels = photo_labels();
    for r in rows {
        let want = labels[r["input"].as_u64().unwrap() as usize];
        assert!(want < 0 || r["output"] == want, "{r}");
    }
    // The mean loss over whole passes is that of one pass: NumPy's on the
    // model's probabilities from ONNX Runtime in Python.
    if let Some(python) = common::numpy_python() {
        let [model, x, y] =
            ["models/efficientnet-lite0.onnx", "datasets/photos/photos.npy", "datasets/photos/photos-labels.npy"]
                .map(|p| asset(p).to_str().unwrap().to_string());
        let doc = common::numpy_stats(&python, &["model-loss", &model, &x, &y]);
        assert_eq!(doc["count"].as_u64(), Some(6), "{doc}");
        let (want, got) = (doc["loss"].as_f64().unwrap(), st["loss"].as_f64().unwrap());
        assert!((got - want).abs() <= 1e-4 * want + 1e-5, "loss {got}, NumPy {want}");
    }
}

#[test]
fn a_worker_killed_mid_job_loses_no_query_and_counts_none_twice() {
    // 40 passes of 14 single-photo queries: long enough to kill mid-run.
    kill_mid_job(false, 1, 1, 40);
}

#[test]
fn two_workers_killed_at_once_lose_no_query() {
    kill_mid_job(false, 2, 1, 40);
}

#[test]
fn the_coordinator_killed_mid_job_loses_no_query() {
    kill_mid_job(true, 0, 2, 60);
}

#[test]
fn two_jobs_of_four_times_the_cost_run_at_equal_rates() {
    let c = up(5);
    put_photos(&c);
    // The same model, four photos per query against one: ~4x the cost.
    start_photo_job(&c, "big", 4, None, true);
    wait_until(&c, "big", Duration::from_secs(60), "running", |s| s["queries_done"].as_u64() >= Some(20));
    let started = std::time::Instant::now();
    start_photo_job(&c, "small", 1, None, true);
    wait_until(&c, "small", Duration::from_secs(10), "a first query", |s| s["queries_done"].as_u64() >= Some(1));
    eprintln!("second job's first counted query {:?} after its start", started.elapsed());
    // Rates are over the last 10 s: wait for a full window of both.
    std::thread::sleep(Duration::from_secs(12));
    let all = ok(&c, 2, &["job", "status"]);
    let rates: Vec<f64> = all.as_array().unwrap().iter().map(|j| j["query_rate"].as_f64().unwrap()).collect();
    let (max, min) = (rates.iter().cloned().fold(0.0, f64::max), rates.iter().cloned().fold(f64::MAX, f64::min));
    assert!(min > 0.0 && max / min - 1.0 <= 0.2, "query rates {rates:?}: {all:#}");
    // The costlier job holds most of the workers' time, and says why.
    let big = all.as_array().unwrap().iter().find(|j| j["job"] == "big").unwrap();
    let small = all.as_array().unwrap().iter().find(|j| j["job"] == "small").unwrap();
    let cost = |j: &Value| j["cost_ms"].as_f64().unwrap_or(0.0);
    assert!(cost(big) > 2.0 * cost(small), "costs {} vs {}", cost(big), cost(small));
    let share = |j: &Value| j["worker_shares"].as_object().unwrap().values().map(|v| v.as_f64().unwrap()).sum::<f64>();
    assert!(share(big) > share(small), "shares {} vs {}", share(big), share(small));
    assert!(big["predicted_rate"].as_f64().unwrap() > 0.0);
    let assignments = ok(&c, 1, &["job", "assignments"]);
    assert!(assignments["big"].as_array().is_some_and(|w| !w.is_empty()), "{assignments}");
}

#[test]
fn set_batch_size_takes_effect_while_the_job_runs() {
    let c = up(3);
    put_photos(&c);
    start_photo_job(&c, "resize", 2, None, false);
    wait_until(&c, "resize", Duration::from_secs(60), "two passes", |s| s["pass"].as_u64() >= Some(2));
    ok(&c, 2, &["job", "set-batch-size", "resize", "5"]);
    // Passes need no barrier, so queries of the old size may already be
    // out a little beyond the newest pass with a result (the front): as
    // far as the passes handed out before the commits caught up, which
    // under load was more than two (CI: sizes [2, 2, 5, 5] two passes
    // on). Five passes on, every query has the new size.
    let front = ok(&c, 3, &["job", "results", "resize"])
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["pass"].as_u64().unwrap())
        .max()
        .unwrap();
    let st = wait_until(&c, "resize", Duration::from_secs(60), "eight more passes", |s| {
        s["pass"].as_u64() >= Some(front + 8)
    });
    ok(&c, 1, &["job", "stop", "resize"]);
    assert_eq!(st["batch_size"], 5);
    // The newest rows come from passes started after the change: 14
    // inputs in queries of 5, 5 and 4.
    let rows = ok(&c, 3, &["job", "results", "resize"]);
    let mut per_query: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for r in rows.as_array().unwrap() {
        if r["pass"].as_u64() >= Some(front + 5) {
            *per_query.entry((r["pass"].as_u64().unwrap(), r["query"].as_u64().unwrap())).or_default() += 1;
        }
    }
    let sizes: Vec<u64> = per_query.values().copied().collect();
    assert!(!sizes.is_empty() && sizes.iter().all(|n| [4, 5].contains(n)), "query sizes after the change: {sizes:?}");
}

#[test]
fn bad_jobs_are_refused_and_change_nothing() {
    let c = up(3);
    put_photos(&c);
    put(&c, "datasets/mnist/t10k-images-idx3-ubyte", "data/mnist.idx");
    put(&c, "datasets/mnist/t10k-labels-idx1-ubyte", "data/mnist-labels.idx");
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.onnx");
    std::fs::write(&junk, b"this is not an onnx model").unwrap();
    ok(&c, 1, &["fs", "put", junk.to_str().unwrap(), "models/junk.onnx"]);
    let before = ok(&c, 1, &["coord", "state"]);

    let add = |model: &str, inputs: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["job", "add", "j", "--model", model, "--inputs", inputs, "--batch-size"]
            .iter()
            .map(|a| a.to_string())
            .collect();
        v.extend(extra.iter().map(|a| a.to_string()));
        v
    };
    let (effnet, photos) = ("models/effnet-lite0.onnx", "data/photos.npy");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (add("models/junk.onnx", photos, &["2"]), "models/junk.onnx is not a model idunno can serve"),
        (
            add(effnet, "data/mnist.idx", &["2"]),
            "data/mnist.idx: inputs are [28,28] per sample, the model wants [3,224,224] (model input images)",
        ),
        (add("models/nope.onnx", photos, &["2"]), "model models/nope.onnx is not in SDFS"),
        (
            add(effnet, photos, &["2", "--labels", "data/mnist-labels.idx"]),
            "labels data/mnist-labels.idx have shape [10000]; expected [14]",
        ),
        (add(effnet, photos, &["0"]), "batch size must be at least 1"),
        (add(effnet, photos, &["2", "--output", "probabilities"]), "output must be class or vector"),
        (vec!["job".into(), "start".into(), "ghost".into()], "no such job: ghost"),
        (vec!["job".into(), "status".into(), "ghost".into()], "no such job: ghost"),
        (vec!["job".into(), "results".into(), "ghost".into()], "no such job: ghost"),
        (vec!["job".into(), "set-batch-size".into(), "ghost".into(), "4".into()], "no such job: ghost"),
    ];
    for (args, msg) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = idunno(&c, 2, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(msg), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    let after = ok(&c, 1, &["coord", "state"]);
    assert_eq!(before["state"]["inference"]["jobs"], after["state"]["inference"]["jobs"], "no job created or changed");
    assert!(after["state"]["inference"]["jobs"].as_object().unwrap().is_empty());
}

/// A worker's caches are bounded by bytes: with room for less than the
/// model and the photos together, the job still runs every query right,
/// and what the worker keeps fetched stays within the budget plus the
/// one file a query needs now.
#[test]
fn caches_bounded_by_bytes_still_run_every_query() {
    let c = Cluster::up(common::bin(), 1, Some("[worker]\ncache_mb = 20\n"));
    put_photos(&c);
    start_photo_job(&c, "tight", 7, Some(2), true);
    let st = wait_until(&c, "tight", Duration::from_secs(120), "done", |s| s["state"] == "done");
    assert_eq!((st["queries_done"].as_u64(), st["inputs_done"].as_u64()), (Some(4), Some(28)), "{st}");
    assert_eq!(st["accuracy"].as_f64(), Some(1.0), "{st}");
    let token = common::http_token(common::bin(), &c.node(1).rpc);
    let s = common::scrape(&c, 1, &token);
    let kept: f64 = ["inputs", "models"]
        .iter()
        .map(|k| common::value(&s, "idunno_worker_cache_bytes", &[("kind", k)]).unwrap_or(0.0))
        .sum();
    // EfficientNet's file is 18.5 MB, the photos 8.4 MB: both never fit.
    assert!(kept > 0.0 && kept <= 20.0 * 1024.0 * 1024.0, "{kept} bytes kept");
}

/// Row `i` of the one-hot test set: zero but for a 1.0 at `i % width`;
/// tiny-add (`x + 1`) makes `i % 16` its class.
fn one_hot_npy(rows: std::ops::Range<usize>, width: usize, big_endian: bool) -> Vec<u8> {
    let descr = if big_endian { ">f4" } else { "<f4" };
    let mut x = idunno_ml::npy::header(descr, &[rows.len(), width]);
    for i in rows {
        for k in 0..width {
            let v: f32 = if k == i % width { 1.0 } else { 0.0 };
            x.extend_from_slice(&if big_endian { v.to_be_bytes() } else { v.to_le_bytes() });
        }
    }
    x
}

/// The label of row `i` of the one-hot set: its class, but for every 7th.
fn one_hot_label(i: usize) -> i64 {
    (if i % 7 == 0 { (i + 1) % 16 } else { i % 16 }) as i64
}

/// The share of rows `0..n` whose label is their class.
fn one_hot_accuracy(n: usize) -> f64 {
    (0..n).filter(|i| one_hot_label(*i) == (*i % 16) as i64).count() as f64 / n as f64
}

/// Labels of rows `rows` as IDX int32.
fn one_hot_labels_idx(rows: std::ops::Range<usize>) -> Vec<u8> {
    let mut y = vec![0, 0, 0x0C, 1];
    y.extend_from_slice(&(rows.len() as u32).to_be_bytes());
    for i in rows {
        y.extend_from_slice(&(one_hot_label(i) as i32).to_be_bytes());
    }
    y
}

fn put_bytes(c: &Cluster, dir: &std::path::Path, name: &str, bytes: &[u8]) {
    let local = dir.join(name.replace('/', "_"));
    std::fs::write(&local, bytes).unwrap();
    ok(c, 1, &["fs", "put", local.to_str().unwrap(), name]);
}

/// A job reads only its queries' rows: over an input set of 13 chunks
/// (big-endian `.npy`) with IDX labels, on 5 nodes (one holds no copy and
/// reads every row from the others), through a 1 MiB cache, with queries
/// that straddle chunk boundaries, every input is scored against its own
/// label: the accuracy is exactly the share of labels left right.
#[test]
fn rows_are_read_by_range_and_each_meets_its_own_label() {
    const N: usize = 200_000;
    let c = Cluster::up(common::bin(), 5, Some("[worker]\ncache_mb = 1\n"));
    let tmp = tempfile::tempdir().unwrap();
    put(&c, "models/tiny-add.onnx", "models/tiny.onnx");
    put_bytes(&c, tmp.path(), "data/rows.npy", &one_hot_npy(0..N, 16, true));
    put_bytes(&c, tmp.path(), "data/rows.idx", &one_hot_labels_idx(0..N));
    let add = [
        "job",
        "add",
        "rows",
        "--model",
        "models/tiny.onnx",
        "--inputs",
        "data/rows.npy",
        "--labels",
        "data/rows.idx",
        "--batch-size",
        "300",
        "--passes",
        "1",
    ];
    ok(&c, 1, &add);
    ok(&c, 1, &["job", "start", "rows"]);
    let st = wait_until(&c, "rows", Duration::from_secs(180), "done", |s| s["state"] == "done");
    assert_eq!(st["inputs_done"].as_u64(), Some(N as u64), "{st}");
    let want = one_hot_accuracy(N);
    assert!((st["accuracy"].as_f64().unwrap() - want).abs() < 1e-5, "accuracy {} != {want}: {st}", st["accuracy"]);
    // The node without a copy read its rows from the others.
    let ls = ok(&c, 1, &["fs", "ls", "data/rows.npy"]);
    let holders: Vec<u64> =
        ls["versions"][0]["replicas"].as_array().unwrap().iter().filter_map(Value::as_u64).collect();
    let outsider = (1..=5).find(|id| !holders.contains(id)).unwrap();
    let token = common::http_token(common::bin(), &c.node(outsider).rpc);
    let ran = common::value(&common::scrape(&c, outsider, &token), "idunno_worker_inputs_total", &[("job", "rows")]);
    assert!(ran.is_some_and(|n| n > 0.0), "node {outsider} (no copy) ran {ran:?} inputs");
    // `status` says what its cache holds, within its 1 MiB.
    let caches = ok(&c, outsider, &["status"])["caches"].clone();
    assert_eq!(caches["limit"].as_u64(), Some(1 << 20), "{caches}");
    let held = caches["inputs"].as_u64().unwrap();
    assert!(held > 0 && held <= 1 << 20, "{caches}");
}

/// An input set in shards (a name pattern; one shard empty) with labels
/// in other shards (a `.shards` list, not in name order): refused at
/// `job add` when a shard is missing or holds other samples, changing
/// nothing; run, with two workers killed mid-job, every input counted
/// once and scored against its own label.
#[test]
fn sharded_sets_are_checked_at_add_and_every_input_counted_once() {
    const N: usize = 150_000;
    let c = up(5);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    put(&c, "models/tiny-add.onnx", "models/tiny.onnx");
    for (k, rows) in [0..40_000, 40_000..40_000, 40_000..95_000, 95_000..N].into_iter().enumerate() {
        put_bytes(&c, dir, &format!("data/sh/x-{k:02}.npy"), &one_hot_npy(rows, 16, k % 2 == 1));
    }
    let labels = |rows: std::ops::Range<usize>| {
        let n = rows.len();
        idunno_ml::npy::write(&idunno_ml::Tensor::from_i64(vec![n], &rows.map(one_hot_label).collect::<Vec<_>>()))
    };
    put_bytes(&c, dir, "data/sh/y-b.npy", &labels(0..100_000));
    put_bytes(&c, dir, "data/sh/y-a.npy", &labels(100_000..N));
    put_bytes(&c, dir, "data/sh/y.shards", b"# labels, in order\ndata/sh/y-b.npy\n\ndata/sh/y-a.npy\n");

    // Refused: a shard of other samples, a listed shard not in SDFS, a
    // pattern that matches nothing, labels that do not add up.
    put_bytes(&c, dir, "data/bad/x-00.npy", &one_hot_npy(0..10, 16, false));
    put_bytes(&c, dir, "data/bad/x-01.npy", &one_hot_npy(0..10, 8, false));
    put_bytes(&c, dir, "data/bad/y.shards", b"data/sh/y-b.npy\ndata/sh/y-gone.npy\n");
    let refused = |inputs: &str, labels: &str, why: &[&str]| {
        let args = [
            "job",
            "add",
            "bad",
            "--model",
            "models/tiny.onnx",
            "--inputs",
            inputs,
            "--labels",
            labels,
            "--batch-size",
            "50",
        ];
        let out = idunno(&c, 2, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{inputs} {labels}: {err}");
        for w in why {
            assert!(err.contains(w), "{inputs} {labels}: {err:?} does not say {w:?}");
        }
    };
    refused("data/bad/x-*.npy", "data/sh/y.shards", &["shard data/bad/x-01.npy", "[8]", "[16]"]);
    refused("data/sh/x-*.npy", "data/bad/y.shards", &["data/sh/y-gone.npy", "not in SDFS"]);
    refused("data/none-*.npy", "data/sh/y.shards", &["matches no file"]);
    refused("data/sh/x-*.npy", "data/sh/y-b.npy", &["[100000]", "150000"]);
    assert_eq!(ok(&c, 1, &["job", "status"]), serde_json::json!([]), "a refused job changes nothing");

    let add = [
        "job",
        "add",
        "sharded",
        "--model",
        "models/tiny.onnx",
        "--inputs",
        "data/sh/x-*.npy",
        "--labels",
        "data/sh/y.shards",
        "--batch-size",
        "50",
        "--passes",
        "6",
    ];
    ok(&c, 1, &add);
    ok(&c, 1, &["job", "start", "sharded"]);
    let per_pass = N.div_ceil(50) as u64;
    let st =
        wait_until(&c, "sharded", Duration::from_secs(120), "progress", |s| s["queries_done"].as_u64() >= Some(1500));
    assert_ne!(st["state"], "done", "the job ended before workers could be killed: {st}");
    let leader = ok(&c, 1, &["status"])["leader"].as_u64().unwrap();
    let victims: Vec<u64> = (2..=5).rev().filter(|id| *id != leader).take(2).collect();
    for v in &victims {
        kill9(c.node(*v).pid);
    }
    let st = wait_until(&c, "sharded", Duration::from_secs(240), "done", |s| s["state"] == "done");
    assert_eq!(st["queries_done"].as_u64(), Some(6 * per_pass), "every query counted once: {st}");
    assert_eq!(st["inputs_done"].as_u64(), Some(6 * N as u64), "{st}");
    let want = one_hot_accuracy(N);
    assert!((st["accuracy"].as_f64().unwrap() - want).abs() < 1e-5, "accuracy {} != {want}: {st}", st["accuracy"]);
}
