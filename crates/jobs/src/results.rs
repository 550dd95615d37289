//! `<job>.results` in SDFS: one JSON object per line, one line per input
//! (the output of the latest pass that ran it), each with the number of
//! the query that produced it.
//!
//! The leader writes the file before it counts the queries in it, so a
//! counted query always has its rows; a crash between the two leaves rows
//! of queries that were not counted, which readers drop (their number is
//! beyond the job's count) and the re-run overwrites.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The query's number: the order in which queries were counted.
    pub query: u64,
    pub pass: u64,
    pub input: u64,
    /// Predicted class, or the output vector.
    pub output: serde_json::Value,
}

/// The SDFS file that holds a job's results.
pub fn file_name(job: &str) -> String {
    format!("{job}.results")
}

/// The rows of a job, by input.
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub rows: BTreeMap<u64, Row>,
}

impl Table {
    pub fn parse(bytes: &[u8]) -> Result<Table, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("results are not UTF-8: {e}"))?;
        let mut rows = BTreeMap::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let row: Row = serde_json::from_str(line).map_err(|e| format!("results line {}: {e}", i + 1))?;
            rows.insert(row.input, row);
        }
        Ok(Table { rows })
    }

    /// The file's bytes with `extra` rows laid over this table's.
    pub fn render_with(&self, extra: &[Row]) -> Vec<u8> {
        let mut merged: BTreeMap<u64, &Row> = self.rows.iter().map(|(k, v)| (*k, v)).collect();
        for r in extra {
            if merged.get(&r.input).is_none_or(|old| old.pass <= r.pass) {
                merged.insert(r.input, r);
            }
        }
        let mut out = Vec::with_capacity(merged.len() * 32);
        for r in merged.values() {
            // Serializing plain numbers and strings cannot fail.
            if let Ok(line) = serde_json::to_vec(r) {
                out.extend_from_slice(&line);
                out.push(b'\n');
            }
        }
        out
    }

    /// Lay `rows` over the table. An input keeps its row from the latest
    /// pass: a query of an earlier pass that was re-run after a failure may
    /// finish after the next pass's.
    pub fn apply(&mut self, rows: Vec<Row>) {
        for r in rows {
            if self.rows.get(&r.input).is_none_or(|old| old.pass <= r.pass) {
                self.rows.insert(r.input, r);
            }
        }
    }

    /// The rows whose query was counted (`queries_done` of the job).
    pub fn counted(&self, queries_done: u64) -> Vec<&Row> {
        self.rows.values().filter(|r| r.query <= queries_done).collect()
    }
}
