//! The SDFS namespace: which versions of which file exist and where their
//! replicas are. Versions are committed once their bytes are durable,
//! names are deleted (leaving a tombstone so numbers never repeat), and
//! repair moves replicas.

use serde::{Deserialize, Serialize};

use crate::{Applied, Refusal, Reply, distinct, non_empty};

/// File name → its versions. A persistent map, so a copy of the state
/// (published after every applied batch, taken for every snapshot) shares
/// its entries instead of copying them: a commit costs O(log n), not O(n).
pub type Files = imbl::OrdMap<String, FileEntry>;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    #[serde(deserialize_with = "crate::bounded::ordmap")]
    pub files: Files,
    /// The first version of a file whose name is not in `files`: above
    /// every version of a forgotten name (see [`FileCommand::ForgetFiles`]),
    /// so a version number never means two contents, even after a deleted
    /// name's entry is collected.
    #[serde(default)]
    pub version_floor: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Oldest first; at most `keep` of them.
    pub versions: Vec<FileVersion>,
    /// The number the next put gets: versions never repeat, even after a
    /// delete and a new put of the same name.
    pub next_version: u64,
    /// The leader's clock when the file was deleted: the entry is then a
    /// tombstone (no versions), kept until the leader forgets it.
    #[serde(default)]
    pub deleted_at_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileVersion {
    pub version: u64,
    pub size: u64,
    /// BLAKE3 of the whole content, hex.
    pub blake3: String,
    /// Nodes holding a durable replica.
    pub replicas: Vec<u64>,
    /// The leader's clock when the version was committed (ms since epoch).
    pub committed_at_ms: u64,
}

/// A change to the namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FileCommand {
    /// A new version of `name` whose bytes `replicas` hold durably.
    CommitFileVersion { name: String, size: u64, blake3: String, replicas: Vec<u64>, keep: u32, now_ms: u64 },
    /// Forget every version of `name`.
    DeleteFile {
        name: String,
        /// The leader's clock (when the tombstone may be collected).
        #[serde(default)]
        now_ms: u64,
    },
    /// Drop the tombstones of deleted names (entries without versions);
    /// names that have versions again are left alone. Their version
    /// numbers stay used: `version_floor` rises above them.
    ForgetFiles { names: Vec<String> },
    /// Record where the replicas of one version now live (after repair).
    SetReplicas { name: String, version: u64, replicas: Vec<u64> },
}

impl FileCommand {
    /// Every op of this domain, as the wire names it.
    pub const OPS: &[&str] = &["commit_file_version", "delete_file", "forget_files", "set_replicas"];
}

impl Namespace {
    pub fn apply(&mut self, cmd: FileCommand) -> Applied {
        match cmd {
            FileCommand::CommitFileVersion { name, size, blake3, replicas, keep, now_ms } => {
                self.commit(name, FileVersion { version: 0, size, blake3, replicas, committed_at_ms: now_ms }, keep)
            }
            FileCommand::DeleteFile { name, now_ms } => self.delete(name, now_ms),
            FileCommand::ForgetFiles { names } => {
                for name in names {
                    if let Some(e) = self.files.get(&name).filter(|e| e.versions.is_empty()) {
                        self.version_floor = self.version_floor.max(e.next_version);
                        self.files.remove(&name);
                    }
                }
                Ok(Reply::Done)
            }
            FileCommand::SetReplicas { name, version, replicas } => self.set_replicas(name, version, replicas),
        }
    }

    /// Commit `v` as the next version of `name` (its number is given here).
    fn commit(&mut self, name: String, mut v: FileVersion, keep: u32) -> Applied {
        non_empty("file name", &name)?;
        non_empty("checksum", &v.blake3)?;
        distinct(&v.replicas)?;
        if v.replicas.is_empty() {
            return Err(Refusal::Empty { what: "replica list".into() });
        }
        if keep == 0 {
            return Err(Refusal::KeepZero);
        }
        let floor = self.version_floor;
        let entry = self.files.entry(name).or_insert_with(|| FileEntry { next_version: floor, ..Default::default() });
        entry.deleted_at_ms = None;
        let version = entry.next_version.max(1);
        entry.next_version = version + 1;
        v.version = version;
        entry.versions.push(v);
        let excess = entry.versions.len().saturating_sub(keep as usize);
        let dropped = entry.versions.drain(..excess).map(|v| v.version).collect();
        Ok(Reply::Committed { version, dropped })
    }

    fn delete(&mut self, name: String, now_ms: u64) -> Applied {
        let entry = self.files.get_mut(&name).filter(|e| !e.versions.is_empty());
        let Some(entry) = entry else { return Err(Refusal::NoSuchFile { name }) };
        // The entry stays (empty) so version numbers never repeat,
        // until the leader forgets it.
        let versions = entry.versions.drain(..).map(|v| v.version).collect();
        entry.deleted_at_ms = Some(now_ms);
        Ok(Reply::Deleted { versions })
    }

    fn set_replicas(&mut self, name: String, version: u64, replicas: Vec<u64>) -> Applied {
        distinct(&replicas)?;
        let entry = self.files.get_mut(&name).filter(|e| !e.versions.is_empty());
        let Some(entry) = entry else { return Err(Refusal::NoSuchFile { name }) };
        let Some(v) = entry.versions.iter_mut().find(|v| v.version == version) else {
            return Err(Refusal::NoSuchVersion { name, version });
        };
        v.replicas = replicas;
        Ok(Reply::Done)
    }

    /// The invariants every reachable namespace keeps.
    pub fn check(&self) -> Result<(), String> {
        for (name, f) in &self.files {
            if f.versions.windows(2).any(|w| w[0].version >= w[1].version) {
                return Err(format!("{name}: versions not increasing"));
            }
            if f.versions.iter().any(|v| v.version >= f.next_version) {
                return Err(format!("{name}: a version is not below next_version"));
            }
            if f.versions.iter().any(|v| distinct(&v.replicas).is_err()) {
                return Err(format!("{name}: a replica list repeats a node"));
            }
        }
        Ok(())
    }
}
