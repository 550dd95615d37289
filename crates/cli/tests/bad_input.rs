//! Bad input gets one clear error line, a non-zero exit, and no hang.

mod common;

use std::net::{TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use common::{free_ports, run};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// The final line of a node's stderr (its logs come before).
fn last_line(out: &std::process::Output) -> String {
    stderr(out).lines().last().unwrap_or("").to_string()
}

#[test]
fn unreachable_introducer_fails_fast_with_a_clear_error() {
    let base = free_ports(4);
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let out = run(
        &[
            "node",
            "--addr",
            &format!("127.0.0.1:{base}"),
            "--http",
            &format!("127.0.0.1:{}", base + 1),
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--join",
            &format!("127.0.0.1:{}", base + 2),
            "--join-timeout-ms",
            "1500",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(1));
    let line = last_line(&out);
    assert!(line.starts_with("error: could not join through"), "{line}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn port_in_use_is_named() {
    let base = free_ports(2);
    let _tcp = TcpListener::bind(("127.0.0.1", base)).unwrap();
    let _udp = UdpSocket::bind(("127.0.0.1", base)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        &["node", "--addr", &format!("127.0.0.1:{base}"), "--data-dir", dir.path().to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(1));
    let line = last_line(&out);
    assert!(line.contains(&format!("127.0.0.1:{base} is already in use")), "{line}");
}

#[test]
fn malformed_config_is_refused_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "addr = \"127.0.0.1:9\"\n[swim]\nprobe_period_ms = \"fast\"\n").unwrap();
    let out = run(&["node", "--config", cfg.to_str().unwrap()], Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("bad.toml") && err.contains("line 3"), "{err}");

    std::fs::write(&cfg, "[swim]\nprobe_period_ms = 100\nprobe_rtt_ms = 200\n").unwrap();
    let out = run(&["node", "--config", cfg.to_str().unwrap()], Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("probe_rtt_ms must be smaller"), "{}", stderr(&out));
}

#[test]
fn a_data_folder_belongs_to_one_node_id() {
    let base = free_ports(2);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("node_id"), "3\n").unwrap();
    let out = run(
        &["node", "--id", "4", "--addr", &format!("127.0.0.1:{base}"), "--data-dir", dir.path().to_str().unwrap()],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(last_line(&out).contains("belongs to node 3, not node 4"), "{}", stderr(&out));
}

#[test]
fn clients_get_one_line_errors() {
    let base = free_ports(1);
    let dead = format!("127.0.0.1:{base}");
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["status", "--node", &dead], 1, "cannot reach node at"),
        (vec!["member", "list", "--json", "--node", &dead], 1, "cannot reach node at"),
        (vec!["status", "--node", "not-an-address"], 2, "bad node address"),
        (vec!["up", "--nodes", "0"], 2, "--nodes 0"),
        (vec!["up", "--nodes", "3", "--base-port", "65534"], 2, "--base-port"),
        (vec!["member", "frobnicate"], 2, "frobnicate"),
    ];
    for (args, code, needle) in cases {
        let out = run(&args, Duration::from_secs(20));
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(needle), "{args:?}: {err}");
        if args[0] != "member" || args[1] != "frobnicate" {
            assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        }
        assert!(out.stdout.is_empty(), "{args:?} printed on stdout");
    }
}

#[test]
fn a_bad_join_request_changes_nothing() {
    let c = common::up(1);
    let addr = c.node(1).rpc.clone();
    let out = run(&["member", "join", "--introducer", "nonsense", "--node", &addr], Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("nonsense"));
    let free = free_ports(1);
    let out = run(
        &["member", "join", "--introducer", &format!("127.0.0.1:{free}"), "--node", &addr],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no member answered"), "{}", stderr(&out));
    let members = common::members(&c, 1);
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["state"], "alive");
}

#[test]
fn up_refuses_a_second_cluster_in_the_same_folder() {
    let c = common::up(1);
    let d = c.path().to_str().unwrap().to_string();
    let base = free_ports(2);
    let out = run(&["up", "--nodes", "1", "--dir", &d, "--base-port", &base.to_string()], Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already running"), "{}", stderr(&out));
    // The first cluster is untouched.
    assert_eq!(common::members(&c, 1).len(), 1);
}

#[test]
fn a_node_without_a_secret_listens_on_loopback_only() {
    let base = free_ports(2);
    let dir = tempfile::tempdir().unwrap();
    let out = idunno_testkit::run_with_env(
        common::bin(),
        &["node", "--addr", &format!("0.0.0.0:{base}"), "--data-dir", dir.path().to_str().unwrap()],
        &[("IDUNNO_SECRET_FILE", "")],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("not a loopback address") && err.contains("idunno secret new"), "{err}");
    // Nothing was started: no data folder contents, the port is free.
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    assert!(std::net::TcpListener::bind(("127.0.0.1", base)).is_ok());

    // A secret file that is not one is refused, naming the file, not its content.
    let bad = dir.path().join("secret");
    std::fs::write(&bad, "not-a-secret\n").unwrap();
    let out = idunno_testkit::run_with_env(
        common::bin(),
        &["node", "--addr", &format!("127.0.0.1:{base}"), "--data-dir", dir.path().to_str().unwrap()],
        &[("IDUNNO_SECRET_FILE", bad.to_str().unwrap())],
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("secret file") && err.contains("found 12 characters") && !err.contains("not-a-secret\n"),
        "{err}"
    );
}
