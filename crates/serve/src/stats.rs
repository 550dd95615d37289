//! What this node saw of each served model's requests, for `serve status`
//! and `/metrics`: answers and errors by kind, latency (arrival to
//! answer), the request rate over the last 10 s, queue depth, batch sizes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use idunno_state::{Histogram, LatencySummary};
use serde::Serialize;

use crate::entry::ServeError;

/// The rate's window.
const WINDOW: Duration = Duration::from_secs(10);
/// Answers remembered for the rate (a bound on memory at any rate).
const MAX_REMEMBERED: usize = 200_000;

#[derive(Debug, Default)]
pub struct Stats {
    models: Mutex<BTreeMap<String, ModelStats>>,
}

#[derive(Debug, Default)]
struct ModelStats {
    answered: u64,
    errors: BTreeMap<&'static str, u64>,
    latency: Histogram,
    recent: VecDeque<Instant>,
    queue: usize,
    batches: u64,
    batched_rows: u64,
}

/// One model's figures at this node.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ModelFigures {
    pub requests: u64,
    pub request_rate: f64,
    pub errors: BTreeMap<&'static str, u64>,
    pub latency_ms: LatencyMs,
    pub queue: usize,
    pub batches: u64,
    pub avg_batch: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LatencyMs {
    pub avg: f64,
    pub std: f64,
    pub var: f64,
    pub median: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
}

impl From<LatencySummary> for LatencyMs {
    fn from(l: LatencySummary) -> Self {
        // (The summary is in ms; three decimals are µs.)
        let ms = |x: f64| (x * 1000.0).round() / 1000.0;
        LatencyMs {
            avg: ms(l.avg),
            std: ms(l.std),
            var: ms(l.var),
            median: ms(l.median),
            p90: ms(l.p90),
            p95: ms(l.p95),
            p99: ms(l.p99),
        }
    }
}

/// One model's counts at this node, as `/metrics` shows them.
#[derive(Clone, Debug)]
pub struct ModelCounts {
    /// Requests answered.
    pub requests: u64,
    pub errors: BTreeMap<&'static str, u64>,
    /// Arrival to answer, of the answered requests (µs).
    pub latency: Histogram,
    pub queue: usize,
    pub batches: u64,
    pub batched_rows: u64,
}

/// The label of an error kind.
pub fn kind(e: &ServeError) -> &'static str {
    match e {
        ServeError::NotFound(_) => "not_found",
        ServeError::BadRequest(_) => "bad_request",
        ServeError::QueueFull(_) => "queue_full",
        ServeError::Unavailable(_) => "unavailable",
        ServeError::Deadline(_) => "deadline",
    }
}

impl Stats {
    fn with<T>(&self, model: &str, f: impl FnOnce(&mut ModelStats) -> T) -> T {
        let mut m = self.models.lock().unwrap_or_else(|e| e.into_inner());
        f(m.entry(model.to_string()).or_default())
    }

    pub(crate) fn answered(&self, model: &str, took: Duration, error: Option<&ServeError>) {
        self.with(model, |s| match error {
            None => {
                s.answered += 1;
                s.latency.record(took.as_micros() as u64);
                let now = Instant::now();
                s.recent.push_back(now);
                while s.recent.len() > MAX_REMEMBERED || s.recent.front().is_some_and(|t| now - *t > WINDOW) {
                    s.recent.pop_front();
                }
            }
            Some(e) => *s.errors.entry(kind(e)).or_default() += 1,
        })
    }

    pub(crate) fn queued(&self, model: &str, n: usize) {
        self.with(model, |s| s.queue = n)
    }

    pub(crate) fn batch(&self, model: &str, rows: u64) {
        self.with(model, |s| {
            s.batches += 1;
            s.batched_rows += rows;
        })
    }

    /// Every model's raw counts at this node, for `serve status` to sum
    /// over the nodes: requests, errors by kind, the latency histogram
    /// (µs), answers in the rate's window, queue, batches and their rows.
    pub fn raw(&self) -> serde_json::Value {
        let m = self.models.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let doc: serde_json::Map<String, serde_json::Value> = m
            .iter()
            .map(|(name, s)| {
                let recent = s.recent.iter().filter(|t| now - **t <= WINDOW).count();
                let v = serde_json::json!({
                    "requests": s.answered, "errors": s.errors, "histogram": s.latency, "recent": recent,
                    "window_s": WINDOW.as_secs_f64(), "queue": s.queue, "batches": s.batches, "batched_rows": s.batched_rows,
                });
                (name.clone(), v)
            })
            .collect();
        serde_json::Value::Object(doc)
    }

    /// Every model's counts (models no longer served included until the
    /// node restarts).
    pub fn counts(&self) -> BTreeMap<String, ModelCounts> {
        let m = self.models.lock().unwrap_or_else(|e| e.into_inner());
        m.iter()
            .map(|(name, s)| {
                let counts = ModelCounts {
                    requests: s.answered,
                    errors: s.errors.clone(),
                    latency: s.latency.clone(),
                    queue: s.queue,
                    batches: s.batches,
                    batched_rows: s.batched_rows,
                };
                (name.clone(), counts)
            })
            .collect()
    }

    /// Every model's figures (models no longer served included until the
    /// node restarts).
    pub fn figures(&self) -> BTreeMap<String, ModelFigures> {
        let m = self.models.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        m.iter()
            .map(|(name, s)| {
                let recent = s.recent.iter().filter(|t| now - **t <= WINDOW).count();
                let figures = ModelFigures {
                    requests: s.answered,
                    request_rate: (recent as f64 / WINDOW.as_secs_f64() * 100.0).round() / 100.0,
                    errors: s.errors.clone(),
                    latency_ms: s.latency.summary().into(),
                    queue: s.queue,
                    batches: s.batches,
                    avg_batch: if s.batches == 0 { 0.0 } else { s.batched_rows as f64 / s.batches as f64 },
                };
                (name.clone(), figures)
            })
            .collect()
    }
}
