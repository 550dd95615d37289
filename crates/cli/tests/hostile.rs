//! Hostile input on a live cluster: crafted files and sizes that used to
//! abort a node, panic its workers for good, hang a client or give
//! silently wrong answers. Each must now cost only the request that
//! carried it: exit code 2 and a message a person can act on, every node
//! still up, and a healthy job beside it still running.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Cluster, alive, wait_for};
use serde_json::Value;

fn asset(rel: &str) -> PathBuf {
    let p = idunno_ml::onnx::assets_dir().join(rel);
    assert!(p.exists(), "{} is missing: run scripts/assets", p.display());
    p
}

/// Every client command goes through node 2 (not the one `up` started
/// first, which leads).
fn idunno(c: &Cluster, args: &[&str]) -> std::process::Output {
    common::via(c, 2, args, Duration::from_secs(60))
}

fn ok(c: &Cluster, args: &[&str]) -> Value {
    common::json_via(c, 2, args, Duration::from_secs(60))
}

fn put(c: &Cluster, local: &Path, name: &str) {
    ok(c, &["fs", "put", local.to_str().expect("utf-8 path"), name]);
}

fn status(c: &Cluster, job: &str) -> Value {
    ok(c, &["job", "status", job])[0].clone()
}

/// An `.npy` file with this header text and data, as NumPy lays it out.
fn npy(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.to_string();
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((h.len() as u16).to_le_bytes());
    out.extend(h.as_bytes());
    out.extend(data);
    out
}

/// A trained-model file (safetensors) that holds nothing but metadata
/// claiming an MLP over samples of 10^12 values.
fn huge_model_file() -> Vec<u8> {
    let header = r#"{"__metadata__":{"format":"idunno-model","arch":"mlp","sample_shape":"1000000000000","classes":"10","input_dtype":"uint8"}}"#;
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out
}

/// The photos with their axes moved to channels-last: `[n, 224, 224, 3]`.
fn photos_channels_last() -> Vec<u8> {
    let t = idunno_ml::npy::read(&std::fs::read(asset("datasets/photos/photos.npy")).unwrap()).unwrap();
    let (n, c, h, w) = (t.shape[0], t.shape[1], t.shape[2], t.shape[3]);
    let x = t.to_f32();
    let mut y = vec![0f32; x.len()];
    for i in 0..n {
        for ch in 0..c {
            for r in 0..h {
                for col in 0..w {
                    y[((i * h + r) * w + col) * c + ch] = x[((i * c + ch) * h + r) * w + col];
                }
            }
        }
    }
    idunno_ml::npy::write(&idunno_ml::Tensor::from_f32(vec![n, h, w, c], &y))
}

fn healthy_job(c: &Cluster) {
    put(c, &asset("models/tiny-add.onnx"), "models/tiny.onnx");
    put(c, &asset("datasets/tiny/x.npy"), "data/tiny.npy");
    ok(c, &["job", "add", "healthy", "--model", "models/tiny.onnx", "--inputs", "data/tiny.npy", "--batch-size", "8"]);
    ok(c, &["job", "start", "healthy"]);
    let running = wait_for(Duration::from_secs(30), || status(c, "healthy")["query_rate"].as_f64() > Some(0.0));
    assert!(running.is_some(), "the healthy job never ran: {}", status(c, "healthy"));
}

#[test]
fn crafted_files_and_sizes_are_refused_and_cost_nothing_else() {
    let c = common::up(3);
    healthy_job(&c);
    put(&c, &asset("models/efficientnet-lite0.onnx"), "models/effnet.onnx");
    let tmp = tempfile::tempdir().unwrap();
    let file = |name: &str, bytes: Vec<u8>| {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let model = file("huge-model", huge_model_file());
    assert!(std::fs::metadata(&model).unwrap().len() < 150, "a file of a hundred-odd bytes");
    put(&c, &model, "models/huge");
    put(
        &c,
        &file("wrap.npy", npy("{'descr': '|u1', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", &[])),
        "data/wrap.npy",
    );
    put(
        &c,
        &file("descr.npy", npy("{'descr': 'é4', 'fortran_order': False, 'shape': (2,), }", &[0; 8])),
        "data/descr.npy",
    );
    put(&c, &file("nhwc.npy", photos_channels_last()), "data/nhwc.npy");
    let before = ok(&c, &["coord", "state"]);

    let add = |model: &str, inputs: &str, batch: &str| {
        vec!["job", "add", "bad", "--model", model, "--inputs", inputs, "--batch-size", batch]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            add("models/huge", "data/tiny.npy", "1"),
            vec!["models/huge is not a model idunno can serve", "have 1000000000000 elements"],
        ),
        (
            add("models/tiny.onnx", "data/wrap.npy", "1"),
            vec!["data/wrap.npy", "shape [4294967296, 4294967296] describes more bytes than any file can hold"],
        ),
        (add("models/tiny.onnx", "data/descr.npy", "1"), vec!["data/descr.npy", "unsupported npy dtype: é4"]),
        (
            add("models/effnet.onnx", "data/nhwc.npy", "1"),
            vec![
                "data/nhwc.npy: inputs are [224,224,3] per sample, the model wants [3,224,224]",
                "channels-last data for a channels-first model; transpose with (2,0,1)",
                "or let the workers do it: --transpose 2,0,1",
            ],
        ),
        (
            add("models/tiny.onnx", "data/tiny.npy", "4294967295"),
            vec!["batch size 4294967295 is too large", "at most 65536"],
        ),
        (
            ["job", "set-batch-size", "healthy", "4294967295"].map(String::from).to_vec(),
            vec!["batch size 4294967295 is too large: at most 65536"],
        ),
    ];
    for (args, words) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = idunno(&c, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        for w in words {
            assert!(err.contains(w), "{args:?}: {err:?} should say {w:?}");
        }
        for n in &c.nodes {
            assert!(alive(n.pid), "node {} died after {args:?}", n.id);
        }
    }
    let after = ok(&c, &["coord", "state"]);
    assert_eq!(
        after["state"]["inference"]["jobs"].as_object().unwrap().keys().collect::<Vec<_>>(),
        vec!["healthy"],
        "no job was added"
    );
    assert_eq!(
        after["state"]["inference"]["jobs"]["healthy"]["spec"],
        before["state"]["inference"]["jobs"]["healthy"]["spec"]
    );
    // The healthy job kept running through all of it, on every node.
    let done = status(&c, "healthy")["queries_done"].as_u64().unwrap();
    let more = wait_for(Duration::from_secs(20), || {
        let s = status(&c, "healthy");
        s["queries_done"].as_u64() > Some(done + 50) && s["query_rate"].as_f64() > Some(0.0)
    });
    assert!(more.is_some(), "the healthy job stalled: {}", status(&c, "healthy"));
    assert_eq!(ok(&c, &["status"])["members_alive"], 3);
}

#[test]
fn a_query_that_panics_fails_its_job_not_the_workers() {
    let c = Cluster::up_with_env(common::bin(), 3, None, &[("IDUNNO_TEST_PANIC_JOB", "doomed")]);
    healthy_job(&c);
    ok(&c, &["job", "add", "doomed", "--model", "models/tiny.onnx", "--inputs", "data/tiny.npy", "--batch-size", "8"]);
    ok(&c, &["job", "start", "doomed"]);
    let failed = wait_for(Duration::from_secs(30), || status(&c, "doomed")["state"] == "failed");
    let st = status(&c, "doomed");
    assert!(failed.is_some(), "the panicking job never failed: {st}");
    let error = st["error"].as_str().unwrap_or_default();
    assert!(error.contains("panicked: injected by IDUNNO_TEST_PANIC_JOB"), "{st}");
    assert_eq!(st["queries_done"], 0);
    // The table says why, too.
    let table = idunno(&c, &["job", "status"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("doomed: the worker failed running this query"));

    // Every worker slot that ran a doomed query still runs the healthy
    // job: its rate stays up, and every node still serves it.
    let done = status(&c, "healthy")["queries_done"].as_u64().unwrap();
    let more = wait_for(Duration::from_secs(20), || {
        let s = status(&c, "healthy");
        s["queries_done"].as_u64() > Some(done + 100)
            && s["query_rate"].as_f64() > Some(0.0)
            && s["workers"].as_array().is_some_and(|w| w.len() == 3)
    });
    assert!(more.is_some(), "the healthy job did not keep its workers: {}", status(&c, "healthy"));
    for n in &c.nodes {
        assert!(alive(n.pid), "node {} died", n.id);
    }
    // Started again, it fails again, with its reason: nothing was left
    // broken by the first time.
    ok(&c, &["job", "start", "doomed"]);
    assert!(wait_for(Duration::from_secs(30), || status(&c, "doomed")["state"] == "failed").is_some());
}

/// The explicit opt-in the refusal points to: channels-last photos, given
/// to the channels-first model with `--transpose 2,0,1` (the workers move
/// the axes), are classified exactly as the channels-first photos are by
/// the same model in this process.
#[test]
fn channels_last_photos_run_with_an_explicit_transpose() {
    let c = common::up(3);
    put(&c, &asset("models/efficientnet-lite0.onnx"), "models/effnet.onnx");
    let tmp = tempfile::tempdir().unwrap();
    let nhwc = tmp.path().join("nhwc.npy");
    std::fs::write(&nhwc, photos_channels_last()).unwrap();
    put(&c, &nhwc, "data/nhwc.npy");
    let add = |transpose: &str| {
        idunno(
            &c,
            &[
                "job",
                "add",
                "nhwc",
                "--model",
                "models/effnet.onnx",
                "--inputs",
                "data/nhwc.npy",
                "--batch-size",
                "2",
                "--passes",
                "1",
                "--transpose",
                transpose,
            ],
        )
    };
    for (bad, words) in [
        ("0,1", "is not an order of the 3 axes"),
        ("1,2,0", "makes samples [224, 3, 224], which do not fit; inputs are [224,224,3] per sample"),
    ] {
        let out = add(bad);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains(words), "{bad}: {err}");
    }
    assert!(add("2,0,1").status.success());
    ok(&c, &["job", "start", "nhwc"]);
    let done = wait_for(Duration::from_secs(120), || status(&c, "nhwc")["state"] == "done");
    assert!(done.is_some(), "{}", status(&c, "nhwc"));
    assert_eq!(status(&c, "nhwc")["transpose"], serde_json::json!([2, 0, 1]));
    let rows = ok(&c, &["job", "results", "nhwc"]);
    let served: Vec<usize> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let v: Vec<f32> = r["output"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0
        })
        .collect();

    let photos = idunno_ml::npy::read(&std::fs::read(asset("datasets/photos/photos.npy")).unwrap()).unwrap();
    let mut model =
        idunno_ml::onnx::OnnxModel::load(&std::fs::read(asset("models/efficientnet-lite0.onnx")).unwrap(), 1).unwrap();
    let mut want = Vec::new();
    for i in (0..photos.samples()).step_by(2) {
        let out = model.run(&[photos.rows(i, 2)]).unwrap().remove(0);
        let per = out.len() / out.samples();
        for row in out.to_f32().chunks(per) {
            want.push(row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0);
        }
    }
    assert_eq!(served, want, "classes of the transposed photos");
    assert!(want.contains(&967), "the espresso photo is among them: {want:?}");
}
