//! SPEC §9 and issue 14: nothing happens without the cluster secret.
//! Real node processes; every attack of the issue replayed against a
//! secured cluster (plaintext and wrong-key gRPC, client credentials on
//! node methods, a term of u64::MAX, a forged SWIM announce), a node with
//! another secret trying to join, traffic captured on the wire (root and
//! tcpdump; skipped otherwise), and a key rotation under a running job.

mod common;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::{Cluster, bin, wait_for};
use idunno_auth::Role;
use idunno_rpc::v1;
use serde_json::Value;

fn run_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    idunno_testkit::run_with_env(bin(), args, env, Duration::from_secs(30))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// A command refused with exit 1 and one line naming the problem.
fn refused(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains(needle), "{needle:?} not in {err:?}");
}

fn status(c: &Cluster, id: u64) -> Value {
    common::json_via(c, id, &["status"], Duration::from_secs(20))
}

fn new_secret(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let out = run_env(&["secret", "new", p.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    p
}

/// A SWIM announce from a forged identity: node `victim`'s address with
/// generation u64::MAX, as the issue's 39-byte datagram, framed with the
/// cluster's tag. Without the secret it is not sealed.
fn forged_announce(cluster: &str, victim: &str, to: &str) -> Vec<u8> {
    use idunno_membership::{Effect, NodeId, NodeIdentity, Swim, SwimConfig};
    let identity = NodeIdentity { id: NodeId(1), addr: victim.parse().unwrap(), generation: u64::MAX };
    let mut swim = Swim::new(identity, &SwimConfig::default(), 7).unwrap();
    swim.announce(to.parse().unwrap());
    let data = swim
        .drain_effects()
        .into_iter()
        .find_map(|e| match e {
            Effect::Send { data, .. } => Some(data),
            _ => None,
        })
        .expect("an announce");
    [&idunno_membership::cluster_tag(cluster).to_be_bytes()[..], &[idunno_membership::PROTOCOL], &data].concat()
}

/// The Raft messages of a forged leader with term u64::MAX.
fn huge_term_append() -> v1::RaftPayload {
    let json = format!(
        r#"{{"vote":{{"leader_id":{{"term":{},"node_id":1}},"committed":true}},"prev_log_id":null,"leader_commit":null,"entries":[]}}"#,
        u64::MAX
    );
    v1::RaftPayload { json: json.into_bytes(), data: Vec::new() }
}

fn with_cluster<T>(cluster: &str, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(idunno_coordinator::network::CLUSTER_HEADER, cluster.parse().unwrap());
    req
}

#[test]
fn outsiders_are_refused_and_change_nothing() {
    let c = common::up(3);
    let tmp = tempfile::tempdir().unwrap();
    let rpc1 = c.node(1).rpc.clone();
    let before = status(&c, 1);
    let term = before["term"].as_u64().unwrap();
    let generation1 = before["generation"].as_u64().unwrap();
    assert_eq!(before["security"]["secured"], true);

    // A client without the secret, and one with another cluster's.
    let out = run_env(&["status", "--node", &rpc1], &[("IDUNNO_SECRET_FILE", "")]);
    refused(&out, "--secret-file");
    let wrong = new_secret(tmp.path(), "wrong");
    let out = run_env(&["fs", "list", "--node", &rpc1], &[("IDUNNO_SECRET_FILE", wrong.to_str().unwrap())]);
    refused(&out, "does not hold this cluster's secret");

    // TLS without a certificate (curl speaking gRPC): UNAUTHENTICATED
    // (grpc-status 16), and nothing about the cluster.
    let out = std::process::Command::new("curl")
        .args([
            "-sk",
            "-m",
            "10",
            "-i",
            "--http2",
            "-X",
            "POST",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
        ])
        .args(["--data-binary", "", &format!("https://{rpc1}/idunno.v1.Node/Status")])
        .output()
        .expect("curl");
    let answer = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(answer.contains("grpc-status: 16"), "{answer}");
    assert!(!answer.contains(&c.cluster.to_lowercase()), "{answer}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Plaintext gRPC: no call gets through (the node speaks TLS only).
        idunno_net::use_keys(None);
        if let Ok(ch) = idunno_rpc::connect_channel(&rpc1, Duration::from_secs(3)).await {
            let leave = idunno_rpc::NodeClient::new(ch.clone()).leave(v1::LeaveRequest {}).await;
            assert!(leave.is_err(), "plaintext Node.Leave answered");
            let append =
                idunno_rpc::RaftClient::new(ch).append_entries(with_cluster(&c.cluster, huge_term_append())).await;
            assert!(append.is_err(), "plaintext AppendEntries answered");
        }

        // Client credentials: node-to-node methods are not for them.
        common::use_secret(Role::Client);
        let ch = idunno_rpc::connect_channel(&rpc1, Duration::from_secs(5)).await.expect("client connects");
        let denied = |r: Result<tonic::Status, ()>| {
            let s = r.expect("refused");
            assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
            assert!(!s.message().contains(&c.cluster), "the refusal names the cluster: {s:?}");
        };
        let apply = v1::ApplyRequest {
            command_json: br#"{"op":"delete_file","name":"x","now_ms":1}"#.to_vec(),
            ..Default::default()
        };
        denied(idunno_rpc::CoordinatorClient::new(ch.clone()).apply(apply).await.map(|_| ()).err().ok_or(()));
        let append = with_cluster(&c.cluster, huge_term_append());
        denied(idunno_rpc::RaftClient::new(ch.clone()).append_entries(append).await.map(|_| ()).err().ok_or(()));
        let work = v1::WorkRequest { worker: 9, want: 1, ..Default::default() };
        denied(idunno_rpc::JobsClient::new(ch.clone()).work(work).await.map(|_| ()).err().ok_or(()));
        let read = v1::ReadBlobRequest { blake3: "00".repeat(32), offset: 0, limit: 0 };
        denied(idunno_rpc::SdfsClient::new(ch.clone()).read_blob(read).await.map(|_| ()).err().ok_or(()));

        // Node credentials (a holder of the secret, or a bug): a term 2^32
        // past the node's is refused before Raft sees it.
        common::use_secret(Role::Node);
        let ch = idunno_rpc::connect_channel(&rpc1, Duration::from_secs(5)).await.expect("node connects");
        let r = idunno_rpc::RaftClient::new(ch).append_entries(with_cluster(&c.cluster, huge_term_append())).await;
        let s = r.expect_err("a term of u64::MAX is refused");
        assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains("2^32"), "{s:?}");
    });

    // SWIM: the issue's forged announce, plaintext and sealed under
    // another secret, at node 2.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let forged = forged_announce(&c.cluster, &rpc1, &c.node(2).rpc);
    let wrong_keys = idunno_auth::seal::SwimKeys::new(&idunno_auth::Keyring::read_file(&wrong).unwrap());
    let tag = idunno_membership::cluster_tag(&c.cluster).to_be_bytes();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let sealed =
        [&tag[..], &[idunno_membership::PROTOCOL], &wrong_keys.seal(&tag, &forged[9..], now, [5; 24])].concat();
    for _ in 0..5 {
        sock.send_to(&forged, &c.node(2).rpc).unwrap();
        sock.send_to(&sealed, &c.node(2).rpc).unwrap();
    }
    // Wait until node 2 has dealt with them (every one is refused).
    let dealt =
        wait_for(Duration::from_secs(10), || status(&c, 2)["swim"]["datagrams_rejected"].as_u64().unwrap_or(0) >= 10);
    assert!(dealt.is_some(), "the forged datagrams were not counted: {}", status(&c, 2));
    // Then a window longer than SWIM's suspicion timeout (900 ms), in which
    // a forged identity that had been believed would get node 1 declared
    // dead: nothing may change in it.
    std::thread::sleep(Duration::from_secs(2));

    // Nothing changed: every node up, all alive, same term, node 1 still
    // its own generation; the refusals were counted.
    for n in &c.nodes {
        assert!(common::alive(n.pid), "node {} died", n.id);
        let s = status(&c, n.id);
        assert_eq!(s["members_alive"], 3, "{s}");
        assert_eq!(s["term"].as_u64(), Some(term), "{s}");
    }
    let members = common::members(&c, 2);
    let one = members.iter().find(|m| m["id"] == 1).unwrap();
    assert_eq!((one["state"].as_str(), one["incarnation"].as_u64()), (Some("alive"), Some(generation1)), "{one}");
    let s2 = status(&c, 2);
    assert!(s2["swim"]["datagrams_rejected"].as_u64().unwrap() >= 10, "{s2}");
    let s1 = status(&c, 1);
    assert!(s1["security"]["refused"].as_u64().unwrap() >= 6, "{s1}");
    let list = common::json_via(&c, 1, &["fs", "list"], Duration::from_secs(20));
    assert_eq!(list, serde_json::json!([]), "nothing was written");
}

#[test]
fn a_node_with_another_secret_never_joins_and_holds_nothing() {
    let c = common::up(3);
    let tmp = tempfile::tempdir().unwrap();
    let wrong = new_secret(tmp.path(), "wrong");
    let port = common::free_ports(2);
    let data = tmp.path().join("intruder");
    let args = [
        "node",
        "--cluster",
        c.cluster.as_str(),
        "--id",
        "9",
        "--addr",
        &format!("127.0.0.1:{port}"),
        "--http",
        &format!("127.0.0.1:{}", port + 1),
        "--data-dir",
        data.to_str().unwrap(),
        "--join",
        &c.node(1).rpc,
        "--join-timeout-ms",
        "4000",
    ];
    let out = idunno_testkit::run_with_env(
        bin(),
        &args,
        &[("IDUNNO_SECRET_FILE", wrong.to_str().unwrap())],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("could not join"), "{}", stderr(&out));
    for n in &c.nodes {
        let members = common::members(&c, n.id);
        assert_eq!(members.len(), 3, "node {}: {members:?}", n.id);
        assert!(members.iter().all(|m| m["id"] != 9));
    }
    let s = status(&c, 1);
    assert!(!s["voters"].as_array().unwrap().contains(&Value::from(9)) && s["learners"].as_array().unwrap().is_empty());
    assert!(s["swim"]["datagrams_rejected"].as_u64().unwrap() > 0, "{s}");
    // It holds nothing: no blob was ever placed on it.
    let blobs = data.join("sdfs/blobs");
    let held = std::fs::read_dir(&blobs).map(|d| d.count()).unwrap_or(0);
    assert_eq!(held, 0, "{}", blobs.display());
}

/// Root and tcpdump, or why not.
fn capture_unavailable() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root to capture loopback traffic".into());
    }
    if std::process::Command::new("tcpdump").arg("--version").output().is_err() {
        return Some("needs tcpdump (scripts/setup installs it as root)".into());
    }
    None
}

/// Capture loopback traffic on the cluster's ports while `work` runs;
/// the capture file's bytes (pcap).
fn capture(c: &Cluster, dir: &Path, work: impl FnOnce()) -> Vec<u8> {
    let pcap = dir.join("cap.pcap");
    let ports: Vec<String> = c
        .nodes
        .iter()
        .flat_map(|n| [n.rpc.clone(), n.http.clone()])
        .map(|a| a.rsplit_once(':').unwrap().1.to_string())
        .collect();
    let filter = ports.iter().map(|p| format!("port {p}")).collect::<Vec<_>>().join(" or ");
    let mut dump = std::process::Command::new("tcpdump")
        .args(["-i", "lo", "-U", "-s", "0", "-w"])
        .arg(&pcap)
        .arg(&filter)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tcpdump");
    std::thread::sleep(Duration::from_secs(1));
    work();
    std::thread::sleep(Duration::from_millis(500));
    common::signal(dump.id(), libc::SIGINT);
    let _ = dump.wait();
    std::fs::read(&pcap).expect("capture file")
}

/// The UDP datagrams of a capture (pcap, Ethernet framing as `-i lo`
/// records it, IPv4): (destination port, payload).
fn udp_datagrams(pcap: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= pcap.len() {
        let len = u32::from_le_bytes(pcap[at + 8..at + 12].try_into().unwrap()) as usize;
        let frame = &pcap[at + 16..(at + 16 + len).min(pcap.len())];
        at += 16 + len;
        // Ethernet (14) then IPv4 with protocol 17 (UDP).
        if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] || frame[14 + 9] != 17 {
            continue;
        }
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        let udp = &frame[14 + ihl..];
        if udp.len() < 8 {
            continue;
        }
        out.push((u16::from_be_bytes([udp[2], udp[3]]), udp[8..].to_vec()));
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `fs put` a file full of a marker, ask for a job and an HTTP page named
/// by it, and let SWIM gossip: what crossed the wire.
fn traffic_with_marker(c: &Cluster, marker: &str, dir: &Path, env: &[(&str, &str)], https: bool) -> Vec<u8> {
    let file = dir.join("marked");
    std::fs::write(&file, marker.repeat(20_000)).unwrap();
    capture(c, dir, || {
        let rpc = &c.node(1).rpc;
        let out = run_env(&["fs", "put", file.to_str().unwrap(), marker, "--node", rpc], env);
        assert!(out.status.success(), "{}", stderr(&out));
        let out = run_env(&["fs", "get", marker, dir.join("back").to_str().unwrap(), "--node", &c.node(2).rpc], env);
        assert!(out.status.success(), "{}", stderr(&out));
        let _ = run_env(&["job", "status", marker, "--node", rpc], env);
        let port = c.node(1).http.rsplit_once(':').unwrap().1.to_string();
        let url = if https {
            format!("https://127.0.0.1:{port}/api/{marker}")
        } else {
            format!("http://127.0.0.1:{port}/api/{marker}")
        };
        let _ = std::process::Command::new("curl")
            .args(["-sk", "-m", "5", "-H", &format!("X-Marker: {marker}"), &url])
            .output();
        std::thread::sleep(Duration::from_secs(2));
    })
}

#[test]
fn the_wire_carries_no_plaintext() {
    if let Some(why) = capture_unavailable() {
        println!("SKIPPED: traffic capture {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let marker = "MARKER-7c1d2a-idunno";
    let c = common::up(3);
    let generations: Vec<u64> = c.nodes.iter().map(|n| status(&c, n.id)["generation"].as_u64().unwrap()).collect();
    let bytes = traffic_with_marker(&c, marker, tmp.path(), &[], true);
    assert!(bytes.len() > 200_000, "the capture saw the traffic ({} bytes)", bytes.len());
    assert!(!contains(&bytes, marker.as_bytes()), "the marker crossed the wire in plaintext");
    // SWIM's plaintext would carry every identity (postcard: the
    // generation as a varint); sealed, none shows.
    for g in &generations {
        let mut varint = Vec::new();
        let mut v = *g;
        while v >= 0x80 {
            varint.push((v as u8) | 0x80);
            v >>= 7;
        }
        varint.push(v as u8);
        assert!(!contains(&bytes, &varint), "a generation crossed the wire in plaintext");
    }

    // Every captured SWIM datagram sent again (a replay, within its
    // freshness window): each is refused, and nothing changes.
    let rpc_ports: Vec<u16> = c.nodes.iter().map(|n| n.rpc.rsplit_once(':').unwrap().1.parse().unwrap()).collect();
    let swim: Vec<(u16, Vec<u8>)> = udp_datagrams(&bytes).into_iter().filter(|(p, _)| rpc_ports.contains(p)).collect();
    assert!(swim.len() > 20, "the capture holds SWIM datagrams ({})", swim.len());
    let rejected = |c: &Cluster| -> u64 {
        c.nodes.iter().map(|n| status(c, n.id)["swim"]["datagrams_rejected"].as_u64().unwrap()).sum()
    };
    let before = rejected(&c);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    for (port, payload) in &swim {
        sock.send_to(payload, ("127.0.0.1", *port)).unwrap();
    }
    let target = before + swim.len() as u64;
    wait_for(Duration::from_secs(10), || rejected(&c) >= target);
    let after = rejected(&c);
    assert!(after >= before + swim.len() as u64, "replays refused: {before} -> {after} of {}", swim.len());
    for n in &c.nodes {
        let s = status(&c, n.id);
        assert_eq!((s["members_alive"].as_u64(), s["swim"]["dead_events"].as_u64()), (Some(3), Some(0)), "{s}");
    }
    drop(c);

    // The same traffic on a cluster without a secret shows all of it: the
    // check above can fail.
    let plain = Cluster::up_with(bin(), 3, None, &[("IDUNNO_SECRET_FILE", "")], &["--insecure"]);
    let bytes = traffic_with_marker(&plain, marker, tmp.path(), &[("IDUNNO_SECRET_FILE", "")], false);
    assert!(contains(&bytes, marker.as_bytes()), "without a secret the marker is visible");
}

#[test]
fn keys_rotate_under_a_running_job_without_losing_a_query() {
    let tmp = tempfile::tempdir().unwrap();
    let keyring = new_secret(tmp.path(), "keyring");
    let k = keyring.to_str().unwrap();
    let env = [("IDUNNO_SECRET_FILE", k)];
    let c = Cluster::up_with_env(bin(), 5, None, &env);
    let ok_via = |via: u64, args: &[&str]| -> Value {
        let mut full = args.to_vec();
        full.extend(["--json", "--node", &c.node(via).rpc]);
        let out = idunno_testkit::run_with_env(bin(), &full, &env, Duration::from_secs(120));
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let ok = |args: &[&str]| ok_via(1, args);
    let status = |id: u64| ok_via(id, &["status"]);
    let asset = |rel: &str| idunno_ml::onnx::assets_dir().join(rel).display().to_string();
    ok(&["fs", "put", &asset("models/efficientnet-lite0.onnx"), "m.onnx"]);
    ok(&["fs", "put", &asset("datasets/photos/photos.npy"), "photos.npy"]);
    let passes = 120u64;
    ok(&[
        "job",
        "add",
        "long",
        "--model",
        "m.onnx",
        "--inputs",
        "photos.npy",
        "--batch-size",
        "1",
        "--passes",
        &passes.to_string(),
    ]);
    ok(&["job", "start", "long"]);
    let started =
        wait_for(Duration::from_secs(60), || ok(&["job", "status", "long"])[0]["queries_done"].as_u64() >= Some(10));
    assert!(started.is_some(), "the job runs");
    let old_id = ok(&["secret", "list", k])[0]["key_id"].as_str().unwrap().to_string();
    let hup_all = || {
        for n in &c.nodes {
            common::signal(n.pid, libc::SIGHUP);
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    let key_ids = |id: u64| -> Vec<String> {
        status(id)["security"]["key_ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
    };

    // 1. A new key, accepted everywhere.
    let ring = ok(&["secret", "add", k]);
    let new_id = ring[1]["key_id"].as_str().unwrap().to_string();
    let old_copy = tmp.path().join("old");
    std::fs::write(&old_copy, std::fs::read_to_string(&keyring).unwrap().lines().nth(1).unwrap()).unwrap();
    hup_all();
    assert!(
        wait_for(Duration::from_secs(5), || (1..=5).all(|id| key_ids(id) == [old_id.clone(), new_id.clone()]))
            .is_some()
    );
    // 2. The new key primary everywhere, one node at a time.
    ok(&["secret", "use", k, &new_id]);
    hup_all();
    assert!(
        wait_for(Duration::from_secs(5), || (1..=5).all(|id| key_ids(id) == [new_id.clone(), old_id.clone()]))
            .is_some()
    );
    // 3. The old key gone.
    ok(&["secret", "remove", k, &old_id]);
    hup_all();
    assert!(wait_for(Duration::from_secs(5), || (1..=5).all(|id| key_ids(id) == [new_id.clone()])).is_some());

    let mid = ok(&["job", "status", "long"])[0].clone();
    assert_eq!(mid["state"], "running", "the rotation happened while the job ran: {mid}");

    // New connections with the old key alone are refused.
    let out = idunno_testkit::run_with_env(
        bin(),
        &["status", "--node", &c.node(3).rpc],
        &[("IDUNNO_SECRET_FILE", old_copy.to_str().unwrap())],
        Duration::from_secs(30),
    );
    refused(&out, "does not hold this cluster's secret");

    // The job finishes with every query counted once, and the group never
    // lost a member.
    let done = wait_for(Duration::from_secs(180), || ok(&["job", "status", "long"])[0]["state"] == "done");
    let st = ok(&["job", "status", "long"])[0].clone();
    assert!(done.is_some(), "{st}");
    assert_eq!(st["queries_done"].as_u64(), Some(passes * 14), "every query counted once: {st}");
    assert_eq!(st["inputs_done"].as_u64(), Some(passes * 14), "{st}");
    for id in 1..=5 {
        let s = status(id);
        assert_eq!(s["members_alive"], 5, "{s}");
        assert_eq!(s["swim"]["dead_events"], 0, "a member was declared dead during the rotation: {s}");
    }
}

#[test]
fn an_operators_certificate_serves_https_and_a_wrong_key_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let openssl = |key: &str, cert: &str| {
        std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost", "-keyout"])
            .arg(d.join(key))
            .arg("-out")
            .arg(d.join(cert))
            .output()
    };
    match openssl("key.pem", "cert.pem") {
        Ok(o) if o.status.success() => {}
        _ => {
            println!("SKIPPED: operator certificates need openssl(1) to make one");
            return;
        }
    }
    assert!(openssl("other-key.pem", "other-cert.pem").unwrap().status.success());
    let config = |key: &str| format!("[tls]\ncert_file = {:?}\nkey_file = {:?}\n", d.join("cert.pem"), d.join(key));
    let c = Cluster::up(bin(), 1, Some(&config("key.pem")));
    let token = common::http_token(bin(), &c.node(1).rpc);
    let port = c.node(1).http.rsplit_once(':').unwrap().1.to_string();
    let get = |auth: &str| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(d.join("cert.pem"))
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1"), "-H", auth])
            .arg(format!("https://localhost:{port}/api/status"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    // The operator's certificate verifies against its own CA (what a
    // browser would trust); the token is still needed.
    assert_eq!(get(&format!("Authorization: Bearer {token}")), "200");
    assert_eq!(get("Authorization: Bearer nope"), "401");
    assert_eq!(get(&format!("Cookie: idunno_token={token}")), "200");
    // The login URL sets the cookie and sends the browser to the page
    // without the token.
    let out = std::process::Command::new("curl")
        .args(["-s", "-m", "10", "-i", "--cacert"])
        .arg(d.join("cert.pem"))
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://localhost:{port}/api/members?token={token}"))
        .output()
        .expect("curl");
    let answer = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(answer.starts_with("http/2 303"), "{answer}");
    assert!(answer.contains(&format!("set-cookie: idunno_token={token}; path=/; httponly; secure")), "{answer}");
    assert!(answer.contains("location: /api/members\r\n"), "{answer}");

    // A key that does not belong to the certificate: refused at start.
    let bad = d.join("bad.toml");
    std::fs::write(&bad, config("other-key.pem")).unwrap();
    let port = common::free_ports(2);
    let out = run_env(
        &[
            "node",
            "--config",
            bad.to_str().unwrap(),
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
            d.join("n").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not belong to"), "{}", stderr(&out));
}
