//! `<job>.results` in SDFS: one JSON object per line, each the output for
//! one input with the number and pass of the query that produced it.
//!
//! The leader writes the file before it counts the queries in it, so a
//! counted query always has its rows. The file therefore holds, per input,
//! the newest row of a *counted* query and possibly newer rows of queries
//! not (yet) counted: the commit that follows may be refused (the job was
//! stopped meanwhile) or never happen (the leader died). Readers know the
//! job's count and keep, per input, the row of the latest pass among the
//! rows whose query number is within it; the others are dropped, and their
//! queries run again if the job goes on.

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

/// The counted rows of a job: per input, the row of the latest pass.
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub rows: BTreeMap<u64, Row>,
}

impl Table {
    /// The rows of a results file whose queries are among the job's
    /// `queries_done` first.
    pub fn parse(bytes: &[u8], queries_done: u64) -> Result<Table, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("results are not UTF-8: {e}"))?;
        let mut table = Table::default();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let row: Row = serde_json::from_str(line).map_err(|e| format!("results line {}: {e}", i + 1))?;
            if row.query <= queries_done {
                table.apply(vec![row]);
            }
        }
        Ok(table)
    }

    /// The file's bytes: every counted row, then `tentative` rows of
    /// queries about to be counted.
    pub fn render_with(&self, tentative: &[Row]) -> Vec<u8> {
        let mut out = Vec::with_capacity((self.rows.len() + tentative.len()) * 32);
        for r in self.rows.values().chain(tentative) {
            // Serializing plain numbers and strings cannot fail.
            if let Ok(line) = serde_json::to_vec(r) {
                out.extend_from_slice(&line);
                out.push(b'\n');
            }
        }
        out
    }

    /// Lay counted `rows` over the table. An input keeps its row from the
    /// latest pass: a query of an earlier pass that was re-run after a
    /// failure may be counted after the next pass's.
    pub fn apply(&mut self, rows: Vec<Row>) {
        for r in rows {
            let newer = self.rows.get(&r.input).is_none_or(|old| (old.pass, old.query) <= (r.pass, r.query));
            if newer {
                self.rows.insert(r.input, r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(query: u64, pass: u64, input: u64, output: i64) -> Row {
        Row { query, pass, input, output: serde_json::json!(output) }
    }

    #[test]
    fn uncounted_rows_never_hide_counted_ones() {
        let mut t = Table::default();
        t.apply(vec![row(1, 0, 0, 7), row(1, 0, 1, 8), row(2, 1, 0, 9)]);
        // Rows of queries 3 and 4 were written, but only 3 was counted.
        let bytes = t.render_with(&[row(3, 1, 1, 10), row(4, 2, 0, 11)]);
        let read = Table::parse(&bytes, 3).unwrap();
        let got: Vec<(u64, u64, u64)> = read.rows.values().map(|r| (r.input, r.pass, r.query)).collect();
        assert_eq!(got, [(0, 1, 2), (1, 1, 3)]);
        // Before any count, nothing shows.
        assert!(Table::parse(&bytes, 0).unwrap().rows.is_empty());
        // A re-run of an earlier pass counted late does not replace a later pass.
        let mut t = read;
        t.apply(vec![row(5, 0, 0, 1)]);
        assert_eq!(t.rows[&0].pass, 1);
        assert!(Table::parse(b"{not json", 1).unwrap_err().contains("line 1"));
    }
}
