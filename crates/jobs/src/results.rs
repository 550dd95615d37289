//! A job's results in SDFS: its base `<job>.results` and its segments
//! `<job>.results.<first query>-<hash>` (see
//! `idunno_state::JobResults` for which files count).
//!
//! Every file has one layout: a 16-byte header, then fixed-size rows.
//!
//! ```text
//! header: "IDRSLT01" | kind u8 (0 class, 1 vector) | 3 zero bytes | width u32
//! row:    query u64 | pass u64 | input u64 | output
//!         output: class i64, or `width` f32 values
//! ```
//!
//! All numbers little-endian. Fixed-size rows let a reader stream a file
//! of any size, and a writer copy a worker's outputs without decoding
//! them: a worker sends, per query, its outputs in the same form
//! ([`Layout::output_bytes`] per input).

use bytes::{Buf, BytesMut};
use idunno_state::is_current;

pub const MAGIC: &[u8; 8] = b"IDRSLT01";
pub const HEADER_BYTES: usize = 16;
/// The widest vector output a row may hold: one row travels in one
/// message.
pub const MAX_WIDTH: u32 = 1 << 24;

/// What a row's output is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// The predicted class (or the model's one number), an i64.
    Class,
    /// The first output's values for the input, `width` f32s.
    Vector(u32),
}

impl Layout {
    /// From the wire: width 0 is a class.
    pub fn from_width(width: u32) -> Result<Layout, String> {
        match width {
            0 => Ok(Layout::Class),
            w if w <= MAX_WIDTH => Ok(Layout::Vector(w)),
            w => Err(format!("an output of {w} values per input is wider than {MAX_WIDTH}")),
        }
    }

    pub fn width(self) -> u32 {
        match self {
            Layout::Class => 0,
            Layout::Vector(w) => w,
        }
    }

    pub fn output_bytes(self) -> usize {
        match self {
            Layout::Class => 8,
            Layout::Vector(w) => 4 * w as usize,
        }
    }

    pub fn row_bytes(self) -> usize {
        24 + self.output_bytes()
    }

    pub fn header(self) -> [u8; HEADER_BYTES] {
        let mut h = [0u8; HEADER_BYTES];
        h[..8].copy_from_slice(MAGIC);
        h[8] = matches!(self, Layout::Vector(_)) as u8;
        h[12..].copy_from_slice(&self.width().to_le_bytes());
        h
    }

    pub fn parse_header(h: &[u8]) -> Result<Layout, String> {
        if h.len() < HEADER_BYTES || &h[..8] != MAGIC || h[9..12] != [0, 0, 0] {
            return Err("not a results file (bad header)".into());
        }
        let width = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
        match (h[8], width) {
            (0, 0) => Ok(Layout::Class),
            (1, w) if (1..=MAX_WIDTH).contains(&w) => Ok(Layout::Vector(w)),
            (k, w) => Err(format!("results file of unknown kind {k} or width {w}")),
        }
    }
}

/// One input's output.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Class(i64),
    Vector(Vec<f32>),
}

impl Output {
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Output::Class(c) => serde_json::json!(c),
            Output::Vector(v) => serde_json::json!(v),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The query's number: the order in which queries were counted.
    pub query: u64,
    pub pass: u64,
    pub input: u64,
    pub output: Output,
}

impl Row {
    fn decode(layout: Layout, mut b: &[u8]) -> Row {
        let (query, pass, input) = (b.get_u64_le(), b.get_u64_le(), b.get_u64_le());
        let output = match layout {
            Layout::Class => Output::Class(b.get_i64_le()),
            Layout::Vector(w) => Output::Vector((0..w).map(|_| b.get_f32_le()).collect()),
        };
        Row { query, pass, input, output }
    }
}

/// The base file of a job.
pub fn file_name(job: &str) -> String {
    format!("{job}.results")
}

/// A segment's name: the job, its first query, and its content's hash
/// (two leaders racing to write the same queries never share a name).
pub fn segment_name(job: &str, first_query: u64, bytes: &[u8]) -> String {
    let hash = blake3::hash(bytes).to_hex();
    format!("{job}.results.{first_query:012}-{}", &hash[..16])
}

/// Whether `name` looks like one of `job`'s segments.
pub fn is_segment_of(job: &str, name: &str) -> bool {
    name.strip_prefix(&file_name(job))
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|rest| rest.len() == 29 && rest.as_bytes()[12] == b'-')
}

/// Builds one file: header, then rows.
pub struct Writer {
    layout: Layout,
    buf: Vec<u8>,
}

impl Writer {
    pub fn new(layout: Layout) -> Writer {
        Writer { layout, buf: layout.header().to_vec() }
    }

    /// Rows for consecutive inputs from `first_input`, outputs as a worker
    /// sent them ([`Layout::output_bytes`] each).
    pub fn push_query(&mut self, query: u64, pass: u64, first_input: u64, outputs: &[u8]) {
        for (k, out) in outputs.chunks_exact(self.layout.output_bytes()).enumerate() {
            self.push_raw(query, pass, first_input + k as u64, out);
        }
    }

    fn push_raw(&mut self, query: u64, pass: u64, input: u64, out: &[u8]) {
        self.buf.extend_from_slice(&query.to_le_bytes());
        self.buf.extend_from_slice(&pass.to_le_bytes());
        self.buf.extend_from_slice(&input.to_le_bytes());
        self.buf.extend_from_slice(out);
    }

    pub fn push(&mut self, row: &Row) {
        let out: Vec<u8> = match &row.output {
            Output::Class(c) => c.to_le_bytes().to_vec(),
            Output::Vector(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        self.push_raw(row.query, row.pass, row.input, &out);
    }

    pub fn rows(&self) -> usize {
        (self.buf.len() - HEADER_BYTES) / self.layout.row_bytes()
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows() == 0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// The bytes so far, leaving the writer with its header only (for
    /// streaming a big file out in parts).
    pub fn take_body(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

/// Reads one file from its bytes as they arrive, in pieces of any size.
#[derive(Default)]
pub struct Reader {
    layout: Option<Layout>,
    pending: BytesMut,
}

impl Reader {
    pub fn layout(&self) -> Option<Layout> {
        self.layout
    }

    /// Take the next piece; returns the rows it completed.
    pub fn feed(&mut self, piece: &[u8]) -> Result<Vec<Row>, String> {
        self.pending.extend_from_slice(piece);
        let layout = match self.layout {
            Some(l) => l,
            None if self.pending.len() < HEADER_BYTES => return Ok(Vec::new()),
            None => {
                let l = Layout::parse_header(&self.pending)?;
                self.pending.advance(HEADER_BYTES);
                self.layout = Some(l);
                l
            }
        };
        let size = layout.row_bytes();
        let n = self.pending.len() / size;
        let rows = (0..n).map(|i| Row::decode(layout, &self.pending[i * size..(i + 1) * size])).collect();
        self.pending.advance(n * size);
        Ok(rows)
    }

    /// The file ended: an unfinished row or a missing header is an error.
    pub fn finish(&self) -> Result<(), String> {
        match (self.layout, self.pending.len()) {
            (None, _) => Err("results file without a header".into()),
            (Some(_), 0) => Ok(()),
            (Some(_), n) => Err(format!("results file ends inside a row ({n} bytes left)")),
        }
    }
}

/// A whole file's rows.
pub fn parse(bytes: &[u8]) -> Result<(Layout, Vec<Row>), String> {
    let mut r = Reader::default();
    let rows = r.feed(bytes)?;
    r.finish()?;
    Ok((r.layout.unwrap_or(Layout::Class), rows))
}

/// Which rows of a job's results files are current (see
/// [`is_current`]): the job's done ranges and inputs per pass.
#[derive(Clone, Debug)]
pub struct Current {
    pub done: Vec<(u64, u64)>,
    pub samples: u64,
}

impl Current {
    pub fn keeps(&self, row: &Row) -> bool {
        is_current(&self.done, self.samples, row.pass, row.input)
    }
}

/// Rows as they travel to a client.
pub fn to_message(layout: Layout, rows: &[Row]) -> idunno_rpc::v1::ResultRows {
    let mut m = idunno_rpc::v1::ResultRows { width: layout.width(), ..Default::default() };
    for r in rows {
        m.query.push(r.query);
        m.pass.push(r.pass);
        m.input.push(r.input);
        match &r.output {
            Output::Class(c) => m.classes.push(*c),
            Output::Vector(v) => m.values.extend_from_slice(v),
        }
    }
    m
}

/// Rows from a message, checked: every column as long as the others.
pub fn from_message(m: idunno_rpc::v1::ResultRows) -> Result<Vec<Row>, String> {
    let n = m.query.len();
    let w = m.width as usize;
    let outputs_fit = if w == 0 { m.classes.len() == n } else { Some(m.values.len()) == n.checked_mul(w) };
    if m.pass.len() != n || m.input.len() != n || !outputs_fit {
        return Err("result rows with columns of different lengths".into());
    }
    Ok((0..n)
        .map(|i| Row {
            query: m.query[i],
            pass: m.pass[i],
            input: m.input[i],
            output: if w == 0 {
                Output::Class(m.classes[i])
            } else {
                Output::Vector(m.values[i * w..(i + 1) * w].to_vec())
            },
        })
        .collect())
}

/// Every current row of `job` through `client`, sorted by input.
pub async fn fetch(
    client: &mut idunno_rpc::JobsClient<tonic::transport::Channel>,
    job: &str,
) -> Result<Vec<Row>, tonic::Status> {
    let query = idunno_rpc::v1::JobQuery { job: job.to_string(), explain: false };
    let mut stream = client.results(query).await?.into_inner();
    let mut rows = Vec::new();
    while let Some(m) = stream.message().await? {
        rows.extend(from_message(m).map_err(tonic::Status::data_loss)?);
    }
    rows.sort_by_key(|r| r.input);
    Ok(rows)
}

impl Row {
    /// SPEC's `job results --json` row.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"query": self.query, "pass": self.pass, "input": self.input, "output": self.output.to_json()})
    }
}

/// Rows per message to a client (so a message of wide rows stays small).
pub fn rows_per_message(layout: Layout) -> usize {
    ((1usize << 20) / layout.row_bytes()).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(query: u64, pass: u64, input: u64, output: Output) -> Row {
        Row { query, pass, input, output }
    }

    #[test]
    fn files_round_trip_in_pieces_of_any_size() {
        for layout in [Layout::Class, Layout::Vector(3)] {
            let out = |k: u64| match layout {
                Layout::Class => Output::Class(k as i64 - 2),
                Layout::Vector(_) => Output::Vector(vec![k as f32, -1.5, 0.25]),
            };
            let rows: Vec<Row> = (0..7).map(|k| row(k + 1, k / 3, k % 3, out(k))).collect();
            let mut w = Writer::new(layout);
            rows.iter().for_each(|r| w.push(r));
            assert_eq!(w.rows(), 7);
            let bytes = w.into_bytes();
            assert_eq!(parse(&bytes).unwrap(), (layout, rows.clone()));
            for piece in [1, 5, 16, 17, 1000] {
                let mut r = Reader::default();
                let mut got = Vec::new();
                for p in bytes.chunks(piece) {
                    got.extend(r.feed(p).unwrap());
                }
                r.finish().unwrap();
                assert_eq!(got, rows, "pieces of {piece}");
            }
            assert!(parse(&bytes[..bytes.len() - 1]).unwrap_err().contains("inside a row"));
        }
        assert!(parse(b"IDRSLT01").unwrap_err().contains("without a header"));
        assert!(parse(b"{\"query\":1}\n{\"query\":2}\n").unwrap_err().contains("bad header"));
        let mut h = Layout::Vector(2).header();
        h[12..].copy_from_slice(&(MAX_WIDTH + 1).to_le_bytes());
        assert!(parse(&h).unwrap_err().contains("width"));
    }

    #[test]
    fn a_worker_s_outputs_become_rows_without_decoding() {
        let mut w = Writer::new(Layout::Class);
        let outputs: Vec<u8> = [7i64, 8, 9].iter().flat_map(|c| c.to_le_bytes()).collect();
        w.push_query(4, 1, 10, &outputs);
        let (_, rows) = parse(&w.into_bytes()).unwrap();
        let got: Vec<(u64, u64, u64, Output)> =
            rows.into_iter().map(|r| (r.query, r.pass, r.input, r.output)).collect();
        assert_eq!(got, [(4, 1, 10, Output::Class(7)), (4, 1, 11, Output::Class(8)), (4, 1, 12, Output::Class(9))]);
    }

    #[test]
    fn segment_names_are_recognised() {
        let n = segment_name("photos", 42, b"rows");
        assert!(is_segment_of("photos", &n), "{n}");
        assert!(!is_segment_of("photo", &n) && !is_segment_of("photos", "photos.results"));
        assert!(!is_segment_of("photos", "photos.results.000000000042-short"));
    }
}
