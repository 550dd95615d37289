//! What this node's worker slots run, and in which order: the queries of
//! jobs the leader handed this node, the request batches of served models
//! that nodes send it (`Infer`), and models to load ahead. All wait in one
//! [`SlotQueue`]; a free slot takes the next by fair queuing
//! (`idunno_scheduler::fair`), one flow per job and per served model, so
//! under overload every job and served model gets the same rate of
//! queries or requests (served models in the ratio of their weights).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use idunno_ml::onnx::MlError;
use idunno_ml::{DType, Tensor};
use idunno_rpc::v1;
use idunno_scheduler::fair::FairQueue;
use tokio::sync::oneshot;

use crate::slot::Slot;
use crate::worker::{Key, Prepared};

/// A served model's batch on its way to a slot.
pub(crate) struct InferWork {
    pub(crate) key: Key,
    pub(crate) model: Arc<Vec<u8>>,
    /// One tensor per model input, in the model's order.
    pub(crate) inputs: Vec<Input>,
    /// The outputs with their names, and the model's run time (µs).
    pub(crate) reply: oneshot::Sender<Result<(Vec<(String, Tensor)>, u64), InferError>>,
    /// When the caller stops waiting: a batch still queued then is not run.
    pub(crate) deadline: Instant,
}

/// An input of a batch as it came over the wire: checked, and still the
/// bytes the message arrived in (a request's body, for a batch of one
/// request that arrived at this node), not a copy.
pub(crate) struct Input {
    pub(crate) dtype: DType,
    pub(crate) shape: Vec<usize>,
    pub(crate) data: bytes::Bytes,
}

impl Input {
    fn view(&self) -> idunno_ml::TensorView<'_> {
        idunno_ml::TensorView { dtype: self.dtype, shape: &self.shape, data: &self.data }
    }
}

/// Why a batch did not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InferError {
    /// The inputs do not fit the model: no worker would do better.
    Input(String),
    /// This worker could not: another one may.
    Worker(String),
}

pub(crate) enum SlotWork {
    Query(Prepared),
    /// Load the model of a job ahead of its queries.
    Warm(Prepared),
    /// Load a served model ahead of its requests; count the slot in.
    WarmServed(Key, Arc<Vec<u8>>, Arc<AtomicUsize>),
    Infer(InferWork),
    /// Nothing to run: look at what changed (the served models kept).
    Nudge,
    /// Every slot has been idle for [`IDLE`] since the last work: give
    /// back the memory that work left (each slot gets it once).
    Idle,
}

/// How long every slot must have been idle before the memory their
/// work freed is given back: long enough that steady traffic (requests a
/// second or less apart) never pays for faulting it in again.
pub(crate) const IDLE: std::time::Duration = std::time::Duration::from_secs(3);

/// The work waiting for this node's slots.
pub(crate) struct SlotQueue {
    queue: Mutex<Waiting>,
    ready: Condvar,
    closed: AtomicBool,
    /// Counts [`SlotQueue::nudge`]s (changed under the queue's lock).
    nudges: AtomicU64,
    /// See [`IDLE`].
    idle: std::time::Duration,
}

impl Default for SlotQueue {
    fn default() -> SlotQueue {
        SlotQueue::with_idle(IDLE)
    }
}

#[derive(Default)]
struct Waiting {
    work: FairQueue<SlotWork>,
    /// Slots running a piece of work.
    running: usize,
    /// When the last running slot finished (`None`: that idle spell has
    /// been declared, or there was no work yet).
    idle_since: Option<Instant>,
    /// Counts the idle spells declared.
    spells: u64,
}

/// What one slot's loop keeps between [`SlotQueue::next`] calls.
#[derive(Default)]
pub(crate) struct SlotCursor {
    nudged: u64,
    working: bool,
    /// The idle spells this slot was told of, or that began before work
    /// it took since.
    spells: u64,
}

impl SlotQueue {
    pub(crate) fn with_idle(idle: std::time::Duration) -> SlotQueue {
        SlotQueue {
            queue: Mutex::default(),
            ready: Condvar::new(),
            closed: AtomicBool::new(false),
            nudges: AtomicU64::new(0),
            idle,
        }
    }

    /// Have every slot look at what changed (each gets one
    /// [`SlotWork::Nudge`], idle or not).
    pub(crate) fn nudge(&self) {
        let _q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        self.nudges.fetch_add(1, Ordering::Relaxed);
        self.ready.notify_all();
    }

    pub(crate) fn push(&self, flow: &str, work: SlotWork, size: u64, weight: u32) {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).work.push(flow, work, size, weight);
        self.ready.notify_one();
    }

    /// The next piece of work, waiting for one; `None` once closed. The
    /// caller's previous piece (if any) is over.
    pub(crate) fn next(&self, cursor: &mut SlotCursor) -> Option<SlotWork> {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if std::mem::take(&mut cursor.working) {
            q.running = q.running.saturating_sub(1);
            if q.running == 0 {
                q.idle_since = Some(Instant::now());
            }
        }
        loop {
            if self.closed.load(Ordering::Relaxed) {
                return None;
            }
            let nudges = self.nudges.load(Ordering::Relaxed);
            if nudges != cursor.nudged {
                cursor.nudged = nudges;
                return Some(SlotWork::Nudge);
            }
            if let Some((_, work)) = q.work.pop() {
                q.running += 1;
                q.idle_since = None;
                cursor.working = true;
                cursor.spells = q.spells;
                return Some(work);
            }
            if cursor.spells != q.spells {
                cursor.spells = q.spells;
                return Some(SlotWork::Idle);
            }
            match q.idle_since.filter(|_| q.running == 0) {
                Some(since) if since.elapsed() >= self.idle => {
                    // Declare the spell: every slot hears of it once.
                    q.idle_since = None;
                    q.spells += 1;
                    self.ready.notify_all();
                }
                Some(since) => {
                    let left = self.idle.saturating_sub(since.elapsed());
                    q = self.ready.wait_timeout(q, left).unwrap_or_else(|e| e.into_inner()).0;
                }
                None => q = self.ready.wait(q).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    /// The slots stop; batches still waiting are answered as this
    /// worker's failure (their callers send them elsewhere).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let left = self.queue.lock().unwrap_or_else(|e| e.into_inner()).work.drain();
        for (_, work) in left {
            if let SlotWork::Infer(w) = work {
                let _ = w.reply.send(Err(InferError::Worker("the worker stopped".into())));
            }
        }
        self.ready.notify_all();
    }
}

/// The flow a served model's batches wait in.
pub(crate) fn served_flow(model: &str) -> String {
    format!("serve/{model}")
}

/// The flow a job's queries wait in.
pub(crate) fn job_flow(job: &str) -> String {
    format!("job/{job}")
}

/// The protocol's datatype of an element type, and back.
pub(crate) fn datatype(d: DType) -> &'static str {
    match d {
        DType::U8 => "UINT8",
        DType::I8 => "INT8",
        DType::I16 => "INT16",
        DType::I32 => "INT32",
        DType::I64 => "INT64",
        DType::F32 => "FP32",
        DType::F64 => "FP64",
    }
}

pub(crate) fn dtype(datatype: &str) -> Option<DType> {
    Some(match datatype {
        "UINT8" => DType::U8,
        "INT8" => DType::I8,
        "INT16" => DType::I16,
        "INT32" => DType::I32,
        "INT64" => DType::I64,
        "FP32" => DType::F32,
        "FP64" => DType::F64,
        _ => return None,
    })
}

/// A raw tensor from the wire as a tensor, checked: a known datatype and
/// as many bytes as its shape needs.
pub(crate) fn from_raw(t: v1::RawTensor) -> Result<(String, Input), String> {
    let d = dtype(&t.datatype).ok_or_else(|| format!("input {}: datatype {} is not supported", t.name, t.datatype))?;
    let shape: Vec<usize> = t
        .shape
        .iter()
        .map(|x| usize::try_from(*x))
        .collect::<Result<_, _>>()
        .map_err(|_| format!("input {}: shape {:?} is too large", t.name, t.shape))?;
    let bytes = shape.iter().try_fold(d.size(), |n, x| n.checked_mul(*x));
    if bytes != Some(t.data.len()) {
        return Err(format!(
            "input {}: shape {:?} of {} does not match its {} bytes",
            t.name,
            t.shape,
            t.datatype,
            t.data.len()
        ));
    }
    Ok((t.name, Input { dtype: d, shape, data: t.data }))
}

pub(crate) fn to_raw(name: String, t: Tensor) -> v1::RawTensor {
    v1::RawTensor {
        name,
        datatype: datatype(t.dtype).to_string(),
        shape: t.shape.iter().map(|x| *x as u64).collect(),
        data: t.data.into(),
    }
}

impl Slot {
    /// Run a served model's batch. A panic fails this batch only (as a
    /// worker's failure: the slot drops its models and goes on).
    pub(crate) fn infer(&mut self, w: InferWork) {
        if Instant::now() >= w.deadline {
            let _ = w.reply.send(Err(InferError::Worker("the batch waited past its deadline".into())));
            return;
        }
        let busy = Instant::now();
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.try_infer(&w)));
        let result = match ran {
            Ok(r) => r,
            Err(panic) => {
                self.clear_models();
                let why = crate::panic_text(panic.as_ref());
                tracing::error!(model = %w.key.0, panic = %why, "a served model's batch panicked the worker slot");
                Err(InferError::Worker(format!("the worker failed running this batch (it panicked: {why})")))
            }
        };
        self.metrics.served(&w.key.0, result.is_ok(), busy.elapsed().as_secs_f64());
        let _ = w.reply.send(result);
    }

    fn try_infer(&mut self, w: &InferWork) -> Result<(Vec<(String, Tensor)>, u64), InferError> {
        self.model_for(&w.key, &w.model).map_err(InferError::Worker)?;
        // (Counted as this slot's served model once loaded.)
        self.serving(&w.key);
        let model = self.loaded(&w.key).map_err(InferError::Worker)?;
        let started = Instant::now();
        let inputs: Vec<_> = w.inputs.iter().map(Input::view).collect();
        let outputs = model.run_views(&inputs).map_err(|e| match e {
            // What the inputs caused: the same on any worker.
            MlError::BadInput(why) => InferError::Input(why),
            MlError::Run(_) => InferError::Input(e.to_string()),
            other => InferError::Worker(other.to_string()),
        })?;
        let latency = started.elapsed().as_micros() as u64;
        let names = model.outputs().iter().map(|s| s.name.clone());
        Ok((names.zip(outputs).collect(), latency))
    }
}

/// Served models' files this node fetched, and how many slots loaded each.
#[derive(Default)]
pub(crate) struct ServedFiles {
    pub(crate) files: Mutex<HashMap<Key, Arc<Vec<u8>>>>,
    pub(crate) loaded: Mutex<HashMap<Key, Arc<AtomicUsize>>>,
    /// Counts the times a model was forgotten (for the slots to unload it).
    forgotten: AtomicU64,
}

impl ServedFiles {
    pub(crate) fn file(&self, key: &Key) -> Option<Arc<Vec<u8>>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    /// Whether at least one slot has loaded `key`.
    pub(crate) fn is_loaded(&self, key: &Key) -> bool {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner()).get(key).is_some_and(|n| n.load(Ordering::Relaxed) > 0)
    }

    /// Whether this node keeps `key` (it is served and placed here).
    pub(crate) fn is_kept(&self, key: &Key) -> bool {
        self.files.lock().unwrap_or_else(|e| e.into_inner()).contains_key(key)
    }

    /// Changes each time a model is forgotten.
    pub(crate) fn generation(&self) -> u64 {
        self.forgotten.load(Ordering::Acquire)
    }

    /// Forget models no longer served here: whether any was.
    pub(crate) fn retain(&self, keep: impl Fn(&Key) -> bool) -> bool {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let before = files.len();
        files.retain(|k, _| keep(k));
        let forgot = files.len() != before;
        drop(files);
        self.loaded.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| keep(k));
        if forgot {
            self.forgotten.fetch_add(1, Ordering::Release);
        }
        forgot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn warm(model: &str) -> SlotWork {
        SlotWork::WarmServed((model.to_string(), 1), Arc::new(Vec::new()), Arc::default())
    }

    fn is_idle(w: &Option<SlotWork>) -> bool {
        matches!(w, Some(SlotWork::Idle))
    }

    /// A slot's thread asking for its next piece of work.
    fn ask(q: &Arc<SlotQueue>, mut c: SlotCursor) -> std::thread::JoinHandle<(Option<SlotWork>, SlotCursor)> {
        let q = q.clone();
        std::thread::spawn(move || (q.next(&mut c), c))
    }

    #[test]
    fn every_slot_is_told_once_when_all_have_been_idle_after_work() {
        let idle = Duration::from_millis(150);
        let q = Arc::new(SlotQueue::with_idle(idle));
        let (mut a, mut b) = (SlotCursor::default(), SlotCursor::default());
        q.push("m", warm("m"), 1, 1);
        q.push("m", warm("m"), 1, 1);
        assert!(matches!(q.next(&mut a), Some(SlotWork::WarmServed(..))));
        assert!(matches!(q.next(&mut b), Some(SlotWork::WarmServed(..))));
        // `a` is done, `b` still runs: `a` hears nothing, however long.
        let waiting_a = ask(&q, a);
        std::thread::sleep(3 * idle);
        assert!(!waiting_a.is_finished(), "a slot was told idle while another ran");
        // `b` is done too: after the idle time, both hear of it.
        let started = Instant::now();
        let waiting_b = ask(&q, b);
        let (wb, b) = waiting_b.join().unwrap();
        let (wa, a) = waiting_a.join().unwrap();
        assert!(started.elapsed() >= idle, "told after {:?}, before the idle time", started.elapsed());
        assert!(is_idle(&wa) && is_idle(&wb));
        // Once only: both wait again until there is work.
        let (waiting_a, waiting_b) = (ask(&q, a), ask(&q, b));
        std::thread::sleep(3 * idle);
        assert!(!waiting_a.is_finished() && !waiting_b.is_finished(), "told of one idle spell twice");
        q.push("m", warm("m"), 1, 1);
        q.close();
        let got = [waiting_a.join().unwrap().0, waiting_b.join().unwrap().0];
        assert!(!got.iter().any(is_idle));
    }

    #[test]
    fn no_idle_before_any_work_and_one_after_each_spell_of_work() {
        let idle = Duration::from_millis(50);
        let q = Arc::new(SlotQueue::with_idle(idle));
        let waiting = ask(&q, SlotCursor::default());
        std::thread::sleep(6 * idle);
        assert!(!waiting.is_finished(), "idle with no work done");
        q.push("m", warm("m"), 1, 1);
        let (w, mut c) = waiting.join().unwrap();
        assert!(matches!(w, Some(SlotWork::WarmServed(..))));
        for spell in 0..2 {
            let started = Instant::now();
            assert!(is_idle(&q.next(&mut c)), "spell {spell}");
            assert!(started.elapsed() >= idle);
            q.push("m", warm("m"), 1, 1);
            assert!(matches!(q.next(&mut c), Some(SlotWork::WarmServed(..))), "spell {spell}");
        }
        q.close();
        assert!(q.next(&mut c).is_none());
    }
}
