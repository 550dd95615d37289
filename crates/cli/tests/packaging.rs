//! What ships for deployments, checked against the binary it ships: the
//! Kubernetes manifests (parsed; every flag one the binary has; names,
//! ports and the secret consistent; and, as root, the StatefulSet's exact
//! arguments run as three "pods" in network namespaces that form one group
//! and drain through the preStop command), the systemd unit
//! (`systemd-analyze verify`), and the container image's files (assembled,
//! then the binary run from them with `chroot`, as the image's user).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use idunno_testkit::netns::{self, NetnsCluster};
use idunno_testkit::wait_for;
use serde_norway::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn yaml(rel: &str) -> Value {
    let text = std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence().unwrap_or_else(|| panic!("not a list: {v:?}")).iter().map(|x| s(x).to_string()).collect()
}

/// The long flags `idunno <cmd…> --help` lists.
fn flags_of(cmd: &[&str]) -> BTreeSet<String> {
    let mut args = cmd.to_vec();
    args.push("--help");
    let out = common::run(&args, Duration::from_secs(20));
    assert!(out.status.success(), "{cmd:?} --help");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| w.trim_end_matches([',', '.']).split(['=', '[', '<']).next().unwrap().to_string())
        .collect()
}

/// Every `--flag` of `args` is one `idunno <cmd…>` has.
fn check_flags(cmd: &[&str], args: &[String]) {
    let known = flags_of(cmd);
    for a in args.iter().filter(|a| a.starts_with("--")) {
        assert!(known.contains(a.as_str()), "idunno {cmd:?} has no {a} (it has {known:?})");
    }
}

/// The value after `flag` in `args`.
fn arg<'a>(args: &'a [String], flag: &str) -> &'a str {
    let i = args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    &args[i + 1]
}

struct Manifests {
    args: Vec<String>,
    service: String,
    statefulset: String,
}

fn manifests() -> Manifests {
    let svc = yaml("deploy/kubernetes/service.yaml");
    let sts = yaml("deploy/kubernetes/statefulset.yaml");
    let secret = yaml("deploy/kubernetes/secret.example.yaml");
    let kustomize = yaml("deploy/kubernetes/kustomization.yaml");
    for r in strings(&kustomize["resources"]) {
        assert!(repo().join("deploy/kubernetes").join(&r).exists(), "kustomization names a missing {r}");
    }

    assert_eq!(s(&svc["kind"]), "Service");
    assert_eq!(s(&svc["spec"]["clusterIP"]), "None", "the Service is headless");
    assert_eq!(svc["spec"]["publishNotReadyAddresses"].as_bool(), Some(true));
    let service = s(&svc["metadata"]["name"]).to_string();
    assert_eq!(s(&sts["kind"]), "StatefulSet");
    assert_eq!(s(&sts["spec"]["serviceName"]), service);
    let pod = &sts["spec"]["template"];
    assert_eq!(pod["metadata"]["labels"], svc["spec"]["selector"], "the Service selects the pods");
    let c = &pod["spec"]["containers"][0];
    let args = strings(&c["args"]);
    assert_eq!(args[0], "node");
    check_flags(&["node"], &args);

    // Ports: the Service's and the container's are the node's --addr and --http.
    let port = |a: &str| a.rsplit_once(':').unwrap().1.parse::<u64>().unwrap();
    let ports = |v: &Value| -> BTreeSet<(u64, String)> {
        v.as_sequence()
            .unwrap()
            .iter()
            .map(|p| (p["port"].as_u64().or(p["containerPort"].as_u64()).unwrap(), s(&p["protocol"]).to_string()))
            .collect()
    };
    let (rpc, http) = (port(arg(&args, "--addr")), port(arg(&args, "--http")));
    let want: BTreeSet<(u64, String)> =
        [(rpc, "TCP".into()), (rpc, "UDP".into()), (http, "TCP".into())].into_iter().collect();
    assert_eq!(ports(&svc["spec"]["ports"]), want, "Service ports");
    assert_eq!(ports(&c["ports"]), want, "container ports");

    // Names: the pods' own, the Service's for joining, pod 0 founds.
    let statefulset = s(&sts["metadata"]["name"]).to_string();
    assert_eq!(arg(&args, "--advertise"), format!("$(POD_NAME).{service}:{rpc}"));
    assert_eq!(arg(&args, "--join"), format!("{service}:{rpc}"));
    assert_eq!(arg(&args, "--founder"), format!("{statefulset}-0.{service}:{rpc}"));
    let env = c["env"].as_sequence().unwrap();
    let var = |name: &str| env.iter().find(|e| s(&e["name"]) == name).unwrap_or_else(|| panic!("no env {name}"));
    assert_eq!(s(&var("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"]), "metadata.name");

    // The secret: the file IDUNNO_SECRET_FILE names is the Secret's key, mounted.
    let file = Path::new(s(&var("IDUNNO_SECRET_FILE")["value"]));
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let mount =
        mounts.iter().find(|m| Path::new(s(&m["mountPath"])) == file.parent().unwrap()).expect("secret mounted");
    let volumes = pod["spec"]["volumes"].as_sequence().unwrap();
    let volume = volumes.iter().find(|v| v["name"] == mount["name"]).expect("the mount's volume");
    assert_eq!(s(&volume["secret"]["secretName"]), s(&secret["metadata"]["name"]));
    let key = file.file_name().unwrap().to_str().unwrap();
    assert!(secret["stringData"][key].is_string(), "the Secret has no key {key}");
    // The data folder is the volume claim's mount.
    let claim = s(&sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]);
    let data = mounts.iter().find(|m| s(&m["name"]) == claim).expect("data volume mounted");
    assert_eq!(s(&data["mountPath"]), arg(&args, "--data-dir"));

    // Probes and the preStop hook are client commands with real flags.
    let exec = |v: &Value| strings(&v["exec"]["command"]);
    let entry = "/usr/bin/idunno";
    for probe in [&c["readinessProbe"], &c["livenessProbe"]] {
        let cmd = exec(probe);
        assert_eq!((cmd[0].as_str(), cmd[1].as_str()), (entry, "status"));
        check_flags(&["status"], &cmd[2..]);
    }
    let stop = exec(&c["lifecycle"]["preStop"]);
    assert_eq!(&stop[..4], [entry, "member", "drain", "--node"]);
    check_flags(&["member", "drain"], &stop[3..]);
    let grace = pod["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(grace > arg(&stop, "--timeout").parse::<u64>().unwrap(), "the grace period outlasts the drain");
    // The image's entry point is where the commands look for the binary.
    let containerfile = std::fs::read_to_string(repo().join("packaging/Containerfile")).unwrap();
    assert!(containerfile.contains(&format!("ENTRYPOINT [\"{entry}\"]")), "{containerfile}");
    Manifests { args, service, statefulset }
}

#[test]
fn the_kubernetes_manifests_agree_with_each_other_and_the_binary() {
    manifests();
}

/// The StatefulSet's own arguments, run as three pods (network namespaces
/// named as the headless Service names them): one group forms, pod 0
/// founding it; the preStop command drains a pod.
#[test]
fn the_statefulsets_arguments_form_one_group_and_the_prestop_hook_drains() {
    if let Some(why) = netns::unavailable() {
        println!("SKIPPED: the StatefulSet test {why}");
        return;
    }
    let m = manifests();
    let mut c = NetnsCluster::new(common::bin(), 3);
    c.name(&m.service, &[1, 2, 3]);
    for i in 1..=3 {
        c.name(&format!("{}-{}.{}", m.statefulset, i - 1, m.service), &[i]);
    }
    // The pods start in reverse order: seeds come up late.
    for i in (1..=3u32).rev() {
        let pod = format!("{}-{}", m.statefulset, i - 1);
        let mut args: Vec<String> = Vec::new();
        let mut it = m.args[1..].iter();
        while let Some(a) = it.next() {
            // (The harness gives each host its own data folder.)
            if a == "--data-dir" {
                it.next();
                continue;
            }
            args.push(a.replace("$(POD_NAME)", &pod));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        c.start_with(i, &args);
    }
    let formed = wait_for(Duration::from_secs(60), || {
        (1..=3).all(|i| {
            c.status(i).is_some_and(|s| s["members_alive"] == 3 && s["voters"].as_array().is_some_and(|v| v.len() == 3))
        })
    });
    assert!(formed.is_some(), "no group of 3: {:?}", (1..=3).map(|i| c.status(i)).collect::<Vec<_>>());
    // preStop of the last pod, as Kubernetes runs it: in the pod, against itself.
    let out = c.cli(3, &["member", "drain", "--timeout", "60"], Duration::from_secs(90));
    assert!(out.status.success(), "preStop drain: {}", String::from_utf8_lossy(&out.stderr));
    assert!(wait_for(Duration::from_secs(10), || !c.running(3)).is_some(), "pod 3 still running after its drain");
    let s1 = c.status(1).expect("pod 1 answers");
    println!("after the drain, pod 1 says: {s1}");
    assert_eq!(s1["members_alive"], 2, "{s1}");
}

#[test]
fn the_systemd_unit_verifies_and_runs_the_binarys_flags() {
    let unit = std::fs::read_to_string(repo().join("packaging/idunno.service")).unwrap();
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
    let words: Vec<String> = exec.split_whitespace().map(String::from).collect();
    assert_eq!((words[0].as_str(), words[1].as_str()), ("/usr/bin/idunno", "node"));
    check_flags(&["node"], &words[2..]);
    for key in
        ["DynamicUser=yes", "StateDirectory=", "NoNewPrivileges=yes", "ProtectSystem=strict", "Restart=on-failure"]
    {
        assert!(unit.lines().any(|l| l.starts_with(key)), "the unit lacks {key}");
    }
    assert!(unit.contains("LoadCredential=cluster.secret:") && unit.contains("IDUNNO_SECRET_FILE=%d/cluster.secret"));

    if std::process::Command::new("systemd-analyze").arg("--version").output().is_err() {
        println!("SKIPPED: systemd-analyze verify (no systemd-analyze here)");
        return;
    }
    // verify wants the binary where ExecStart says: point it at this build.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idunno.service");
    std::fs::write(&path, unit.replace("/usr/bin/idunno", common::bin().to_str().unwrap())).unwrap();
    let out = std::process::Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "systemd-analyze verify: {err}");
}

#[test]
fn the_container_images_files_run_the_binary_on_their_own() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: the container files test needs root for chroot");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    let out = std::process::Command::new(repo().join("packaging/container-rootfs"))
        .arg(&root)
        .arg(common::bin())
        .output()
        .unwrap();
    assert!(out.status.success(), "container-rootfs: {}", String::from_utf8_lossy(&out.stderr));
    for f in ["usr/bin/idunno", "usr/lib/idunno/libonnxruntime.so", "etc/passwd"] {
        assert!(root.join(f).exists(), "the image lacks /{f}");
    }
    for absent in ["bin/sh", "usr/bin/cargo", "usr/bin/gcc"] {
        assert!(!root.join(absent).exists(), "the image has /{absent}");
    }
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new("chroot");
        cmd.arg("--userspec=10001:10001").arg(&root).args(args).env_remove("IDUNNO_SECRET_FILE");
        cmd.output().unwrap()
    };
    let out = run(&["/usr/bin/idunno", "--version"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("idunno "));
    // A client in the image reports an unreachable node as any client does.
    let out = run(&["/usr/bin/idunno", "status", "--node", "127.0.0.1:1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("127.0.0.1:1"), "{err}");
}
