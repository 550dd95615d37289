//! SPEC §10: a client command with no `--node` and no `IDUNNO_NODE` talks
//! to a live node listed in `./.idunno/cluster.json`; `IDUNNO_NODE` wins
//! over it, and `--node` over both.

mod common;

use std::process::{Command, Output};

use common::{bin, free_ports};

fn idunno_in(dir: &std::path::Path, env_node: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args).current_dir(dir).env_remove("IDUNNO_NODE");
    if let Some(n) = env_node {
        cmd.env("IDUNNO_NODE", n);
    }
    cmd.output().expect("run idunno")
}

struct Down<'a>(&'a std::path::Path);
impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = idunno_in(self.0, None, &["down"]);
    }
}

#[test]
fn clients_find_the_cluster_through_dot_idunno() {
    let cwd = tempfile::tempdir().unwrap();
    let base = free_ports(4);
    let up = idunno_in(cwd.path(), None, &["up", "--nodes", "2", "--base-port", &base.to_string(), "--json"]);
    let _down = Down(cwd.path());
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    assert!(cwd.path().join(".idunno/cluster.json").exists());

    let status = |env: Option<&str>, extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["status", "--json"];
        args.extend_from_slice(extra);
        let out = idunno_in(cwd.path(), env, &args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let second = format!("127.0.0.1:{}", base + 2);
    assert_eq!(status(None, &[])["node"], 1, "cluster.json's first live node");
    assert_eq!(status(Some(&second), &[])["node"], 2, "IDUNNO_NODE wins");
    let nowhere = format!("127.0.0.1:{}", free_ports(1));
    assert_eq!(status(Some(&nowhere), &["--node", &format!("127.0.0.1:{base}")])["node"], 1, "--node wins");

    let down = idunno_in(cwd.path(), None, &["down", "--json"]);
    assert!(down.status.success());
    let d: serde_json::Value = serde_json::from_slice(&down.stdout).unwrap();
    assert_eq!(d["stopped"].as_array().unwrap().len(), 2, "{d}");
    assert!(!cwd.path().join(".idunno/cluster.json").exists());
    // With the cluster gone, an unreachable IDUNNO_NODE is named in a
    // one-line error with exit status 1.
    let out = idunno_in(cwd.path(), Some(&nowhere), &["status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&nowhere));
}
