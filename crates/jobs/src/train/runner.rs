//! A training group's member, on every node: a loop that follows the
//! replicated state and runs one member task per training this node is in
//! (at the current generation), and that task.
//!
//! Per step, a member computes its shard's gradients (candle, on a
//! one-thread pool: several members on a small machine share its cores),
//! sends them to rank 0's reducer, applies the summed gradient with Adam,
//! and goes on. Rank 0 also writes a checkpoint to SDFS every
//! `checkpoint_every` steps and at every epoch's end, reports progress to
//! the coordinator (at checkpoints and every 2 s), and writes the trained
//! model when the last step is done.
//!
//! A member that cannot finish a round (a peer died, or restarted and is
//! behind) waits briefly for a new generation, then proposes one itself.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use idunno_ml::read_array;
use idunno_ml::trained::{Arch, Checkpoint, DataSet, Shape, Trainer, shard};
use idunno_rpc::{JobsClient, Limited, v1};
use idunno_state::{FileRef, JobState, Refusal, Score, TrainCommand, TrainReport, Training};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::{from_bytes, group, to_bytes};
use crate::{Jobs, now_ms};

/// How long a member waits for the rest of its group in one round; the
/// first round also covers every member loading the data. Both stay under
/// the nodes' 30 s limit on any call. A first round that runs out (a large
/// data set loading slowly somewhere) re-forms the group, and the second
/// try finds the data loaded.
const ROUND_WAIT: Duration = Duration::from_secs(20);
const FIRST_ROUND_WAIT: Duration = Duration::from_secs(28);
/// Rank 0 reports progress at least this often between checkpoints.
const REPORT_EVERY: Duration = Duration::from_secs(2);

/// A training set (its inputs file) up to this size is held in memory on
/// every member, and every epoch is a full shuffle; a larger one is read
/// by range as training goes, in a block order
/// ([`idunno_ml::trained::epoch_order_blocked`]). A constant, not a node
/// setting: every member must take the same order.
pub const IN_MEMORY_MAX: u64 = 256 << 20;

/// [`IN_MEMORY_MAX`], or `IDUNNO_TEST_TRAIN_IN_MEMORY_MAX` (a test hook:
/// a test cluster sets it on every node, so that MNIST is read by range).
fn in_memory_max() -> u64 {
    static MAX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        std::env::var("IDUNNO_TEST_TRAIN_IN_MEMORY_MAX").ok().and_then(|v| v.parse().ok()).unwrap_or(IN_MEMORY_MAX)
    })
}

/// Read and parse a pinned inputs/labels pair: the inputs whole if they
/// are small enough ([`IN_MEMORY_MAX`]), else only their header.
async fn data_set(jobs: &Jobs, inputs: &FileRef, labels: &FileRef) -> Result<DataSet, String> {
    let sdfs = &jobs.sdfs;
    let read = |f: FileRef| async move {
        let (_, bytes) = sdfs
            .get(&f.name, f.version)
            .await
            .map_err(|e| format!("reading {} v{} from SDFS: {e}", f.name, f.version))?;
        tokio::task::spawn_blocking(move || read_array(&bytes).map_err(|e| format!("{}: {e}", f.name)))
            .await
            .map_err(|e| e.to_string())?
    };
    let size = sdfs.find(&inputs.name, inputs.version).await.map_err(|e| format!("{}: {e}", inputs.name))?.size;
    let y = read(labels.clone()).await?;
    if size > in_memory_max() {
        let (_, layout) = jobs.train_rows.lock().await.layout(sdfs, &inputs.name, inputs.version).await?;
        return DataSet::ranged(&layout.shape, layout.dtype, &y, &inputs.name, &labels.name);
    }
    let x = read(inputs.clone()).await?;
    DataSet::new(x, &y, &inputs.name, &labels.name)
}
/// Data sets fetched for training, shared by this node's members.
#[derive(Default)]
pub(crate) struct DataCache {
    sets: HashMap<(FileRef, FileRef), Arc<DataSet>>,
}

impl DataCache {
    pub(crate) async fn get(jobs: &Jobs, inputs: &FileRef, labels: &FileRef) -> Result<Arc<DataSet>, String> {
        let key = (inputs.clone(), labels.clone());
        let mut cache = jobs.train_data.lock().await;
        if let Some(d) = cache.sets.get(&key) {
            return Ok(d.clone());
        }
        let d = Arc::new(data_set(jobs, inputs, labels).await?);
        if cache.sets.len() >= 4 {
            cache.sets.clear();
        }
        cache.sets.insert(key, d.clone());
        Ok(d)
    }
}

/// Follow the replicated state: start a member task for each training
/// this node is in, stop those whose generation is over.
pub(crate) async fn run(jobs: Arc<Jobs>, shutdown: CancellationToken) {
    let mut state_rx = jobs.coordinator.watch_state();
    let mut members: HashMap<String, (u64, CancellationToken)> = HashMap::new();
    // (job, generation) whose task ended: never started again.
    let mut ended: HashSet<(String, u64)> = HashSet::new();
    let (end_tx, mut end_rx) = tokio::sync::mpsc::unbounded_channel::<(String, u64)>();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                members.values().for_each(|(_, t)| t.cancel());
                return;
            }
            // A closed watch would wake this at once, forever.
            r = state_rx.changed() => if r.is_err() {
                members.values().for_each(|(_, t)| t.cancel());
                return;
            },
            Some(e) = end_rx.recv() => { ended.insert(e); }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let state = jobs.coordinator.local_state();
        let wanted: HashMap<&String, &Training> = state
            .state
            .training
            .jobs
            .iter()
            .filter(|(_, t)| t.state == JobState::Running && t.group.workers.contains(&jobs.id))
            .collect();
        members.retain(|job, (generation, token)| {
            let keep = wanted.get(job).is_some_and(|t| t.group.generation == *generation);
            if !keep {
                tracing::info!(%job, generation, "leaving the training group");
                token.cancel();
            }
            keep
        });
        jobs.reducer.retain(|job| state.state.training.jobs.get(job).is_some_and(|t| t.state == JobState::Running));
        for (job, t) in wanted {
            let generation = t.group.generation;
            if members.contains_key(job) || ended.contains(&(job.clone(), generation)) {
                continue;
            }
            let token = shutdown.child_token();
            members.insert(job.clone(), (generation, token.clone()));
            let (jobs, t, end_tx) = (jobs.clone(), t.clone(), end_tx.clone());
            tokio::spawn(async move {
                let job = t.spec.name.clone();
                member(&jobs, t, token).await;
                let _ = end_tx.send((job, generation));
            });
        }
    }
}

/// Why a member task stopped early.
enum Stop {
    /// Cancelled (the generation is over, or the node shuts down).
    Cancelled,
    /// The group could not complete a round: a new one is needed.
    Stuck(String),
    /// Training itself failed (a computation, a checkpoint that does not
    /// fit the net): another group would fail the same way.
    Failed(String),
}

struct Member<'a> {
    jobs: &'a Jobs,
    t: Training,
    rank: usize,
    world: usize,
    token: CancellationToken,
    client: Option<JobsClient<Channel>>,
    pool: Arc<rayon::ThreadPool>,
    rounds: u64,
}

async fn member(jobs: &Jobs, t: Training, token: CancellationToken) {
    let job = t.spec.name.clone();
    let generation = t.group.generation;
    let Some(rank) = t.group.workers.iter().position(|w| *w == jobs.id) else { return };
    let pool = match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
        Ok(p) => Arc::new(p),
        Err(e) => {
            tracing::error!(%job, error = %e, "no thread for training");
            return;
        }
    };
    let world = t.group.workers.len();
    tracing::info!(%job, generation, rank, world, from_step = t.progress.checkpoint.map_or(0, |c| c.1), "training");
    let mut m = Member { jobs, t, rank, world, token, client: None, pool, rounds: 0 };
    match m.train().await {
        Ok(()) => tracing::info!(%job, generation, rank, "training done"),
        Err(Stop::Cancelled) => {}
        Err(Stop::Failed(error)) => {
            tracing::error!(%job, generation, rank, %error, "training failed");
            let cmd = TrainCommand::FailTraining { job: job.clone(), error, now_ms: crate::now_ms() };
            if let Err(e) = jobs.coordinator.apply(cmd).await {
                tracing::warn!(%job, error = %e, "could not record the failure");
            }
        }
        Err(Stop::Stuck(why)) => {
            tracing::warn!(%job, generation, rank, %why, "training group stuck");
            // The leader may already be forming a new group (a member
            // died); if not, this member asks for one.
            tokio::select! {
                _ = m.token.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(3)) => {}
            }
            let state = jobs.coordinator.local_state();
            if state.state.training.jobs.get(&job).is_some_and(|t| t.group.generation == generation) {
                group::regroup(jobs, &job, true).await;
            }
        }
    }
}

/// Run blocking work on the member's thread pool (inline on a simulated
/// host, whose clock must not move while it computes).
async fn compute<T: Send + 'static>(
    pool: &Arc<rayon::ThreadPool>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Stop> {
    if idunno_net::simulated() {
        return Ok(f());
    }
    let pool = pool.clone();
    tokio::task::spawn_blocking(move || pool.install(f)).await.map_err(|e| Stop::Stuck(format!("compute: {e}")))
}

/// The running epoch's score as checkpoint notes, and back.
fn score_notes(s: &Score) -> std::collections::BTreeMap<String, String> {
    [("train.loss_micro", s.loss_micro), ("train.correct", s.correct), ("train.count", s.count)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn score_from_notes(notes: &std::collections::BTreeMap<String, String>) -> Score {
    let get = |k: &str| notes.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
    Score { loss_micro: get("train.loss_micro"), correct: get("train.correct"), count: get("train.count") }
}

fn score(loss_sum: f64, correct: f32, count: f32) -> Score {
    Score { loss_micro: (loss_sum.max(0.0) * 1e6) as u64, correct: correct as u64, count: count as u64 }
}

impl Member<'_> {
    async fn cancellable<T>(&self, f: impl std::future::Future<Output = T>) -> Result<T, Stop> {
        tokio::select! {
            _ = self.token.cancelled() => Err(Stop::Cancelled),
            v = f => Ok(v),
        }
    }

    /// Fetch what training needs, retrying: a node may be briefly short of
    /// SDFS replicas after a failure.
    async fn fetch<T, Fut>(&self, what: &str, f: impl Fn() -> Fut) -> Result<T, Stop>
    where
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let mut tries = 0;
        loop {
            match self.cancellable(f()).await? {
                Ok(v) => return Ok(v),
                Err(e) if tries < 30 => {
                    tries += 1;
                    tracing::warn!(job = %self.t.spec.name, %what, error = %e, "retrying");
                    self.cancellable(tokio::time::sleep(Duration::from_secs(1))).await?;
                }
                Err(e) => return Err(Stop::Stuck(format!("{what}: {e}"))),
            }
        }
    }

    async fn train(&mut self) -> Result<(), Stop> {
        let spec = self.t.spec.clone();
        let jobs = self.jobs;
        let data = self.fetch("training data", || DataCache::get(jobs, &spec.inputs, &spec.labels)).await?;
        let test = match (&spec.test_inputs, &spec.test_labels) {
            (Some(i), Some(l)) => Some(self.fetch("test data", || DataCache::get(jobs, i, l)).await?),
            _ => None,
        };
        let arch = Arch::parse(&spec.arch).map_err(Stop::Failed)?;
        let shape = Shape::new(arch, &data.sample, spec.classes as usize, data.dtype).map_err(Stop::Failed)?;
        let lr: f32 = spec.lr.parse().map_err(|_| Stop::Failed(format!("bad learning rate {}", spec.lr)))?;
        let batch = spec.batch_size as usize;
        // The running epoch's score as of the checkpoint, if resuming.
        let mut resumed_score = Score::default();
        let mut trainer = match self.t.progress.checkpoint {
            Some((version, step)) => {
                let file = spec.checkpoint_file();
                let sdfs = &jobs.sdfs;
                let bytes = self
                    .fetch("checkpoint", || async {
                        sdfs.get(&file, version).await.map(|(_, b)| b).map_err(|e| e.to_string())
                    })
                    .await?;
                let c = Checkpoint::from_bytes(&bytes).map_err(|e| Stop::Failed(format!("checkpoint: {e}")))?;
                if c.step != step || c.shape != shape {
                    return Err(Stop::Failed(format!("checkpoint v{version} does not hold step {step} of this net")));
                }
                resumed_score = score_from_notes(&c.notes);
                Trainer::resume(c, data.clone(), batch, spec.seed).map_err(Stop::Failed)?
            }
            None => Trainer::new(shape, data.clone(), batch, lr, spec.seed).map_err(Stop::Failed)?,
        };

        if !data.in_memory() {
            let row_bytes = data.sample.iter().product::<usize>().max(1) * data.dtype.size();
            trainer.order_by_blocks((idunno_sdfs::blobs::CHUNK / row_bytes).max(1));
        }
        let spe = trainer.steps_per_epoch().max(1);
        let total = spe * u64::from(spec.epochs);
        let (rank, world) = (self.rank, self.world);
        let mut epoch = resumed_score;
        let mut last_report = Instant::now();
        // Where a member's time goes (logged at checkpoints): computing its
        // shard, waiting for the round, applying the sum.
        let mut timing = Timing::default();
        while trainer.step < total {
            let step = trainer.step;
            let t0 = Instant::now();
            let rows = if data.in_memory() {
                None
            } else {
                let (idx, batch) = trainer.shard_of_step(rank, world);
                let x = self.gather(&spec.inputs, &idx).await?;
                Some((x, idx.iter().map(|i| data.y[*i as usize]).collect::<Vec<u32>>(), batch))
            };
            let (t, g) = compute(&self.pool, move || {
                let g = match rows {
                    None => trainer.shard_grads(rank, world),
                    Some((x, y, batch)) => trainer.shard_grads_on(x.as_slice(), y.as_slice(), batch),
                };
                (trainer, g)
            })
            .await?;
            trainer = t;
            let g = g.map_err(Stop::Failed)?;
            let mut v = g.grads;
            v.extend([g.loss_sum as f32, g.correct as f32, g.count as f32]);
            let t1 = Instant::now();
            let sum = self.reduce(2 * step, v).await?;
            let t2 = Instant::now();
            let n = sum.len() - 3;
            let s = score(f64::from(sum[n]), sum[n + 1], sum[n + 2]);
            epoch.loss_micro += s.loss_micro;
            epoch.correct += s.correct;
            epoch.count += s.count;
            let (t, applied) = compute(&self.pool, move || {
                let r = trainer.apply(&sum[..n]);
                (trainer, r)
            })
            .await?;
            trainer = t;
            applied.map_err(Stop::Failed)?;
            timing.add(t1 - t0, t2 - t1, t2.elapsed());
            let secs = |d: Duration| d.as_secs_f64();
            self.jobs.train_metrics.step(&spec.name, secs(t1 - t0), secs(t2 - t1), secs(t2.elapsed()));

            let done = trainer.step;
            let epoch_end = done % spe == 0;
            let mut test_score = None;
            if epoch_end && let Some(test) = &test {
                let range = shard(test.len(), rank, world);
                let (loss, right) = if test.in_memory() {
                    let (net_trainer, set, r) = (trainer, test.clone(), range);
                    let (t, eval) = compute(&self.pool, move || {
                        let e = net_trainer.net.evaluate(&set, r);
                        (net_trainer, e)
                    })
                    .await?;
                    trainer = t;
                    eval.map_err(Stop::Failed)?
                } else {
                    let (mut loss, mut right) = (0.0, 0);
                    let files = spec.test_inputs.clone().unwrap_or_default();
                    for start in range.clone().step_by(1000) {
                        let stop = (start + 1000).min(range.end);
                        let idx: Vec<u32> = (start as u32..stop as u32).collect();
                        let x = self.gather(&files, &idx).await?;
                        let y: Vec<u32> = test.y[start..stop].to_vec();
                        let (t, eval) = compute(&self.pool, move || {
                            let e = trainer.net.evaluate_batch(&x, &y);
                            (trainer, e)
                        })
                        .await?;
                        trainer = t;
                        let (l, r) = eval.map_err(Stop::Failed)?;
                        loss += l;
                        right += r;
                    }
                    (loss, right)
                };
                let sum = self.reduce(2 * step + 1, vec![loss as f32, right as f32, 0.0]).await?;
                let count = test.len() as f32;
                test_score = Some(score(f64::from(sum[0]), sum[1], count));
            }
            if rank == 0 {
                let checkpoint = done % spec.checkpoint_every == 0 || epoch_end || done == total;
                if checkpoint || last_report.elapsed() >= REPORT_EVERY {
                    last_report = Instant::now();
                    if checkpoint {
                        timing.log(&spec.name, done);
                    }
                    let c = checkpoint.then(|| {
                        let mut c = trainer.checkpoint();
                        // At an epoch's end the next epoch starts from zero.
                        let carried = if epoch_end { Score::default() } else { epoch };
                        c.notes = score_notes(&carried);
                        c
                    });
                    let model =
                        if done == total { Some(trainer.net.to_model_file().map_err(Stop::Failed)?) } else { None };
                    let train = epoch;
                    self.report(done, c, epoch_end.then_some(test_score), train, model).await?;
                }
            }
            if epoch_end {
                epoch = Score::default();
                if let Some(s) = test_score {
                    tracing::info!(
                        job = %spec.name,
                        epoch = done / spe,
                        test_accuracy = s.accuracy().unwrap_or(0.0),
                        "epoch done"
                    );
                }
            }
        }
        Ok(())
    }

    /// Samples `idx` of `f` as f32, read by range (retrying, as every
    /// fetch of training data).
    async fn gather(&self, f: &FileRef, idx: &[u32]) -> Result<Vec<f32>, Stop> {
        let jobs = self.jobs;
        self.fetch("training samples", || async {
            let mut rows = jobs.train_rows.lock().await;
            let x = rows.gather(&jobs.sdfs, &f.name, f.version, idx).await.map(|t| t.to_f32());
            let label = crate::metrics::CacheLabel { kind: "training" };
            jobs.metrics.cache_bytes.get_or_create(&label).set(rows.bytes() as i64);
            x
        })
        .await
    }

    /// One all-reduce round: local on rank 0, an RPC to rank 0 elsewhere.
    /// The sum has as many values as were sent (the callers index into
    /// it); a reply of any other length leaves the group stuck.
    async fn reduce(&mut self, round: u64, values: Vec<f32>) -> Result<Vec<f32>, Stop> {
        let sent = values.len();
        let req = v1::ReduceRequest {
            job: self.t.spec.name.clone(),
            generation: self.t.group.generation,
            round,
            rank: self.rank as u32,
            world: self.world as u32,
            values: to_bytes(&values),
        };
        let wait = if self.rounds == 0 { FIRST_ROUND_WAIT } else { ROUND_WAIT };
        self.rounds += 1;
        let bytes = if self.rank == 0 {
            let jobs = self.jobs;
            self.cancellable(tokio::time::timeout(wait, jobs.reducer.reduce(req)))
                .await?
                .map_err(|_| {
                    Stop::Stuck(format!("round {round}: the group did not answer within {} s", wait.as_secs()))
                })?
                .map_err(|s| Stop::Stuck(format!("round {round}: {}", s.message())))?
        } else {
            let token = self.token.clone();
            let client = self.client().await?;
            let call = tokio::time::timeout(wait, client.reduce(req));
            tokio::select! {
                _ = token.cancelled() => return Err(Stop::Cancelled),
                r = call => r,
            }
            .map_err(|_| Stop::Stuck(format!("round {round}: rank 0 did not answer within {} s", wait.as_secs())))?
            .map_err(|s| Stop::Stuck(format!("round {round} at rank 0: {}", s.message())))?
            .into_inner()
            .values
        };
        let sum = from_bytes(&bytes).map_err(Stop::Stuck)?;
        if sum.len() != sent {
            return Err(Stop::Stuck(format!("round {round}: {} values came back for {sent} sent", sum.len())));
        }
        Ok(sum)
    }

    async fn client(&mut self) -> Result<&mut JobsClient<Channel>, Stop> {
        if self.client.is_none() {
            let rank0 = self.t.group.workers[0];
            let addr = self
                .jobs
                .membership
                .view()
                .members
                .into_iter()
                .find(|m| m.identity.id.0 == rank0)
                .map(|m| m.identity.addr.to_string())
                .ok_or_else(|| Stop::Stuck(format!("rank 0 (node {rank0}) is not a member")))?;
            let ch = idunno_rpc::connect_channel_with(&addr, Duration::from_secs(2), FIRST_ROUND_WAIT)
                .await
                .map_err(|e| Stop::Stuck(e.to_string()))?;
            self.client = Some(JobsClient::new(ch).limited());
        }
        self.client.as_mut().ok_or_else(|| Stop::Stuck("no client".into()))
    }

    /// Rank 0: write the checkpoint and the model (if given) to SDFS, then
    /// report to the coordinator. A refused report means this generation
    /// is over.
    async fn report(
        &self,
        step: u64,
        checkpoint: Option<Checkpoint>,
        epoch_end: Option<Option<Score>>,
        train: Score,
        model: Option<Vec<u8>>,
    ) -> Result<(), Stop> {
        let spec = &self.t.spec;
        let sdfs = &self.jobs.sdfs;
        let checkpoint_version = match checkpoint {
            Some(c) => {
                let bytes = c.to_bytes().map_err(Stop::Failed)?;
                let file = spec.checkpoint_file();
                Some(
                    self.fetch("writing the checkpoint", || async {
                        sdfs.put(&file, &bytes).await.map(|s| s.version).map_err(|e| e.to_string())
                    })
                    .await?,
                )
            }
            None => None,
        };
        let model_version = match model {
            Some(bytes) => Some(
                self.fetch("writing the model", || async {
                    sdfs.put(&spec.out, &bytes).await.map(|s| s.version).map_err(|e| e.to_string())
                })
                .await?,
            ),
            None => None,
        };
        if let Some(version) = checkpoint_version {
            tracing::info!(
                job = %spec.name,
                step,
                version,
                loss = train.loss().unwrap_or(0.0),
                train_accuracy = train.accuracy().unwrap_or(0.0),
                "checkpoint written"
            );
        }
        let report = TrainReport { step, checkpoint_version, train, epoch_end, model_version };
        let must = checkpoint_version.is_some() || model_version.is_some();
        let mut tries = 0;
        loop {
            let cmd = TrainCommand::ReportTraining {
                job: spec.name.clone(),
                generation: self.t.group.generation,
                report: report.clone(),
                now_ms: now_ms(),
            };
            match self.cancellable(self.jobs.coordinator.apply(cmd)).await? {
                Ok(out) => {
                    return match out.applied {
                        Ok(_) => Ok(()),
                        Err(Refusal::StaleGeneration { .. } | Refusal::JobNotRunning { .. }) => Err(Stop::Cancelled),
                        Err(r) => Err(Stop::Stuck(format!("progress report refused: {r}"))),
                    };
                }
                // A plain progress report can wait for the next one; a
                // checkpoint or the model must be recorded.
                Err(e) if must && tries < 30 => {
                    tries += 1;
                    tracing::warn!(job = %spec.name, error = %e, "retrying the training report");
                    self.cancellable(tokio::time::sleep(Duration::from_secs(1))).await?;
                }
                Err(e) => {
                    tracing::warn!(job = %spec.name, error = %e, "training report not recorded");
                    return if must { Err(Stop::Stuck(e.to_string())) } else { Ok(()) };
                }
            }
        }
    }
}

/// Time per step spent computing, waiting for the round and applying it,
/// since the last log line.
#[derive(Default)]
struct Timing {
    steps: u32,
    compute: Duration,
    wait: Duration,
    apply: Duration,
}

impl Timing {
    fn add(&mut self, compute: Duration, wait: Duration, apply: Duration) {
        self.steps += 1;
        self.compute += compute;
        self.wait += wait;
        self.apply += apply;
    }

    fn log(&mut self, job: &str, step: u64) {
        let per = |d: Duration| d.as_secs_f64() * 1000.0 / f64::from(self.steps.max(1));
        tracing::info!(
            %job,
            step,
            compute_ms = per(self.compute),
            round_ms = per(self.wait),
            apply_ms = per(self.apply),
            "time per step"
        );
        *self = Timing::default();
    }
}
