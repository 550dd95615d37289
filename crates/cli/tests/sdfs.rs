//! SDFS end to end: real node processes, real files on real disks.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Cluster, kill9, run, up, wait_for};
use serde_json::Value;

/// A file of `len` pseudo-random bytes (seeded), written in one go.
fn make_file(dir: &Path, name: &str, len: usize, seed: u64) -> PathBuf {
    let mut x = seed | 1;
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    let p = dir.join(name);
    std::fs::write(&p, &data).unwrap();
    p
}

fn hash(p: &Path) -> String {
    blake3::hash(&std::fs::read(p).unwrap()).to_hex().to_string()
}

fn fs(c: &Cluster, via: u64, args: &[&str]) -> std::process::Output {
    let mut full = vec!["fs"];
    full.extend_from_slice(args);
    full.extend(["--node", &c.node(via).rpc]);
    run(&full, Duration::from_secs(120))
}

fn fs_json(c: &Cluster, via: u64, args: &[&str]) -> Value {
    let mut full: Vec<&str> = args.to_vec();
    full.push("--json");
    let out = fs(c, via, &full);
    assert!(out.status.success(), "fs {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn round_trips_are_byte_identical() {
    let c = up(5);
    let tmp = tempfile::tempdir().unwrap();
    for (i, len) in [0usize, 1, 3 * (1 << 20) + 1, 200 << 20].into_iter().enumerate() {
        let src = make_file(tmp.path(), &format!("src{i}"), len, i as u64 + 7);
        let name = format!("data/file{i}");
        let put = fs_json(&c, 1 + i as u64, &["put", s(&src), &name]);
        assert_eq!(put["size"], len as u64);
        assert_eq!(put["version"], 1);
        assert_eq!(put["replicas"].as_array().unwrap().len(), 4, "{put}");
        let dst = tmp.path().join(format!("dst{i}"));
        fs_json(&c, 5 - i as u64, &["get", &name, s(&dst)]);
        assert_eq!(hash(&src), hash(&dst), "{len} bytes");
        assert_eq!(put["blake3"], hash(&src));
        let ls = fs_json(&c, 2, &["ls", &name]);
        assert_eq!(ls["versions"][0]["size"], len as u64);
        if len > (1 << 20) {
            // Big transfers leave no partial files behind.
            let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().contains("idunno-part"))
                .collect();
            assert!(leftovers.is_empty());
        }
    }
    let list = fs_json(&c, 3, &["list", "data/"]);
    assert_eq!(list.as_array().unwrap().len(), 4);
}

#[test]
fn three_of_four_holders_killed_at_once_and_the_file_still_reads() {
    // Seven nodes: the coordinator group (7 voters) survives 3 failures too.
    let c = up(7);
    let grown = wait_for(Duration::from_secs(30), || {
        common::json(&["status", "--json", "--node", &c.node(1).rpc])["voters"].as_array().unwrap().len() == 7
    });
    assert!(grown.is_some(), "the coordinator group never reached 7 voters");
    let tmp = tempfile::tempdir().unwrap();
    let src = make_file(tmp.path(), "src", 5 << 20, 99);
    let put = fs_json(&c, 1, &["put", s(&src), "precious"]);
    let holders: Vec<u64> = put["replicas"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let leader = common::json(&["status", "--json", "--node", &c.node(1).rpc])["leader"].as_u64().unwrap();
    // Kill three holders, sparing the leader if it holds one (losing it too
    // would be a fourth failure).
    let victims: Vec<u64> = holders.iter().copied().filter(|h| *h != leader).take(3).collect();
    assert_eq!(victims.len(), 3);
    for v in &victims {
        kill9(c.node(*v).pid);
    }
    let via = (1..=7).find(|id| !victims.contains(id)).unwrap();
    let dst = tmp.path().join("dst");
    let read = wait_for(Duration::from_secs(30), || {
        fs(&c, via, &["get", "precious", s(&dst)]).status.success() && hash(&dst) == hash(&src)
    });
    assert!(read.is_some(), "the file could not be read after 3 of its 4 holders died");

    // Without any command, the file is back on 4 live nodes.
    let start = std::time::Instant::now();
    let repaired = wait_for(Duration::from_secs(30), || {
        let ls = fs_json(&c, via, &["ls", "precious"]);
        let now: Vec<u64> =
            ls["versions"][0]["replicas"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        now.len() == 4 && now.iter().all(|n| !victims.contains(n))
    });
    assert!(repaired.is_some(), "replicas not restored: {}", fs_json(&c, via, &["ls", "precious"]));
    println!("3 of 4 holders killed: 4 live replicas again {:?} after the kill", start.elapsed());
    // And the new copies are real: each new holder serves the right bytes.
    let ls = fs_json(&c, via, &["ls", "precious"]);
    for h in ls["versions"][0]["replicas"].as_array().unwrap() {
        let h = h.as_u64().unwrap();
        let blob = c.data_dir(h).join("sdfs/blobs").join(put["blake3"].as_str().unwrap());
        assert_eq!(blake3::hash(&std::fs::read(&blob).unwrap()).to_hex().to_string(), hash(&src), "holder {h}");
    }
}

#[test]
fn only_the_newest_five_versions_are_kept_and_versions_concatenates_them() {
    let c = up(3);
    let tmp = tempfile::tempdir().unwrap();
    let mut hashes = Vec::new();
    for v in 1..=6u64 {
        let src = make_file(tmp.path(), &format!("v{v}"), 1000 + v as usize, v);
        let put = fs_json(&c, 1, &["put", s(&src), "notes"]);
        assert_eq!(put["version"], v);
        hashes.push(hash(&src));
    }
    let ls = fs_json(&c, 2, &["ls", "notes"]);
    let versions: Vec<u64> =
        ls["versions"].as_array().unwrap().iter().map(|v| v["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, vec![6, 5, 4, 3, 2], "newest first, five kept");
    let out = fs(&c, 3, &["get", "notes", s(&tmp.path().join("x")), "--version", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no version 1"));
    let old = tmp.path().join("v3.out");
    fs_json(&c, 3, &["get", "notes", s(&old), "--version", "3"]);
    assert_eq!(hash(&old), hashes[2]);

    let all = tmp.path().join("last3");
    fs_json(&c, 1, &["versions", "notes", "3", s(&all)]);
    let text = std::fs::read(&all).unwrap();
    let delims: Vec<String> = String::from_utf8_lossy(&text)
        .lines()
        .filter(|l| l.starts_with("==> idunno: notes version "))
        .map(|l| l.to_string())
        .collect();
    assert_eq!(delims.len(), 3, "{delims:?}");
    assert!(delims[0].contains("version 6 (1006 bytes") && delims[2].contains("version 4 (1004 bytes"), "{delims:?}");
}

#[test]
fn concurrent_puts_are_totally_ordered_and_none_is_lost() {
    let c = up(3);
    let tmp = tempfile::tempdir().unwrap();
    let src = make_file(tmp.path(), "src", 200_000, 5);
    let handles: Vec<_> = (0..2)
        .map(|client| {
            let (node, path) = (c.node(1 + client).rpc.clone(), src.clone());
            std::thread::spawn(move || {
                (0..4)
                    .map(|_| {
                        let out = common::run(
                            &["fs", "put", path.to_str().unwrap(), "shared", "--json", "--node", &node],
                            Duration::from_secs(60),
                        );
                        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                        serde_json::from_slice::<Value>(&out.stdout).unwrap()["version"].as_u64().unwrap()
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut versions: Vec<u64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    versions.sort();
    assert_eq!(versions, (1..=8).collect::<Vec<u64>>(), "every put got its own version");
}

#[test]
fn delete_and_bad_input() {
    let c = up(3);
    let tmp = tempfile::tempdir().unwrap();
    let src = make_file(tmp.path(), "src", 10_000, 3);
    fs_json(&c, 1, &["put", s(&src), "doomed"]);
    let del = fs_json(&c, 2, &["delete", "doomed"]);
    assert_eq!(del["deleted_versions"], serde_json::json!([1]));
    let dst = tmp.path().join("dst");
    let out = fs(&c, 3, &["get", "doomed", s(&dst)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such file: doomed"));
    assert!(!dst.exists(), "a failed get leaves no file");
    let out = fs(&c, 1, &["delete", "doomed"]);
    assert_eq!(out.status.code(), Some(2));

    let out = fs(&c, 1, &["put", s(&tmp.path().join("missing")), "ghost"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read local file"));
    let out = fs(&c, 1, &["put", s(tmp.path()), "ghost"]);
    assert_eq!(out.status.code(), Some(2));
    let out = fs(&c, 1, &["put", s(&src), ""]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(fs_json(&c, 2, &["list"]).as_array().unwrap().is_empty(), "nothing visible after refused puts");
}

#[test]
fn a_flipped_byte_in_a_replica_is_caught_and_the_right_bytes_served() {
    let c = up(4);
    let tmp = tempfile::tempdir().unwrap();
    let src = make_file(tmp.path(), "src", 3 << 20, 11);
    let put = fs_json(&c, 1, &["put", s(&src), "fragile"]);
    let blob = put["blake3"].as_str().unwrap().to_string();
    // Corrupt the copy on the node the get will ask (it reads its own first).
    let via = put["replicas"][0].as_u64().unwrap();
    let path = c.data_dir(via).join("sdfs/blobs").join(&blob);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[(2 << 20) + 17] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let dst = tmp.path().join("dst");
    fs_json(&c, via, &["get", "fragile", s(&dst)]);
    assert_eq!(hash(&dst), hash(&src), "the corrupt chunk was served");
    // The bad copy is gone from disk and from the namespace. (Repair may
    // already have put a good copy back on the same node.)
    assert!(std::fs::read(&path).map_or(true, |now| now != bytes), "the corrupt replica is still on disk");
    // With four nodes the repair's only target is the same node, and it
    // may already have a good copy again: listed then, but only with it.
    let good_copy = || std::fs::read(&path).is_ok_and(|b| blake3::hash(&b).to_hex().to_string() == hash(&src));
    let gone = wait_for(Duration::from_secs(10), || {
        let ls = fs_json(&c, 2, &["ls", "fragile"]);
        !ls["versions"][0]["replicas"].as_array().unwrap().iter().any(|r| r.as_u64() == Some(via)) || good_copy()
    });
    assert!(gone.is_some(), "the namespace still lists the corrupt holder");
    // ...and repair brings the file back to 4 good copies.
    let repaired = wait_for(Duration::from_secs(20), || {
        fs_json(&c, 2, &["ls", "fragile"])["versions"][0]["replicas"].as_array().unwrap().len() == 4
    });
    assert!(repaired.is_some(), "the corrupt replica was not replaced");
    let restored = std::fs::read(&path).map(|b| blake3::hash(&b).to_hex().to_string());
    assert_eq!(restored.ok(), Some(hash(&src)), "the bad node holds a good copy again");
}

/// `fs get --range` through a holder (read from its own disk) and through
/// a node that holds nothing (read from the holders), across chunk
/// boundaries; a corrupt chunk, and a holder whose chunk checksums were
/// forged, are passed over for a good holder, and the bytes are right.
#[test]
fn ranges_are_read_from_their_chunks_verified() {
    const MIB: usize = 1 << 20;
    let c = up(5);
    let tmp = tempfile::tempdir().unwrap();
    let len = 3 * MIB + 1000;
    let src = make_file(tmp.path(), "src", len, 23);
    let bytes = std::fs::read(&src).unwrap();
    let put = fs_json(&c, 1, &["put", s(&src), "ranged"]);
    let holders: Vec<u64> = put["replicas"].as_array().unwrap().iter().map(|r| r.as_u64().unwrap()).collect();
    let outsider = (1..=5).find(|id| !holders.contains(id)).unwrap();
    let get = |via: u64, range: &str| -> Vec<u8> {
        let dst = tmp.path().join("dst");
        let doc = fs_json(&c, via, &["get", "ranged", s(&dst), "--range", range]);
        assert_eq!(doc["size"], len as u64, "{doc}");
        let got = std::fs::read(&dst).unwrap();
        assert_eq!(doc["range"]["end"].as_u64().unwrap() - doc["range"]["start"].as_u64().unwrap(), got.len() as u64);
        got
    };
    let cases: [(&str, usize, usize); 8] = [
        ("0:10", 0, 10),
        ("1048571:1048581", MIB - 5, MIB + 5),
        ("1048575:3145729", MIB - 1, 3 * MIB + 1),
        ("3146727:", 3 * MIB + 999, len),
        (":", 0, len),
        ("2097152:2097152", 2 * MIB, 2 * MIB),
        (":1048576", 0, MIB),
        ("3145728:3146728", 3 * MIB, len),
    ];
    // The first holder the outsider asks has checksums that are not the
    // file's and a corrupt chunk 2: it is passed over for the next.
    let blob = put["blake3"].as_str().unwrap();
    let path = c.data_dir(holders[0]).join("sdfs/blobs").join(blob);
    let mut corrupt = std::fs::read(&path).unwrap();
    corrupt[2 * MIB + 3] ^= 0x01;
    std::fs::write(&path, &corrupt).unwrap();
    let sums = c.data_dir(holders[0]).join("sdfs/blobs").join(format!("{blob}.chunks"));
    let text = std::fs::read_to_string(&sums).unwrap();
    // Chunk 1's checksum (in the range read): were the forged list not
    // checked against the file's BLAKE3, every good holder's chunk 1
    // would fail against it and the read with them.
    let at = text.match_indices("\"blake3\":\"").nth(1).unwrap().0 + 10;
    std::fs::write(&sums, format!("{}00000000{}", &text[..at], &text[at + 8..])).unwrap();
    assert!(get(outsider, "2097000:2097500") == bytes[2_097_000..2_097_500]);
    assert!(get(holders[0], "2097000:2097500") == bytes[2_097_000..2_097_500]);
    // The bad copy is gone from that holder's disk.
    assert!(std::fs::read(&path).map_or(true, |now| now != corrupt), "the corrupt replica is still on disk");

    for via in [holders[1], outsider] {
        for (range, a, b) in cases {
            assert!(get(via, range) == bytes[a..b], "range {range} via node {via}");
        }
    }
    // A range beyond the file is refused, and names the file's size.
    let out = fs(&c, outsider, &["get", "ranged", s(&tmp.path().join("x")), "--range", "10:99999999"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{len} bytes")));
    let out = fs(&c, outsider, &["get", "ranged", s(&tmp.path().join("x")), "--range", "9:3"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!tmp.path().join("x").exists(), "a refused get leaves no file");
}

#[test]
fn garbage_is_collected_on_every_replica() {
    let config = "[sdfs]\ngc_grace_ms = 500\ngc_every_ms = 300\n";
    let c = Cluster::up(common::bin(), 3, Some(config));
    let tmp = tempfile::tempdir().unwrap();
    let blobs_on = |id: u64| -> Vec<String> {
        std::fs::read_dir(c.data_dir(id).join("sdfs/blobs"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| !n.ends_with(".chunks"))
            .collect()
    };
    let mut hashes = Vec::new();
    for v in 0..6 {
        let src = make_file(tmp.path(), &format!("v{v}"), 50_000 + v, v as u64 + 1);
        hashes.push(fs_json(&c, 1, &["put", s(&src), "rolling"])["blake3"].as_str().unwrap().to_string());
    }
    let doomed = make_file(tmp.path(), "doomed", 70_000, 42);
    let doomed_hash = fs_json(&c, 2, &["put", s(&doomed), "doomed"])["blake3"].as_str().unwrap().to_string();
    fs_json(&c, 2, &["delete", "doomed"]);

    // Uploads that stop half-way (the client goes away, or sends less than
    // it announced) leave no version and, in the end, no bytes.
    interrupted_uploads(&c.node(3).rpc);

    let clean = wait_for(Duration::from_secs(20), || {
        (1..=3).all(|id| {
            let b = blobs_on(id);
            let tmp_empty = std::fs::read_dir(c.data_dir(id).join("sdfs/tmp")).unwrap().next().is_none();
            tmp_empty && !b.contains(&hashes[0]) && !b.contains(&doomed_hash) && b.len() == 5
        })
    });
    assert!(
        clean.is_some(),
        "left on disk: {:?}; tmp {:?}; kept versions {:?}; doomed {doomed_hash}; list {}",
        (1..=3).map(blobs_on).collect::<Vec<_>>(),
        (1..=3)
            .map(|id| std::fs::read_dir(c.data_dir(id).join("sdfs/tmp"))
                .unwrap()
                .flatten()
                .map(|e| (e.file_name(), e.metadata().unwrap().len()))
                .collect::<Vec<_>>())
            .collect::<Vec<_>>(),
        &hashes[1..],
        fs_json(&c, 1, &["list"])
    );
    for id in 1..=3 {
        let b = blobs_on(id);
        assert!(hashes[1..].iter().all(|h| b.contains(h)), "node {id} lost a kept version");
    }
    let list = fs_json(&c, 1, &["list"]);
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["rolling"], "no version of the interrupted upload is visible");
}

#[test]
fn deleted_names_are_forgotten_and_the_state_stays_bounded() {
    let config = "[sdfs]\ntombstone_grace_ms = 0\ngc_every_ms = 300\n";
    let c = Cluster::up(common::bin(), 3, Some(config));
    let tmp = tempfile::tempdir().unwrap();
    let src = make_file(tmp.path(), "src", 1000, 5);
    // A put/delete loop over many names: each leaves a tombstone.
    let names: Vec<String> = (0..60).map(|i| format!("churn/{i}")).collect();
    let mut had = Vec::new();
    for round in 0..2 {
        for name in &names {
            let put = fs_json(&c, 1 + round, &["put", s(&src), name]);
            if name == "churn/0" {
                had.push(put["version"].as_u64().unwrap());
            }
            fs_json(&c, 2, &["delete", name]);
        }
    }
    fs_json(&c, 1, &["put", s(&src), "kept"]);
    let entries = || ok_state(&c)["state"]["namespace"]["files"].as_object().unwrap().len();
    let bounded = wait_for(Duration::from_secs(20), || entries() == 1);
    assert!(bounded.is_some(), "{} namespace entries left after the deletes", entries());
    // A forgotten name, put again, never gets a version it had before.
    let again = fs_json(&c, 3, &["put", s(&src), "churn/0"])["version"].as_u64().unwrap();
    assert!(had.iter().all(|v| again > *v), "version {again} after {had:?}");
    let kept = fs_json(&c, 1, &["get", "kept", s(&tmp.path().join("back"))]);
    assert_eq!(hash(&tmp.path().join("back")), hash(&src), "{kept}");
}

/// The replicated state, read through node 1.
fn ok_state(c: &Cluster) -> Value {
    let out = run(&["coord", "state", "--json", "--node", &c.node(1).rpc], Duration::from_secs(20));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Two broken uploads straight over gRPC: one whose client vanishes after
/// 3 MiB of an announced 64 MiB, one that ends early.
fn interrupted_uploads(addr: &str) {
    use idunno_rpc::v1::{self, put_message};
    common::use_secret(idunno_auth::Role::Client);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let header = |name: &str| v1::PutMessage {
            part: Some(put_message::Part::Header(v1::PutHeader { name: name.into(), size: 64 << 20 })),
        };
        let data = || v1::PutMessage { part: Some(put_message::Part::Data(bytes::Bytes::from(vec![7u8; 1 << 20]))) };

        // The client vanishes: its connection is torn down mid-stream.
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let channel = idunno_rpc::connect_channel(addr, Duration::from_secs(5)).await.unwrap();
        let mut client = idunno_rpc::SdfsClient::new(channel);
        let call = tokio::spawn(async move { client.put(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
        tx.send(header("vanished")).await.unwrap();
        for _ in 0..3 {
            tx.send(data()).await.unwrap();
        }
        // Give the chunks time to reach the replicas, so the abort lands
        // mid-upload; the assertions that follow hold however far it got.
        tokio::time::sleep(Duration::from_millis(200)).await;
        call.abort();
        drop(tx);

        // The client ends the stream before the announced size.
        let channel = idunno_rpc::connect_channel(addr, Duration::from_secs(5)).await.unwrap();
        let mut client = idunno_rpc::SdfsClient::new(channel);
        let msgs = vec![header("short"), data(), data()];
        let err = client.put(tokio_stream::iter(msgs)).await.expect_err("a short upload is refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(err.message().contains("nothing was stored"), "{err}");
    });
}

#[test]
fn a_full_disk_is_a_clear_error_and_leaks_nothing() {
    // A node whose data folder is a 24 MiB tmpfs, mounted in a mount
    // namespace of its own (root only; nothing outside it is touched).
    if unsafe { libc::geteuid() } != 0 || std::process::Command::new("unshare").arg("--help").output().is_err() {
        println!("SKIPPED: the full-disk test needs root and unshare(1) to mount a small tmpfs");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let port = common::free_ports(2);
    let addr = format!("127.0.0.1:{port}");
    let script = format!(
        "mount -t tmpfs -o size=24m tmpfs {d} && exec {bin} node --cluster full-disk --id 1 --addr {addr} \
         --http 127.0.0.1:{http} --data-dir {d} --replicas 1 --secret-file {secret}",
        d = data.display(),
        bin = common::bin().display(),
        http = port + 1,
        secret = common::secret_file().display()
    );
    let log = std::fs::File::create(tmp.path().join("node.log")).unwrap();
    let mut node = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let node_pid = node.id();
    let _guard = Kill(&mut node);
    let up = wait_for(Duration::from_secs(15), || {
        run(&["status", "--node", &addr], Duration::from_secs(5)).status.success()
    });
    assert!(up.is_some(), "{}", std::fs::read_to_string(tmp.path().join("node.log")).unwrap_or_default());

    let too_big = make_file(tmp.path(), "big", 40 << 20, 1);
    let out = run(&["fs", "put", s(&too_big), "big", "--node", &addr], Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left") && err.contains("nothing was committed"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let list = run(&["fs", "list", "--json", "--node", &addr], Duration::from_secs(20));
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), "[]", "nothing visible");
    // Nothing half-written is left in the node's folder either (seen from
    // inside its mount namespace, where the small disk is).
    let tmp_dir = data.join("sdfs/tmp");
    let left = std::process::Command::new("nsenter")
        .args(["-t", &node_pid.to_string(), "-m", "ls", "-A"])
        .arg(&tmp_dir)
        .output()
        .expect("nsenter");
    assert!(left.status.success(), "{}", String::from_utf8_lossy(&left.stderr));
    assert_eq!(String::from_utf8_lossy(&left.stdout).trim(), "", "temporary files left after a full disk");

    // Nothing leaked: a file that fits in the space left goes through.
    let fits = make_file(tmp.path(), "fits", 14 << 20, 2);
    let out = run(&["fs", "put", s(&fits), "fits", "--node", &addr], Duration::from_secs(60));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let back = tmp.path().join("back");
    let out = run(&["fs", "get", "fits", s(&back), "--node", &addr], Duration::from_secs(60));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(hash(&back), hash(&fits));
}
