//! Tables for people, JSON for scripts: every command prints through here.

use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::{ContentArrangement, Table};
use serde::Serialize;

use crate::error::CliError;

#[derive(Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    /// Print `doc` as JSON on stdout.
    pub fn json<T: Serialize>(&self, doc: &T) -> Result<(), CliError> {
        let text = serde_json::to_string_pretty(doc).map_err(|e| CliError::failed(format!("json: {e}")))?;
        println!("{text}");
        Ok(())
    }
}

/// A plain table with a header row.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_content_arrangement(ContentArrangement::Dynamic).set_header(header);
    t
}
