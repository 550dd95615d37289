//! Online serving over the Open Inference Protocol's REST form, end to
//! end: real node processes with the cluster secret, real models
//! (EfficientNet-Lite0 on NCHW photos, MiniLM on token ids) served with
//! `idunno serve add`, requests over HTTPS with the token (curl), in JSON
//! and in the binary-data extension, answered by any node and equal to a
//! local ONNX Runtime run of the same model.

mod common;

use std::time::Duration;

use common::{Cluster, http_token, https_get, up, wait_for};
use idunno_ml::{Model, Tensor};
use idunno_testkit::https_post;
use serde_json::{Value, json};

fn asset(rel: &str) -> std::path::PathBuf {
    let p = idunno_ml::onnx::assets_dir().join(rel);
    assert!(p.exists(), "{} is missing: run scripts/assets", p.display());
    p
}

fn ok(c: &Cluster, via: u64, args: &[&str]) -> Value {
    common::json_via(c, via, args, Duration::from_secs(120))
}

fn array(rel: &str) -> Tensor {
    idunno_ml::read_array(&std::fs::read(asset(rel)).unwrap()).unwrap()
}

/// The model run here, in this process, on ONNX Runtime.
fn local(model: &str, inputs: &[Tensor]) -> Vec<Tensor> {
    let mut m = Model::load(&std::fs::read(asset(model)).unwrap(), 1).unwrap();
    m.run(inputs).unwrap()
}

fn post(
    c: &Cluster,
    via: u64,
    token: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> idunno_testkit::Response {
    https_post(common::bin(), &c.node(via).http, path, Some(token), headers, body)
}

/// The start of a body, for a failure's message.
fn text(r: &idunno_testkit::Response) -> String {
    String::from_utf8_lossy(&r.body[..r.body.len().min(400)]).to_string()
}

fn json_of(r: &idunno_testkit::Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&r.body)))
}

fn close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst <= 1e-5, "outputs differ from the local run by up to {worst}");
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[test]
fn served_models_answer_any_node_over_v2_as_a_local_run_does() {
    let c = up(3);
    ok(&c, 1, &["fs", "put", asset("models/efficientnet-lite0.onnx").to_str().unwrap(), "models/effnet.onnx"]);
    ok(&c, 1, &["fs", "put", asset("models/minilm-int8.onnx").to_str().unwrap(), "models/minilm.onnx"]);
    let added = ok(&c, 1, &["serve", "add", "effnet", "--model", "models/effnet.onnx", "--max-batch", "4"]);
    assert_eq!(added["action"], "added", "{added}");
    // MiniLM on two of the three workers: the leader picks them.
    ok(&c, 2, &["serve", "add", "minilm", "--model", "models/minilm.onnx", "--workers", "2"]);
    let token = http_token(common::bin(), &c.node(1).rpc);
    let get = |via: u64, path: &str| https_get(common::bin(), &c.node(via).http, path, Some(&token));

    // Ready once a worker has loaded it; the server is live and ready.
    let ready = wait_for(Duration::from_secs(60), || {
        get(3, "/v2/models/effnet/ready").0 == 200 && get(3, "/v2/models/minilm/ready").0 == 200
    });
    assert!(ready.is_some(), "the models never became ready: {:?}", ok(&c, 1, &["serve", "status"]));
    let minilm = |via: u64| {
        let status = ok(&c, via, &["serve", "status"]);
        status.as_array().unwrap().iter().find(|m| m["name"] == "minilm").unwrap().clone()
    };
    let mut placed = Value::Null;
    let settled = wait_for(Duration::from_secs(60), || {
        placed = minilm(1);
        placed["placed"].as_array().unwrap().len() == 2 && placed["workers"] == placed["placed"]
    });
    assert!(settled.is_some(), "minilm not ready on its two workers: {placed:#}");
    assert_eq!(placed["workers_asked"], 2, "{placed:#}");
    let on: Vec<u64> = placed["placed"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    // Only those two load it: the third node's slots never do.
    let slots_of = |id: u64, file: &str| {
        common::value(&common::scrape(&c, id, &token), "idunno_worker_served_slots", &[("model", file)]).unwrap_or(0.0)
    };
    for id in 1..=3 {
        let slots = slots_of(id, "models/minilm.onnx");
        assert_eq!(slots > 0.0, on.contains(&id), "node {id} holds minilm in {slots} slots; placed on {on:?}");
    }
    assert_eq!(get(2, "/v2/health/live").0, 200);
    assert_eq!(get(2, "/v2/health/ready").0, 200);
    let (code, body) = get(2, "/v2/models/effnet");
    assert_eq!(code, 200, "{body}");
    let meta: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(meta["inputs"], json!([{"name": "images", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]));
    assert_eq!(meta["outputs"][0]["name"], "probabilities");
    assert_eq!(meta["platform"], "onnxruntime_onnx");
    let (code, body) = get(1, "/v2");
    assert_eq!((code, serde_json::from_str::<Value>(&body).unwrap()["name"].clone()), (200, json!("idunno")));

    // Two photos in JSON, through node 2: the local run's probabilities.
    let photos = array("datasets/photos/photos.npy");
    let two = photos.rows(0, 2);
    let want = local("models/efficientnet-lite0.onnx", std::slice::from_ref(&two))[0].to_f32();
    let req = json!({"id": "a", "inputs": [{"name": "images", "shape": [2, 3, 224, 224], "datatype": "FP32", "data": two.to_f32()}]});
    let r = post(
        &c,
        2,
        &token,
        "/v2/models/effnet/infer",
        &[("Content-Type", "application/json")],
        req.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", text(&r));
    let doc = json_of(&r);
    assert_eq!((doc["id"].clone(), doc["model_name"].clone()), (json!("a"), json!("effnet")));
    assert_eq!(doc["outputs"][0]["shape"], json!([2, 1000]));
    close(&floats(&doc["outputs"][0]["data"]), &want);

    // The same photos as raw bytes (the binary-data extension), through
    // node 3, the output asked for as raw bytes too.
    let head = json!({"inputs": [{"name": "images", "shape": [2, 3, 224, 224], "datatype": "FP32",
        "parameters": {"binary_data_size": two.data.len()}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}]})
    .to_string();
    let mut body = head.clone().into_bytes();
    body.extend_from_slice(&two.data);
    let len = head.len().to_string();
    let r = post(&c, 3, &token, "/v2/models/effnet/infer", &[("Inference-Header-Content-Length", &len)], &body);
    assert_eq!(r.status, 200, "{}", text(&r));
    let json_len: usize = r.header("inference-header-content-length").expect("a binary answer").parse().unwrap();
    let doc: Value = serde_json::from_slice(&r.body[..json_len]).unwrap();
    assert_eq!(doc["outputs"][0]["parameters"]["binary_data_size"], 8000);
    let got: Vec<f32> = r.body[json_len..].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    close(&got, &want);

    // A text model with three INT64 inputs, one sentence.
    let names = ["input_ids", "attention_mask", "token_type_ids"];
    let inputs: Vec<Tensor> = names.iter().map(|n| array(&format!("datasets/minilm/{n}.npy")).rows(3, 1)).collect();
    let want = local("models/minilm-int8.onnx", &inputs)[0].to_f32();
    let tensors: Vec<Value> = names
        .iter()
        .zip(&inputs)
        .map(|(n, t)| json!({"name": n, "shape": [1, 128], "datatype": "INT64", "data": t.to_i64()}))
        .collect();
    let r = post(&c, 1, &token, "/v2/models/minilm/infer", &[], json!({"inputs": tensors}).to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", text(&r));
    let doc = json_of(&r);
    assert_eq!(doc["outputs"][0]["shape"], json!([1, 128, 384]));
    close(&floats(&doc["outputs"][0]["data"]), &want);

    // Bad requests: the protocol's error form, a status for the kind, a
    // message that names the problem.
    let one = photos.rows(0, 1);
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("/v2/models/nope/infer", json!({"inputs": []}), 400, "1 to 64 inputs"),
        (
            "/v2/models/nope/infer",
            json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}),
            404,
            "no served model named nope",
        ),
        (
            "/v2/models/effnet/infer",
            json!({"inputs": [{"name": "images", "shape": [1, 3, 224, 224], "datatype": "FP64", "data": one.to_f32()}]}),
            400,
            "is FP64, the model takes FP32",
        ),
        (
            "/v2/models/effnet/infer",
            json!({"inputs": [{"name": "images", "shape": [1, 224, 224, 3], "datatype": "FP32", "data": one.to_f32()}]}),
            400,
            "has shape [1, 224, 224, 3], the model takes [-1, 3, 224, 224]",
        ),
        (
            "/v2/models/effnet/infer",
            json!({"inputs": [{"name": "pixels", "shape": [1], "datatype": "FP32", "data": [1]}]}),
            400,
            "input images is missing",
        ),
    ];
    for (path, body, status, says) in cases {
        let r = post(&c, 2, &token, path, &[], body.to_string().as_bytes());
        let doc = json_of(&r);
        let message = doc["error"].as_str().unwrap_or_default();
        assert_eq!(r.status, status, "{path}: {message}");
        assert!(message.contains(says), "{path}: {message:?} should say {says:?}");
    }
    let huge = vec![b' '; 65 << 20];
    let r = post(&c, 2, &token, "/v2/models/effnet/infer", &[], &huge);
    assert_eq!(r.status, 413, "{}", text(&r));
    assert!(json_of(&r)["error"].as_str().unwrap().contains("larger than 64 MiB"));
    // Without the token: refused.
    let r = https_post(common::bin(), &c.node(2).http, "/v2/models/effnet/infer", None, &[], b"{}");
    assert_eq!(r.status, 401);

    // `serve status` sums what every node answered.
    let status = ok(&c, 3, &["serve", "status"]);
    let effnet = status.as_array().unwrap().iter().find(|m| m["name"] == "effnet").unwrap().clone();
    assert!(effnet["requests"].as_u64() >= Some(2), "{effnet:#}");
    assert!(!effnet["workers"].as_array().unwrap().is_empty(), "{effnet:#}");
    assert_eq!(effnet["max_batch"], 4);
    // `/metrics` of the node the bad requests went to: per model.
    let m = common::scrape(&c, 2, &token);
    let (answered, bad, count) = (
        common::value(&m, "idunno_serve_requests_total", &[("model", "effnet")]),
        common::value(&m, "idunno_serve_errors_total", &[("model", "effnet"), ("kind", "bad_request")]),
        common::value(&m, "idunno_serve_request_duration_seconds_count", &[("model", "effnet")]),
    );
    assert!(answered >= Some(1.0) && answered == count, "answered {answered:?}, latencies {count:?}");
    assert_eq!(bad, Some(3.0), "the three bad requests to effnet");
    let ready = common::value(&common::scrape(&c, 3, &token), "idunno_serve_ready_workers", &[("model", "effnet")]);
    assert!(ready >= Some(1.0), "{ready:?}");
    // The dashboard, in a real browser: both models, effnet's requests
    // over the cluster, minilm's two workers.
    if let Some(chromium) = common::chromium() {
        let dom = common::dump_dom(&chromium, &format!("https://{}/?token={token}", c.node(1).http));
        let row = |model: &str| {
            let at = format!("data-model=\"{model}\"");
            dom.split(&at).nth(1).and_then(|r| r.split("</tr>").next()).unwrap_or_default().to_string()
        };
        let requests = common::cells(&row("effnet"), "num serve-requests");
        assert!(requests.first().and_then(|r| r.parse::<u64>().ok()) >= Some(2), "effnet's requests: {requests:?}");
        let shown = common::cells(&row("minilm"), "serve-workers");
        let want = on.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
        assert_eq!(shown, vec![want], "minilm's workers on the dashboard");
    } else {
        println!("SKIPPED the dashboard part: no chromium (scripts/setup installs it as root)");
    }
    // Removed: no longer answered, and unloaded where it was.
    ok(&c, 1, &["serve", "remove", "minilm"]);
    let gone = wait_for(Duration::from_secs(10), || get(3, "/v2/models/minilm").0 == 404);
    assert!(gone.is_some(), "minilm still answered after serve remove");
    let unloaded = wait_for(Duration::from_secs(20), || on.iter().all(|id| slots_of(*id, "models/minilm.onnx") == 0.0));
    assert!(unloaded.is_some(), "minilm still loaded on {on:?} after serve remove");
    let out = common::via(&c, 1, &["serve", "remove", "minilm"], Duration::from_secs(20));
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no served model named minilm"));
}

/// A cluster of `n` nodes serving EfficientNet-Lite0 as `effnet` (with
/// `extra` flags for `serve add`), ready on node 2, and what a stock
/// client needs: the clients' virtualenv's python (`scripts/assets` builds
/// it from pinned wheels), the token, and the cluster's authority. `None`,
/// with a NOTE, when the virtualenv is missing.
struct Stock {
    python: std::path::PathBuf,
    c: Cluster,
    token: String,
    dir: tempfile::TempDir,
    ca: std::path::PathBuf,
}

fn serving_effnet(n: u16, extra: &[&str]) -> Option<Stock> {
    let python = idunno_ml::onnx::assets_dir().join("clients/bin/python");
    if !python.exists() {
        eprintln!("NOTE: skipped: {} is missing (scripts/assets builds it)", python.display());
        return None;
    }
    let c = up(n);
    ok(&c, 1, &["fs", "put", asset("models/efficientnet-lite0.onnx").to_str().unwrap(), "models/effnet.onnx"]);
    ok(&c, 1, &[&["serve", "add", "effnet", "--model", "models/effnet.onnx"][..], extra].concat());
    let token = http_token(common::bin(), &c.node(1).rpc);
    let ready = wait_for(Duration::from_secs(60), || {
        https_get(common::bin(), &c.node(2).http, "/v2/models/effnet/ready", Some(&token)).0 == 200
    });
    assert!(ready.is_some(), "effnet never became ready");
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, common::run(&["secret", "ca"], Duration::from_secs(10)).stdout).unwrap();
    Some(Stock { python, c, token, dir, ca })
}

/// Run a client script of `tests/clients` with these arguments.
fn client(s: &Stock, script: &str, args: &[&std::ffi::OsStr]) -> std::process::Command {
    let mut cmd = std::process::Command::new(&s.python);
    cmd.arg(format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"))).args(args);
    cmd
}

/// The stock client: `tritonclient.http`, unmodified.
#[test]
fn tritonclient_http_works_unchanged_against_any_node() {
    let Some(s) = serving_effnet(2, &[]) else { return };
    // Three photos, as the client's numpy array.
    let photos = array("datasets/photos/photos.npy").rows(2, 3);
    let input = s.dir.path().join("x.npy");
    std::fs::write(&input, idunno_ml::npy::write(&photos)).unwrap();
    let prefix = s.dir.path().join("out");
    let (http, token) = (s.c.node(2).http.clone(), s.token.clone());
    let args = [http.as_ref(), token.as_ref(), s.ca.as_os_str(), "effnet".as_ref(), "images".as_ref()];
    let out = client(&s, "triton_http.py", &args).arg(&input).arg("probabilities").arg(&prefix).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "tritonclient: {said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("unknown model: [404] no served model named no-such-model"), "{said}");
    let want = local("models/efficientnet-lite0.onnx", std::slice::from_ref(&photos))[0].to_f32();
    for form in ["binary", "json"] {
        let got = array_at(&s.dir.path().join(format!("out-{form}.npy")));
        assert_eq!(got.shape, vec![3, 1000], "{form}");
        close(&got.to_f32(), &want);
    }
}

fn array_at(p: &std::path::Path) -> Tensor {
    idunno_ml::read_array(&std::fs::read(p).unwrap()).unwrap()
}

/// Four requests always in flight from the stock client while two of the
/// three workers the model is placed on are killed at once, and then the
/// coordinator leader: every request is answered, correctly, and the
/// leader places the model again on live workers.
#[test]
fn killing_two_workers_and_then_the_leader_fails_no_request() {
    let Some(s) = serving_effnet(5, &["--max-batch", "4", "--workers", "3"]) else { return };
    let c = &s.c;
    let leader = ok(c, 1, &["status"])["leader"].as_u64().unwrap();
    let ids = |v: &Value| -> Vec<u64> { v.as_array().into_iter().flatten().filter_map(Value::as_u64).collect() };
    // Three workers have loaded the model.
    let mut st = Value::Null;
    let placed = wait_for(Duration::from_secs(90), || {
        st = ok(c, 1, &["serve", "status"]);
        ids(&st[0]["placed"]).len() == 3 && st[0]["workers"] == st[0]["placed"]
    });
    assert!(placed.is_some(), "the model was not loaded on three workers: {st:#}");
    let on = ids(&st[0]["placed"]);
    let victims: Vec<u64> = on.iter().copied().filter(|id| *id != leader).take(2).collect();
    let entry = c.nodes.iter().map(|n| n.id).find(|id| *id != leader && !victims.contains(id)).unwrap();
    eprintln!("placed on {on:?}; killing {victims:?}, then the leader {leader}; requests through {entry}");
    let dir = &s.dir;
    let photo = array("datasets/photos/photos.npy").rows(1, 1);
    let want = local("models/efficientnet-lite0.onnx", std::slice::from_ref(&photo))[0].clone();
    let (x, w) = (dir.path().join("x.npy"), dir.path().join("want.npy"));
    std::fs::write(&x, idunno_ml::npy::write(&photo)).unwrap();
    std::fs::write(&w, idunno_ml::npy::write(&want)).unwrap();
    let (http, token) = (c.node(entry).http.clone(), s.token.clone());
    let args = [http.as_ref(), token.as_ref(), s.ca.as_os_str(), "effnet".as_ref(), "images".as_ref()];
    let load = client(&s, "triton_load.py", &args)
        .arg(&x)
        .arg("probabilities")
        .arg(&w)
        .args(["16", "4"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    for v in &victims {
        common::kill9(c.node(*v).pid);
    }
    eprintln!("killed nodes {victims:?} (workers) at 4 s");
    std::thread::sleep(Duration::from_secs(5));
    common::kill9(c.node(leader).pid);
    eprintln!("killed node {leader} (the coordinator leader) at 9 s");
    let out = load.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "the client: {said}{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_str(said.trim().lines().last().unwrap_or_default()).unwrap();
    eprintln!("client through node {entry}: {r}");
    assert_eq!(r["failed"], 0, "{r}");
    assert_eq!(r["answers"], r["correct"], "{r}");
    assert!(r["answers"].as_u64() > Some(50), "{r}");
    // Placed again: on the two live nodes (three asked for, two left).
    let mut alive: Vec<u64> =
        c.nodes.iter().map(|n| n.id).filter(|id| *id != leader && !victims.contains(id)).collect();
    alive.sort_unstable();
    let mut st = Value::Null;
    let again = wait_for(Duration::from_secs(30), || {
        st = ok(c, entry, &["serve", "status"]);
        ids(&st[0]["placed"]) == alive && ids(&st[0]["workers"]) == alive
    });
    assert!(again.is_some(), "not placed on the live nodes {alive:?}: {st:#}");
}

/// `tritonclient.grpc`, unmodified, on a node's RPC port over TLS (the
/// node shows gRPC's BoringSSL an ECDSA certificate of the cluster's
/// authority), with the cluster's token as the credential.
#[test]
fn tritonclient_grpc_works_unchanged_with_the_token() {
    let Some(s) = serving_effnet(2, &[]) else { return };
    let dir = &s.dir;
    let photos = array("datasets/photos/photos.npy").rows(5, 2);
    let (input, output) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
    std::fs::write(&input, idunno_ml::npy::write(&photos)).unwrap();
    let (rpc, token) = (s.c.node(2).rpc.clone(), s.token.clone());
    let args = [rpc.as_ref(), token.as_ref(), s.ca.as_os_str(), "effnet".as_ref(), "images".as_ref()];
    let out = client(&s, "triton_grpc.py", &args).arg(&input).arg("probabilities").arg(&output).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "tritonclient.grpc: {said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("unknown model: StatusCode.NOT_FOUND no served model named no-such-model"), "{said}");
    assert!(said.contains("without the token: StatusCode.UNAUTHENTICATED"), "{said}");
    let want = local("models/efficientnet-lite0.onnx", std::slice::from_ref(&photos))[0].to_f32();
    let got = array_at(&output);
    assert_eq!(got.shape, vec![2, 1000]);
    close(&got.to_f32(), &want);
}

/// Keep `in_flight` requests of `rows` photos each in flight to `model`
/// through these nodes' RPC ports (gRPC, with the test clusters' client
/// certificate) for `seconds`: the end time (s from the start) of every
/// answer, and the errors.
async fn grpc_load(
    rpcs: Vec<String>,
    model: &str,
    rows: usize,
    in_flight: usize,
    seconds: f64,
) -> (Vec<f64>, Vec<String>) {
    use idunno_rpc::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
    use idunno_rpc::inference::{ModelInferRequest, model_infer_request::InferInputTensor};
    let photos = array("datasets/photos/photos.npy").rows(0, rows);
    let request = ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: "images".into(),
            datatype: "FP32".into(),
            shape: photos.shape.iter().map(|d| *d as i64).collect(),
            ..Default::default()
        }],
        raw_input_contents: vec![bytes::Bytes::from(photos.data)],
        ..Default::default()
    };
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for k in 0..in_flight {
        let (addr, request) = (rpcs[k % rpcs.len()].clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ends, mut errors) = (Vec::new(), Vec::new());
            let ch = idunno_rpc::connect_channel(&addr, Duration::from_secs(5)).await.expect("connect");
            let mut c = GrpcInferenceServiceClient::new(ch);
            while start.elapsed().as_secs_f64() < seconds {
                match c.model_infer(request.clone()).await {
                    Ok(r) if r.get_ref().raw_output_contents.first().map(|b| b.len()) == Some(rows * 4000) => {
                        ends.push(start.elapsed().as_secs_f64())
                    }
                    Ok(r) => errors.push(format!(
                        "an answer of {:?} bytes",
                        r.get_ref().raw_output_contents.first().map(|b| b.len())
                    )),
                    Err(s) => errors.push(format!("{:?}: {}", s.code(), s.message())),
                }
            }
            (ends, errors)
        }));
    }
    let (mut ends, mut errors) = (Vec::new(), Vec::new());
    for t in tasks {
        let (e, x) = t.await.expect("client task");
        ends.extend(e);
        errors.extend(x);
    }
    (ends, errors)
}

/// Two served models, one four times the cost of the other per request
/// (EfficientNet-Lite0 on 1 photo and on 4), both kept overloaded through
/// two nodes: the workers' fair queues give them the same request rate.
#[test]
fn two_served_models_of_four_times_the_cost_get_equal_request_rates_under_overload() {
    let c = up(3);
    ok(&c, 1, &["fs", "put", asset("models/efficientnet-lite0.onnx").to_str().unwrap(), "models/effnet.onnx"]);
    ok(&c, 1, &["serve", "add", "light", "--model", "models/effnet.onnx", "--max-batch", "4"]);
    ok(&c, 1, &["serve", "add", "heavy", "--model", "models/effnet.onnx", "--max-batch", "16"]);
    let loaded = wait_for(Duration::from_secs(90), || {
        let st = ok(&c, 1, &["serve", "status"]);
        st.as_array()
            .is_some_and(|a| a.len() == 2 && a.iter().all(|m| m["workers"].as_array().is_some_and(|w| w.len() == 3)))
    });
    assert!(loaded.is_some(), "not every worker loaded both: {}", ok(&c, 1, &["serve", "status"]));
    common::use_secret(idunno_auth::Role::Client);
    let rpcs = vec![c.node(1).rpc.clone(), c.node(2).rpc.clone()];
    let seconds = 24.0;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ((light, light_errors), (heavy, heavy_errors)) = rt.block_on(async {
        tokio::join!(grpc_load(rpcs.clone(), "light", 1, 32, seconds), grpc_load(rpcs.clone(), "heavy", 4, 32, seconds))
    });
    assert!(light_errors.is_empty() && heavy_errors.is_empty(), "{light_errors:?} {heavy_errors:?}");
    // The first seconds fill the queues; the rates are those after, while
    // both models are still kept overloaded.
    let (from, to) = (6.0, seconds - 2.0);
    let rate = |ends: &[f64]| ends.iter().filter(|t| **t >= from && **t < to).count() as f64 / (to - from);
    let (l, h) = (rate(&light), rate(&heavy));
    let apart = l.max(h) / l.min(h) - 1.0;
    eprintln!("light {l:.1} requests/s, heavy {h:.1} requests/s: {:.1}% apart", apart * 100.0);
    eprintln!("{:#}", ok(&c, 1, &["serve", "status"]));
    assert!(l > 5.0 && h > 5.0, "too few answers to compare: {l:.1}, {h:.1} requests/s");
    assert!(apart <= 0.05, "light {l:.1} and heavy {h:.1} requests/s are {:.1}% apart", apart * 100.0);
}
