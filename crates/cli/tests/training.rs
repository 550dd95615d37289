//! Training jobs end to end: real node processes train on the real MNIST
//! (from `scripts/assets`) with candle, checkpoint to SDFS, lose a worker
//! (and the coordinator) mid-epoch, and serve what they trained.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Cluster, kill9, up, wait_for};
use serde_json::Value;

fn mnist(file: &str) -> PathBuf {
    let p = idunno_ml::onnx::assets_dir().join("datasets/mnist").join(file);
    assert!(p.exists(), "{} is missing: run scripts/assets", p.display());
    p
}

fn idunno(c: &Cluster, via: u64, args: &[&str], limit: Duration) -> std::process::Output {
    common::via(c, via, args, limit)
}

fn ok(c: &Cluster, via: u64, args: &[&str]) -> Value {
    common::json_via(c, via, args, Duration::from_secs(300))
}

const TRAIN_X: &str = "mnist/train-images";
const TRAIN_Y: &str = "mnist/train-labels";
const TEST_X: &str = "mnist/test-images";
const TEST_Y: &str = "mnist/test-labels";

fn put_mnist(c: &Cluster) {
    for (file, name) in [
        ("train-images-idx3-ubyte", TRAIN_X),
        ("train-labels-idx1-ubyte", TRAIN_Y),
        ("t10k-images-idx3-ubyte", TEST_X),
        ("t10k-labels-idx1-ubyte", TEST_Y),
    ] {
        ok(c, 1, &["fs", "put", mnist(file).to_str().unwrap(), name]);
    }
}

fn train_args<'a>(job: &'a str, batch: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        job,
        "--arch",
        "mlp",
        "--inputs",
        TRAIN_X,
        "--labels",
        TRAIN_Y,
        "--test-inputs",
        TEST_X,
        "--test-labels",
        TEST_Y,
        "--epochs",
        "1",
        "--batch-size",
        batch,
        "--workers",
        "2",
        "--out",
        out,
    ]
}

/// A job's status from any live node.
fn status(c: &Cluster, job: &str) -> Option<Value> {
    let via = c.nodes.iter().map(|n| n.id).find(|id| common::alive(c.node(*id).pid))?;
    let out = idunno(c, via, &["job", "status", job, "--json"], Duration::from_secs(20));
    serde_json::from_slice::<Value>(&out.stdout).ok().map(|v| v[0].clone())
}

fn wait_status(c: &Cluster, job: &str, limit: Duration, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let found = wait_for(limit, || {
        if let Some(v) = status(c, job) {
            last = v;
        }
        f(&last)
    });
    assert!(found.is_some(), "{job}: {what} not reached within {limit:?}; last status {last:#}");
    last
}

/// An MLP trained for one epoch by two workers learns MNIST, and the model
/// it wrote to SDFS, served by an inference job, scores on the test set
/// exactly what training reported.
#[test]
fn two_workers_train_an_mlp_whose_served_model_scores_what_training_reported() {
    let c = up(3);
    put_mnist(&c);
    let doc = ok(&c, 1, &train_args("mlp", "64", "models/mnist-mlp"));
    assert_eq!(doc["state"], "done", "{doc:#}");
    let trained = doc["test_accuracy"].as_f64().unwrap();
    assert!(trained > 0.9, "test accuracy {trained}");
    assert_eq!(doc["step"], 938);
    assert_eq!(doc["history"].as_array().unwrap().len(), 1);
    let group = doc["regroups"][0]["workers"].as_array().unwrap().len();
    assert_eq!(group, 2, "{doc:#}");
    let version = doc["model_version"].as_u64().unwrap();

    // The model is a file in SDFS like any other…
    let ls = ok(&c, 2, &["fs", "ls", "models/mnist-mlp"]);
    assert_eq!(ls["versions"][0]["version"].as_u64(), Some(version));
    // …that an inference job serves.
    let add = ok(
        &c,
        2,
        &[
            "job",
            "add",
            "serve",
            "--model",
            "models/mnist-mlp",
            "--inputs",
            TEST_X,
            "--labels",
            TEST_Y,
            "--batch-size",
            "100",
            "--passes",
            "1",
        ],
    );
    assert_eq!(add["action"], "added");
    ok(&c, 2, &["job", "start", "serve"]);
    let s = wait_status(&c, "serve", Duration::from_secs(60), "done", |s| s["state"] == "done");
    assert_eq!(s["inputs_done"], 10000);
    let served = s["accuracy"].as_f64().unwrap();
    assert!((served - trained).abs() < 1e-9, "served accuracy {served}, training reported {trained}");
    // The served model gives logits: the job's loss is their softmax
    // cross-entropy, which training measured on the same set (candle, f32,
    // to 4 decimals).
    let test_loss = doc["history"][0]["test"]["loss"].as_f64().unwrap();
    let loss = s["loss"].as_f64().unwrap();
    assert!((loss - test_loss).abs() <= 1e-3 * test_loss + 1e-4, "served loss {loss}, training measured {test_loss}");
}

/// A training set larger than a member may hold (here, by a test hook,
/// anything over 1 MiB) is read by range as training goes, in block
/// order, and the MLP learns MNIST as well.
#[test]
fn a_set_read_by_range_trains_as_well() {
    let env = [("IDUNNO_TEST_TRAIN_IN_MEMORY_MAX", "1048576")];
    let c = Cluster::up_with_env(common::bin(), 3, Some("[worker]\ncache_mb = 16\n"), &env);
    put_mnist(&c);
    let doc = ok(&c, 1, &train_args("ranged", "64", "models/ranged-mlp"));
    assert_eq!(doc["state"], "done", "{doc:#}");
    assert_eq!(doc["step"], 938);
    let trained = doc["test_accuracy"].as_f64().unwrap();
    assert!(trained > 0.9, "test accuracy {trained}");
    // The members read chunks of the set, within their 16 MiB.
    let held: Vec<f64> = (1..=3)
        .filter_map(|id| {
            let token = common::http_token(common::bin(), &c.node(id).rpc);
            common::value(&common::scrape(&c, id, &token), "idunno_worker_cache_bytes", &[("kind", "training")])
        })
        .collect();
    assert!(held.iter().any(|b| *b > 0.0), "no member read by range: {held:?}");
    assert!(held.iter().all(|b| *b <= 16.0 * 1048576.0), "{held:?}");
}

/// A worker killed in the middle of the epoch — the one that is also rank
/// 0 and the coordinator leader — and the training goes on: a new group
/// of the survivors resumes from the last checkpoint, the new leader
/// keeps the job, and the model is as good.
#[test]
fn training_survives_a_worker_and_the_coordinator_killed_mid_epoch() {
    let c = up(3);
    put_mnist(&c);
    let mut args = train_args("mlp-kill", "32", "models/mlp-kill");
    args.extend(["--checkpoint-every", "100", "--detach"]);
    ok(&c, 1, &args);
    // Past the third checkpoint, well before the end (1875 steps).
    let before = wait_status(&c, "mlp-kill", Duration::from_secs(120), "step 300", |s| {
        s["step"].as_u64().is_some_and(|n| n >= 300) || (s["state"].is_string() && s["state"] != "running")
    });
    assert_eq!(before["state"], "running", "finished before the kill: {before:#}");
    let rank0 = before["workers"][0].as_u64().unwrap();
    let leader = ok(&c, 2, &["status"])["leader"].as_u64().unwrap();
    kill9(c.node(rank0).pid);
    if leader != rank0 {
        kill9(c.node(leader).pid);
    }
    let checkpoint_at_kill = before["checkpoint"]["step"].as_u64().unwrap();
    assert!(checkpoint_at_kill >= 100 && before["step"].as_u64().unwrap() < 1875, "{before:#}");

    let done = wait_status(&c, "mlp-kill", Duration::from_secs(180), "done", |s| {
        s["state"].is_string() && s["state"] != "running"
    });
    assert_eq!(done["state"], "done", "{done:#}");
    let regroups = done["regroups"].as_array().unwrap();
    assert!(regroups.len() >= 2, "no new group formed: {done:#}");
    let second = &regroups[1];
    let from = second["from_step"].as_u64().unwrap();
    assert!(
        from >= checkpoint_at_kill,
        "the new group started from step {from}, the checkpoint was at {checkpoint_at_kill}"
    );
    assert!(from > 0, "restarted from scratch");
    assert!(!second["workers"].as_array().unwrap().iter().any(|w| w.as_u64() == Some(rank0)), "{second}");
    let acc = done["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.9, "test accuracy {acc}");
    assert_eq!(done["step"], 1875);
    // The epoch's train score went on from the checkpoint too: it covers
    // every sample once, not just those since the new group started.
    assert_eq!(done["history"][0]["train"]["samples"], 60000, "{done:#}");
}

/// Bad requests are refused with a message that names the problem, and
/// no job appears.
#[test]
fn bad_training_requests_are_refused_and_start_nothing() {
    let c = up(1);
    put_mnist(&c);
    let refused = |args: &[&str], expect: &str| {
        let out = idunno(&c, 1, args, Duration::from_secs(120));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "idunno {args:?}: {err}");
        assert!(err.contains(expect), "idunno {args:?}: {err:?} does not say {expect:?}");
    };
    let mut lengths = train_args("bad", "64", "models/bad");
    lengths[7] = TEST_Y; // 10,000 labels for 60,000 images
    refused(&lengths, "has 60000 samples but mnist/test-labels has shape [10000]");
    let mut arch = train_args("bad", "64", "models/bad");
    arch[3] = "resnet";
    refused(&arch, "unknown architecture \"resnet\": expected mlp or cnn");
    let mut epochs = train_args("bad", "64", "models/bad");
    epochs[13] = "0";
    refused(&epochs, "epochs must be at least 1");
    let mut missing = train_args("bad", "64", "models/bad");
    missing[5] = "mnist/nope";
    refused(&missing, "input set mnist/nope is not in SDFS");
    let jobs = ok(&c, 1, &["job", "status"]);
    assert_eq!(jobs, serde_json::json!([]), "a refused request left a job behind");
    let files = ok(&c, 1, &["fs", "list"]);
    assert!(!files.to_string().contains("models/bad"), "{files}");
}

/// A member killed and started again at once comes back before anyone
/// marks it dead, resumes its generation from the checkpoint, and is out
/// of step with the others: the group re-forms and the job finishes.
#[test]
fn a_member_that_restarts_at_once_is_out_of_step_and_the_group_reforms() {
    let mut c = up(3);
    put_mnist(&c);
    let mut args = train_args("mlp-restart", "32", "models/mlp-restart");
    args.extend(["--checkpoint-every", "100", "--detach"]);
    ok(&c, 1, &args);
    let before = wait_status(&c, "mlp-restart", Duration::from_secs(120), "step 300", |s| {
        s["step"].as_u64().is_some_and(|n| n >= 300) || (s["state"].is_string() && s["state"] != "running")
    });
    assert_eq!(before["state"], "running", "finished before the restart: {before:#}");
    let leader = ok(&c, 1, &["status"])["leader"].as_u64().unwrap();
    let member = before["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .find(|w| *w != leader)
        .expect("a member that is not the leader");
    kill9(c.node(member).pid);
    let via = c.node(leader).rpc.clone();
    c.restart(member, &via);

    let done = wait_status(&c, "mlp-restart", Duration::from_secs(180), "done", |s| {
        s["state"].is_string() && s["state"] != "running"
    });
    assert_eq!(done["state"], "done", "{done:#}");
    assert!(done["regroups"].as_array().unwrap().len() >= 2, "the group never re-formed: {done:#}");
    assert!(done["test_accuracy"].as_f64().unwrap() > 0.9, "{done:#}");
}

/// A group that lost a member grows back to the workers asked for once
/// the node returns, right after a checkpoint, and goes on from it.
#[test]
fn a_shrunken_group_grows_back_when_its_node_returns() {
    let mut c = up(3);
    put_mnist(&c);
    let mut args = train_args("mlp-grow", "16", "models/mlp-grow");
    args[17] = "3"; // --workers
    args.extend(["--checkpoint-every", "100", "--detach"]);
    ok(&c, 1, &args);
    let before = wait_status(&c, "mlp-grow", Duration::from_secs(120), "step 300", |s| {
        s["step"].as_u64().is_some_and(|n| n >= 300) || (s["state"].is_string() && s["state"] != "running")
    });
    assert_eq!(before["state"], "running", "finished too soon: {before:#}");
    assert_eq!(before["workers"].as_array().unwrap().len(), 3, "{before:#}");
    let leader = ok(&c, 1, &["status"])["leader"].as_u64().unwrap();
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    kill9(c.node(victim).pid);
    wait_status(&c, "mlp-grow", Duration::from_secs(60), "a group of two", |s| {
        s["workers"].as_array().is_some_and(|w| w.len() == 2) || s["state"] != "running"
    });
    let via = c.node(leader).rpc.clone();
    c.restart(victim, &via);
    let done = wait_status(&c, "mlp-grow", Duration::from_secs(180), "done", |s| {
        s["state"].is_string() && s["state"] != "running"
    });
    assert_eq!(done["state"], "done", "{done:#}");
    let sizes: Vec<usize> =
        done["regroups"].as_array().unwrap().iter().map(|r| r["workers"].as_array().unwrap().len()).collect();
    assert!(sizes.len() >= 3 && sizes[sizes.len() - 1] == 3 && sizes.contains(&2), "group sizes {sizes:?}: {done:#}");
    assert!(done["test_accuracy"].as_f64().unwrap() > 0.9, "{done:#}");
}
