//! Nodes being drained: an operator asked (`idunno member drain`) that a
//! node hand back its work and stop. Replicated, so the intent survives a
//! change of leader and every node agrees on it: the job leader gives a
//! draining node no more queries and trainings regroup without it, SDFS
//! places no new copy on it and re-replicates what it holds, the
//! coordinator group takes it out of the voters. The node itself stops once
//! nothing needs it any more.
//!
//! A drain names the node's generation: a node that restarts (a new
//! generation) is not draining any more, and says so with `undrain_node`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Applied, Refusal, Reply};

/// At most this many nodes draining at once (a bound on the table).
pub const MAX_DRAINING: usize = 1024;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTable {
    /// Draining nodes by id.
    pub draining: BTreeMap<u64, Drain>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    /// The generation of the node's process that drains.
    pub generation: u64,
    /// When the drain was asked for (the leader's clock).
    pub since_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum NodeCommand {
    /// Start draining `node` (its process of `generation`). Asking again
    /// changes nothing.
    DrainNode { node: u64, generation: u64, now_ms: u64 },
    /// `node` is not draining (any more): it restarted, or the operator
    /// changed their mind.
    UndrainNode { node: u64 },
}

impl NodeCommand {
    pub const OPS: &[&str] = &["drain_node", "undrain_node"];
}

impl NodeTable {
    pub fn apply(&mut self, cmd: NodeCommand) -> Applied {
        match cmd {
            NodeCommand::DrainNode { node, generation, now_ms } => {
                if node == 0 {
                    return Err(Refusal::BadNode("node 0 is not a node id".into()));
                }
                if let Some(d) = self.draining.get(&node)
                    && d.generation == generation
                {
                    return Ok(Reply::Done);
                }
                if self.draining.len() >= MAX_DRAINING && !self.draining.contains_key(&node) {
                    return Err(Refusal::BadNode(format!("{MAX_DRAINING} nodes are draining already")));
                }
                self.draining.insert(node, Drain { generation, since_ms: now_ms });
                Ok(Reply::Done)
            }
            NodeCommand::UndrainNode { node } => {
                self.draining.remove(&node);
                Ok(Reply::Done)
            }
        }
    }

    /// Whether `node` is draining.
    pub fn is_draining(&self, node: u64) -> bool {
        self.draining.contains_key(&node)
    }

    pub fn check(&self) -> Result<(), String> {
        if self.draining.len() > MAX_DRAINING {
            return Err(format!("{} nodes draining; at most {MAX_DRAINING}", self.draining.len()));
        }
        if self.draining.contains_key(&0) {
            return Err("node 0 is draining".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drains_are_idempotent_and_end_with_undrain() {
        let mut t = NodeTable::default();
        t.apply(NodeCommand::DrainNode { node: 3, generation: 7, now_ms: 100 }).unwrap();
        t.apply(NodeCommand::DrainNode { node: 3, generation: 7, now_ms: 200 }).unwrap();
        assert_eq!(t.draining[&3], Drain { generation: 7, since_ms: 100 }, "asking again changes nothing");
        assert!(t.is_draining(3) && !t.is_draining(4));
        t.apply(NodeCommand::UndrainNode { node: 3 }).unwrap();
        assert!(!t.is_draining(3));
        let before = t.clone();
        assert!(t.apply(NodeCommand::DrainNode { node: 0, generation: 1, now_ms: 1 }).is_err());
        assert_eq!(t, before);
        t.check().unwrap();
    }
}
