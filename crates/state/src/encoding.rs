//! How commands and states are read: a command's flat JSON goes to the
//! domain its op names, and a state in the older flat JSON shape (one
//! table per field, from snapshots written before the domains were
//! split) is still understood.

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::{
    AssignmentNote, ClusterState, Command, FileCommand, Files, JobCommand, JobTable, Jobs, Namespace, TrainCommand,
    TrainingTable, Trainings,
};

/// Every op, for the error that names an unknown one.
const ALL_OPS: &[&str] = &[
    "commit_file_version",
    "delete_file",
    "forget_files",
    "set_replicas",
    "add_job",
    "set_job_state",
    "set_batch_size",
    "remove_job",
    "set_assignments",
    "complete_queries",
    "drop_results",
    "compact_results",
    "record_progress",
    "fail_job",
    "add_training",
    "set_train_group",
    "report_training",
    "fail_training",
];

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        let op = match value.get("op") {
            Some(serde_json::Value::String(op)) => op.as_str(),
            Some(_) => return Err(D::Error::custom("op must be a string")),
            None => return Err(D::Error::missing_field("op")),
        };
        let of = |e: serde_json::Error| D::Error::custom(e);
        if FileCommand::OPS.contains(&op) {
            FileCommand::deserialize(value).map(Command::Files).map_err(of)
        } else if JobCommand::OPS.contains(&op) {
            JobCommand::deserialize(value).map(Command::Jobs).map_err(of)
        } else if TrainCommand::OPS.contains(&op) {
            TrainCommand::deserialize(value).map(Command::Training).map_err(of)
        } else {
            Err(D::Error::unknown_variant(op, ALL_OPS))
        }
    }
}

/// The state as it was laid out before the domains were split (every
/// table a field of its own), as older snapshot files hold it.
#[derive(Deserialize)]
pub struct FlatClusterState {
    #[serde(deserialize_with = "crate::bounded::ordmap")]
    files: Files,
    #[serde(deserialize_with = "crate::bounded::ordmap")]
    jobs: Jobs,
    assignments: BTreeMap<String, Vec<u64>>,
    #[serde(default)]
    assignment_notes: BTreeMap<String, AssignmentNote>,
    #[serde(default, deserialize_with = "crate::bounded::ordmap")]
    trainings: Trainings,
    #[serde(default)]
    version_floor: u64,
}

impl From<FlatClusterState> for ClusterState {
    fn from(f: FlatClusterState) -> Self {
        ClusterState {
            namespace: Namespace { files: f.files, version_floor: f.version_floor },
            inference: JobTable { jobs: f.jobs, assignments: f.assignments, assignment_notes: f.assignment_notes },
            training: TrainingTable { jobs: f.trainings },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_domain_op_is_listed_once() {
        let mut domains: Vec<&str> =
            FileCommand::OPS.iter().chain(JobCommand::OPS).chain(TrainCommand::OPS).copied().collect();
        domains.sort_unstable();
        let mut all = ALL_OPS.to_vec();
        all.sort_unstable();
        assert_eq!(domains, all);
        all.dedup();
        assert_eq!(all.len(), ALL_OPS.len(), "an op is in two domains");
    }

    #[test]
    fn unknown_and_malformed_ops_are_named() {
        let e = serde_json::from_str::<Command>(r#"{"op":"explode"}"#).unwrap_err().to_string();
        assert!(e.contains("unknown variant `explode`"), "{e}");
        let e = serde_json::from_str::<Command>(r#"{"op":7}"#).unwrap_err().to_string();
        assert!(e.contains("op must be a string"), "{e}");
        let e = serde_json::from_str::<Command>(r#"{"name":"f"}"#).unwrap_err().to_string();
        assert!(e.contains("missing field `op`"), "{e}");
        let e = serde_json::from_str::<Command>(r#"{"op":"delete_file"}"#).unwrap_err().to_string();
        assert!(e.contains("missing field `name`"), "{e}");
    }
}
