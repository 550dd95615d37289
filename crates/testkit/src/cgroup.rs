//! A slower machine for tests (root only): a CPU cgroup of the test's own
//! whose processes together get a fixed part of one CPU, through the CFS
//! bandwidth limit (`cpu.max` on cgroup v2, `cpu.cfs_quota_us` on v1).
//! Processes moved in stay there until the limit is dropped, which moves
//! whatever is still in it back to the top cgroup and removes it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

const PERIOD_US: u64 = 100_000;

/// A cgroup with a CPU limit, removed on drop.
pub struct CpuLimit {
    dir: PathBuf,
    /// The `cgroup.procs` of the hierarchy's top, where processes go back.
    top: PathBuf,
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("writing {text:?} to {}: {e}", path.display()))
}

impl CpuLimit {
    /// A new cgroup whose processes share `percent` % of one CPU, or why
    /// there can be none here.
    pub fn new(percent: u32) -> Result<CpuLimit, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("needs root to make a cgroup".into());
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("idunno-test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let quota = (PERIOD_US * percent.max(1) as u64 / 100).max(1_000);
        let v2 = Path::new("/sys/fs/cgroup");
        if v2.join("cgroup.controllers").exists() {
            let controllers = std::fs::read_to_string(v2.join("cgroup.subtree_control")).unwrap_or_default();
            if !controllers.split_whitespace().any(|c| c == "cpu") {
                write(&v2.join("cgroup.subtree_control"), "+cpu")?;
            }
            let dir = v2.join(name);
            std::fs::create_dir(&dir).map_err(|e| format!("making {}: {e}", dir.display()))?;
            let limit = CpuLimit { dir, top: v2.join("cgroup.procs") };
            write(&limit.dir.join("cpu.max"), &format!("{quota} {PERIOD_US}"))?;
            return Ok(limit);
        }
        let v1 = ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"]
            .iter()
            .map(Path::new)
            .find(|p| p.join("cpu.cfs_quota_us").exists())
            .ok_or("no CPU cgroup controller is mounted (neither cgroup v2 nor v1's cpu)")?;
        let dir = v1.join(name);
        std::fs::create_dir(&dir).map_err(|e| format!("making {}: {e}", dir.display()))?;
        let limit = CpuLimit { dir, top: v1.join("cgroup.procs") };
        write(&limit.dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
        write(&limit.dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
        Ok(limit)
    }

    /// Move process `pid` (all its threads) into the limit.
    pub fn add(&self, pid: u32) -> Result<(), String> {
        write(&self.dir.join("cgroup.procs"), &pid.to_string())
    }

    /// How many periods the limit held the processes back so far: more
    /// than zero once it has bitten.
    pub fn throttled(&self) -> u64 {
        let stat = std::fs::read_to_string(self.dir.join("cpu.stat")).unwrap_or_default();
        stat.lines().find_map(|l| l.strip_prefix("nr_throttled ")).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        for _ in 0..50 {
            let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.split_whitespace() {
                let _ = std::fs::write(&self.top, pid);
            }
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
