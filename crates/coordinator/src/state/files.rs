//! The SDFS namespace's commands: versions committed, deleted names and
//! their tombstones, replicas moved by repair.

use super::{Applied, ClusterState, FileEntry, FileVersion, Refusal, Reply, distinct, non_empty};

impl ClusterState {
    pub(super) fn commit_file_version(
        &mut self,
        name: String,
        size: u64,
        blake3: String,
        replicas: Vec<u64>,
        keep: u32,
        now_ms: u64,
    ) -> Applied {
        non_empty("file name", &name)?;
        non_empty("checksum", &blake3)?;
        distinct(&replicas)?;
        if replicas.is_empty() {
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
        entry.versions.push(FileVersion { version, size, blake3, replicas, committed_at_ms: now_ms });
        let excess = entry.versions.len().saturating_sub(keep as usize);
        let dropped = entry.versions.drain(..excess).map(|v| v.version).collect();
        Ok(Reply::Committed { version, dropped })
    }

    pub(super) fn delete_file(&mut self, name: String, now_ms: u64) -> Applied {
        let entry = self.files.get_mut(&name).filter(|e| !e.versions.is_empty());
        let Some(entry) = entry else { return Err(Refusal::NoSuchFile { name }) };
        // The entry stays (empty) so version numbers never repeat,
        // until the leader forgets it.
        let versions = entry.versions.drain(..).map(|v| v.version).collect();
        entry.deleted_at_ms = Some(now_ms);
        Ok(Reply::Deleted { versions })
    }

    pub(super) fn forget_files(&mut self, names: Vec<String>) -> Applied {
        for name in names {
            if let Some(e) = self.files.get(&name).filter(|e| e.versions.is_empty()) {
                self.version_floor = self.version_floor.max(e.next_version);
                self.files.remove(&name);
            }
        }
        Ok(Reply::Done)
    }

    pub(super) fn set_replicas(&mut self, name: String, version: u64, replicas: Vec<u64>) -> Applied {
        distinct(&replicas)?;
        let entry = self.files.get_mut(&name).filter(|e| !e.versions.is_empty());
        let Some(entry) = entry else { return Err(Refusal::NoSuchFile { name }) };
        let Some(v) = entry.versions.iter_mut().find(|v| v.version == version) else {
            return Err(Refusal::NoSuchVersion { name, version });
        };
        v.replicas = replicas;
        Ok(Reply::Done)
    }
}
