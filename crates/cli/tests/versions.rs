//! Versions that must not mix: a node speaking another wire protocol is
//! refused by the cluster and told why; a data folder laid out by another
//! build is refused before anything in it is read or written.

mod common;

use std::time::Duration;

use common::{free_ports, wait_for};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_node_speaking_another_wire_protocol_is_refused_and_says_why() {
    let c = common::up(2);
    let s = common::json_via(&c, 1, &["status"], Duration::from_secs(20));
    assert_eq!(s["protocol"], 1, "{s}");
    assert_eq!(s["data_format"], 1, "{s}");

    let tmp = tempfile::tempdir().unwrap();
    let port = free_ports(2);
    let data = tmp.path().join("newer");
    let out = common::run(
        &[
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
            "--wire-protocol",
            "2",
            "--join",
            &c.node(1).rpc,
            "--join-timeout-ms",
            "3000",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let line = err.trim().lines().last().unwrap_or_default();
    assert!(line.starts_with("error: could not join"), "{err}");
    assert!(line.contains(&format!("{} speaks protocol 1", c.node(1).rpc)), "{line}");
    assert!(line.contains("this node speaks protocol 2"), "{line}");
    // The cluster never let it in, and says so in its log.
    for n in &c.nodes {
        let members = common::members(&c, n.id);
        assert_eq!(members.len(), 2, "node {}: {members:?}", n.id);
    }
    let log = std::fs::read_to_string(c.dir.path().join("n1/node.log")).unwrap();
    assert!(log.contains("another wire protocol") && log.contains("theirs=2"), "{log}");
}

#[test]
fn a_data_folder_of_another_format_is_refused_and_left_as_it_was() {
    let port = free_ports(2);
    let tmp = tempfile::tempdir().unwrap();
    let node = |dir: &std::path::Path| {
        common::run(
            &[
                "node",
                "--addr",
                &format!("127.0.0.1:{port}"),
                "--http",
                &format!("127.0.0.1:{}", port + 1),
                "--data-dir",
                dir.to_str().unwrap(),
            ],
            Duration::from_secs(20),
        )
    };
    for (content, needles) in [
        ("2\n", ["in format 2", "written by a newer idunno"]),
        ("0\n", ["in format 0", "written by an older idunno"]),
        ("garbage", ["not a number", "damaged"]),
    ] {
        let dir = tmp.path().join(format!("d{}", content.trim()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("FORMAT"), content).unwrap();
        let out = node(&dir);
        assert_eq!(out.status.code(), Some(2), "{content:?}: {}", stderr(&out));
        let err = stderr(&out);
        for n in needles {
            assert!(err.contains(n) && err.contains("this node reads format 1"), "{content:?}: {err}");
        }
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("FORMAT")], "the folder was touched");
        assert_eq!(std::fs::read_to_string(dir.join("FORMAT")).unwrap(), content);
    }
    // A new folder is stamped with this build's format.
    let fresh = tmp.path().join("fresh");
    let mut child = std::process::Command::new(common::bin())
        .args(["node", "--addr", &format!("127.0.0.1:{port}"), "--http", &format!("127.0.0.1:{}", port + 1)])
        .arg("--data-dir")
        .arg(&fresh)
        .env("IDUNNO_SECRET_FILE", common::secret_file())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stamped = wait_for(Duration::from_secs(10), || fresh.join("node_id").exists());
    let _ = child.kill();
    let _ = child.wait();
    assert!(stamped.is_some(), "the node did not start");
    assert_eq!(std::fs::read_to_string(fresh.join("FORMAT")).unwrap(), "1\n");
}
