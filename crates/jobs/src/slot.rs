//! One worker slot: the models it keeps loaded (an ONNX Runtime session
//! is not shared between threads that run at once), and how it runs a
//! job's query on them, turning the outputs into the query's results.
//! `worker.rs` feeds the slots; `slots.rs` orders their work.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use idunno_ml::onnx::fit;
use idunno_ml::{Model, scoring};
use idunno_rpc::v1;

use crate::lru::ByteLru;
use crate::worker::{Key, LoadedModels, Prepared};
use crate::{Jobs, RESULTS_BUDGET};

/// One slot: its own loaded models (an ONNX Runtime session is not shared
/// between threads that run at once), bounded by their files' bytes
/// (`[worker] models_mb`; a session holds about as much as its file).
pub(crate) struct Slot {
    threads: usize,
    models: ByteLru<Key, Model>,
    pub(crate) metrics: Arc<crate::metrics::WorkerMetrics>,
    /// The served models this node keeps, and which of them this slot
    /// loaded as of which of their changes: one no longer kept is
    /// unloaded before the next work.
    served: Arc<crate::slots::ServedFiles>,
    served_seen: u64,
    served_here: HashSet<Key>,
    loaded: Arc<LoadedModels>,
}

impl Slot {
    /// The node's slots have all gone idle: give back what the models that
    /// ran keep between runs, and what the allocator holds freed.
    pub(crate) fn release_memory(&mut self) {
        for (key, model) in self.models.values_mut() {
            if let Err(e) = model.release_memory() {
                tracing::debug!(model = %key.0, error = %e, "could not release a model's memory");
            }
        }
        give_back_freed_memory();
    }

    fn model(&mut self, p: &Prepared) -> Result<&mut Model, String> {
        match &p.model {
            Some(bytes) => self.model_for(&p.key, bytes),
            None => self.loaded(&p.key),
        }
    }

    /// The model of `key`, loaded from `bytes` if this slot has not yet.
    pub(crate) fn model_for(&mut self, key: &Key, bytes: &[u8]) -> Result<&mut Model, String> {
        if !self.models.contains(key) {
            let loading = Instant::now();
            let m = Model::load(bytes, self.threads).map_err(|e| format!("model {}: {e}", key.0))?;
            self.metrics.model_load.observe(loading.elapsed().as_secs_f64());
            tracing::info!(model = %key.0, version = key.1, "model loaded");
            self.loaded.add(key);
            for (gone, _) in self.models.insert(key.clone(), m, bytes.len()) {
                tracing::info!(model = %gone.0, version = gone.1, "model unloaded to make room");
                self.loaded.remove(&gone);
                if self.served_here.remove(&gone) {
                    self.served_slots(&gone).dec();
                }
            }
            give_back_freed_memory();
        }
        self.loaded(key)
    }

    /// The model of `key`, already loaded in this slot.
    pub(crate) fn loaded(&mut self, key: &Key) -> Result<&mut Model, String> {
        self.models.get(key).ok_or_else(|| "model cache".to_string())
    }

    pub(crate) fn new(jobs: &Jobs) -> Slot {
        Slot {
            threads: jobs.config.threads,
            models: ByteLru::new(jobs.config.models_bytes()),
            metrics: jobs.metrics.clone(),
            served: jobs.served.clone(),
            served_seen: 0,
            served_here: HashSet::new(),
            loaded: jobs.loaded_models.clone(),
        }
    }

    /// Drop every loaded model (a panic may have left one half-changed).
    pub(crate) fn clear_models(&mut self) {
        self.models.keys().for_each(|k| self.loaded.remove(k));
        self.models.clear();
        for key in std::mem::take(&mut self.served_here) {
            self.served_slots(&key).dec();
        }
    }

    fn served_slots(&self, key: &Key) -> prometheus_client::metrics::gauge::Gauge {
        let label = crate::metrics::ModelFileLabel { model: key.0.clone() };
        self.metrics.served_slots.get_or_create(&label).clone()
    }

    /// Note that `key` is loaded here as a served model.
    pub(crate) fn serving(&mut self, key: &Key) {
        if !self.served_here.contains(key) {
            self.served_here.insert(key.clone());
            self.served_slots(key).inc();
        }
    }

    /// Unload the served models this node no longer keeps (the leader
    /// placed them elsewhere, or they are no longer served).
    pub(crate) fn forget_unserved(&mut self) {
        let now = self.served.generation();
        if now == self.served_seen {
            return;
        }
        self.served_seen = now;
        let gone: Vec<Key> = self.served_here.extract_if(|k| !self.served.is_kept(k)).collect();
        for key in gone {
            self.served_slots(&key).dec();
            if self.models.remove(&key).is_some() {
                self.loaded.remove(&key);
                tracing::info!(model = %key.0, version = key.1, "served model unloaded");
            }
        }
    }

    /// Load a served model ahead of its requests; count this slot in.
    pub(crate) fn warm_served(&mut self, key: &Key, bytes: &[u8], loaded: &std::sync::atomic::AtomicUsize) {
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.model_for(key, bytes).map(|_| ())));
        match ran {
            Ok(Ok(())) => {
                self.serving(key);
                loaded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(Err(e)) => tracing::warn!(model = %key.0, error = %e, "could not load a served model"),
            Err(panic) => {
                self.clear_models();
                tracing::error!(panic = %crate::panic_text(panic.as_ref()), "loading a served model panicked");
            }
        }
    }

    /// Load the model of `p` ahead of its queries (a panic while loading
    /// is logged; the query that needs the model meets it again).
    pub(crate) fn warm(&mut self, p: &Prepared) {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.model(p).map(|_| ()))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "could not load a model ahead of its queries"),
            Err(panic) => {
                self.clear_models();
                tracing::error!(panic = %crate::panic_text(panic.as_ref()), "loading a model panicked");
            }
        }
    }

    /// Run one query. A panic inside (a bug in a runtime, or one that a
    /// model or an input set hit) fails this query only: the slot drops
    /// the models it holds, which the panic may have left half-changed,
    /// and goes on with the next query.
    pub(crate) fn run(&mut self, p: &Prepared) -> v1::QueryResult {
        let t = &p.task;
        let mut result =
            v1::QueryResult { job: t.job.clone(), pass: t.pass, start: t.start, len: t.len, ..Default::default() };
        if p.model.is_none() && !self.models.contains(&p.key) {
            // Unloaded since the query was prepared without its file: it
            // runs again, with the file fetched.
            result.error = format!("model {} was unloaded here meanwhile", p.key.0);
            result.transient = true;
            return result;
        }
        let busy = Instant::now();
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.try_run(p, &mut result)));
        match ran {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result.error = e,
            Err(panic) => {
                self.clear_models();
                let why = crate::panic_text(panic.as_ref());
                tracing::error!(job = %t.job, start = t.start, panic = %why, "a query panicked the worker slot");
                result = v1::QueryResult {
                    job: t.job.clone(),
                    pass: t.pass,
                    start: t.start,
                    len: t.len,
                    error: format!("the worker failed running this query (it panicked: {why})"),
                    ..Default::default()
                };
            }
        }
        let ok = result.error.is_empty();
        self.metrics.ran(&t.job, ok, t.len, result.latency_us, busy.elapsed().as_secs_f64());
        result
    }

    fn try_run(&mut self, p: &Prepared, out: &mut v1::QueryResult) -> Result<(), String> {
        let t = &p.task;
        if injected_panic(&t.job) {
            panic!("injected by IDUNNO_TEST_PANIC_JOB for job {}", t.job);
        }
        let (sets, labels) = (&p.inputs, &p.labels);
        let len = t.len as usize;
        let model = self.model(p)?;
        // Processing time: the batch from input rows to outputs (a model
        // loaded for the first query does not count).
        let started = Instant::now();
        let sigs = model.inputs().to_vec();
        let mut batch = Vec::with_capacity(sets.len());
        for (sig, set) in sigs.iter().zip(sets) {
            let rows = set.rows(0, len);
            let rows = if t.transpose.is_empty() {
                rows
            } else {
                let perm: Vec<usize> = t.transpose.iter().map(|p| *p as usize).collect();
                rows.permute_samples(&perm)?
            };
            batch.push(fit(sig, rows)?);
        }
        let outputs = model.run(&batch).map_err(|e| e.to_string())?;
        out.latency_us = started.elapsed().as_micros() as u64;
        let first = outputs.into_iter().next().ok_or("the model has no output")?;
        let per_row = if first.samples() == len { first.len() / len.max(1) } else { 0 };
        if per_row == 0 {
            return Err(format!("output shape {:?} does not have one row per input ({len})", first.shape));
        }
        let values = first.to_f32();
        let ints = (first.dtype != idunno_ml::DType::F32).then(|| first.to_i64());
        let labels = labels.as_ref().map(|l| l.to_i64());
        let vector = t.output == "vector";
        let width = if vector { u32::try_from(per_row).map_err(|_| "an output row too wide")? } else { 0 };
        let layout = crate::results::Layout::from_width(width)?;
        // A result must fit in a message on its own; a bigger one can never
        // be delivered, so it is this query's (and its batch size's) error.
        let bytes = len.saturating_mul(layout.output_bytes());
        if bytes > RESULTS_BUDGET {
            return Err(format!(
                "the outputs of a query of {len} inputs are {} MiB, more than one message carries ({} MiB): lower the batch size",
                bytes >> 20,
                RESULTS_BUDGET >> 20
            ));
        }
        let mut outputs = Vec::with_capacity(bytes);
        for k in 0..len {
            let row = &values[k * per_row..(k + 1) * per_row];
            if vector {
                row.iter().for_each(|v| outputs.extend_from_slice(&v.to_le_bytes()));
                continue;
            }
            let class = match &ints {
                Some(i) if per_row == 1 => i[k],
                _ => scoring::argmax(row) as i64,
            };
            if let Some(label) = labels.as_ref().and_then(|l| l.get(k)).filter(|l| **l >= 0) {
                out.labeled += 1;
                out.correct += u64::from(class == *label);
                // A class index per input (an integer output) has no loss.
                let loss = usize::try_from(*label).ok().filter(|_| ints.is_none() && per_row > 1);
                if let Some(loss) = loss.and_then(|l| scoring::cross_entropy(row, l)) {
                    out.loss_count += 1;
                    out.loss_sum += loss;
                }
            }
            outputs.extend_from_slice(&class.to_le_bytes());
        }
        out.output_width = width;
        out.outputs = outputs.into();
        Ok(())
    }
}

/// Return the memory the allocator holds freed to the system. Loading a
/// model frees as much as the session keeps (the parsed graph, copies of
/// the weights); glibc keeps freed memory in its arenas until told.
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it takes the
    // allocator's own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A test hook: every query of the job named by `IDUNNO_TEST_PANIC_JOB`
/// (read once, at a node's first query) panics in the worker slot, so
/// tests can show that a panicking query costs only its own job.
fn injected_panic(job: &str) -> bool {
    static JOB: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    JOB.get_or_init(|| std::env::var("IDUNNO_TEST_PANIC_JOB").ok()).as_deref() == Some(job)
}
