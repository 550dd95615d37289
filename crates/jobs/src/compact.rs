//! The upkeep of jobs' results on the coordinator leader, after each
//! flush:
//!
//! - a job that stopped, is done or failed has its segments compacted
//!   into its base file `<job>.results` (streamed: memory stays bounded
//!   whatever the job's size), then the segments are deleted;
//! - segments whose every row a later pass replaced are dropped (looping
//!   jobs keep about two passes of segments, not all they ever wrote);
//! - segment files that no job names (compacted or dropped ones, a flush
//!   whose count was lost with its leader, a job removed before
//!   compaction) are deleted once no job has named them for a minute, so
//!   a reader that started before they were let go can still read them.
//!
//! Each row is written twice at most: in its segment, and in the base.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use idunno_sdfs::Sdfs;
use idunno_state::{FileCommand, FileRef, Job, JobCommand, JobState, Reply, pass_done};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::results::{self, Current, HEADER_BYTES, Layout, Reader, Writer};
use crate::{Jobs, now_ms};

const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// A segment no job names is deleted only if written at least this long
/// ago: its count may still be on its way (a flush commits within
/// seconds, or gives up after 8).
const UNCOUNTED_AGE_MS: u64 = 30_000;
/// Bytes of rows per piece of a compacted file on its way to SDFS.
const PIECE: usize = 1 << 20;

#[derive(Default)]
pub(crate) struct Upkeep {
    last_sweep: Option<Instant>,
    /// Segment files no job names, since when this leader has seen them so.
    unnamed: std::collections::BTreeMap<String, Instant>,
    /// The compaction under way, if any (one at a time).
    compacting: Option<(String, JoinHandle<()>)>,
}

impl Upkeep {
    pub(crate) async fn run(&mut self, jobs: &Arc<Jobs>) {
        let state = jobs.coordinator.local_state();
        for (name, j) in &state.state.inference.jobs {
            let superseded: Vec<FileRef> = j
                .results
                .segments
                .iter()
                .filter(|s| pass_done(&j.progress.done, j.spec.samples, s.last_pass.saturating_add(1)))
                .map(|s| s.file.clone())
                .collect();
            if !superseded.is_empty() {
                drop_segments(jobs, name, superseded).await;
            }
        }
        if self.compacting.as_ref().is_some_and(|(_, h)| h.is_finished()) {
            self.compacting = None;
        }
        if self.compacting.is_none() {
            let idle = |j: &Job| j.state != JobState::Running && j.state != JobState::Added;
            if let Some((name, _)) =
                state.state.inference.jobs.iter().find(|(_, j)| idle(j) && !j.results.segments.is_empty())
            {
                let (jobs, name) = (jobs.clone(), name.clone());
                let job = name.clone();
                let task = tokio::spawn(async move {
                    if let Err(e) = compact(&jobs, &job).await {
                        tracing::warn!(%job, error = %e, "could not compact the results; trying again later");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                });
                self.compacting = Some((name, task));
            }
        }
        if self.last_sweep.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) {
            self.last_sweep = Some(Instant::now());
            self.sweep(jobs).await;
        }
    }
}

impl Drop for Upkeep {
    fn drop(&mut self) {
        if let Some((_, h)) = &self.compacting {
            h.abort();
        }
    }
}

/// Delete an SDFS file (its blobs go with the garbage collector).
pub(crate) async fn delete(jobs: &Jobs, name: &str) {
    let cmd = FileCommand::DeleteFile { name: name.to_string(), now_ms: now_ms() };
    if let Err(e) = jobs.coordinator.apply(cmd).await {
        tracing::debug!(%name, error = %e, "could not delete a results segment (the sweep will)");
    }
}

async fn drop_segments(jobs: &Jobs, job: &str, files: Vec<FileRef>) {
    let cmd = JobCommand::DropResults { job: job.to_string(), files: files.clone() };
    match jobs.coordinator.apply(cmd).await.map(|o| o.applied) {
        // The sweep deletes the files once readers are done with them.
        Ok(Ok(_)) => tracing::debug!(%job, segments = files.len(), "results segments replaced by a later pass"),
        Ok(Err(refusal)) => tracing::debug!(%job, %refusal, "dropping results segments"),
        Err(e) => tracing::debug!(%job, error = %e, "dropping results segments"),
    }
}

impl Upkeep {
    /// Delete segment files no job has named for the grace period.
    async fn sweep(&mut self, jobs: &Jobs) {
        let grace = Duration::from_millis(jobs.config.segment_grace_ms);
        let state = jobs.coordinator.local_state();
        let now = now_ms();
        let mut unnamed = std::collections::BTreeMap::new();
        let named: std::collections::HashSet<&str> = state
            .state
            .inference
            .jobs
            .values()
            .flat_map(|j| j.results.segments.iter().map(|s| s.file.name.as_str()))
            .collect();
        for (name, entry) in state.state.namespace.files.iter() {
            let Some(job) = name.rsplit_once(".results.").map(|(j, _)| j) else { continue };
            if entry.versions.is_empty() || !results::is_segment_of(job, name) || named.contains(name.as_str()) {
                continue;
            }
            let since = self.unnamed.get(name).copied().unwrap_or_else(Instant::now);
            let written = entry.versions.last().map_or(0, |v| v.committed_at_ms);
            let old = now.saturating_sub(written) > UNCOUNTED_AGE_MS;
            if old && since.elapsed() >= grace {
                tracing::debug!(%name, "deleting a results segment no job names");
                delete(jobs, name).await;
            } else {
                unnamed.insert(name.clone(), since);
            }
        }
        self.unnamed = unnamed;
    }
}

/// The current rows of a job's results files, read piece by piece
/// (memory stays bounded whatever the files' sizes).
pub(crate) struct CurrentRows {
    sdfs: Arc<Sdfs>,
    files: std::vec::IntoIter<FileRef>,
    current: Current,
    open: Option<(FileRef, idunno_sdfs::Download, Reader)>,
    layout: Option<Layout>,
}

impl CurrentRows {
    pub(crate) fn new(sdfs: &Arc<Sdfs>, files: Vec<FileRef>, current: Current) -> CurrentRows {
        CurrentRows { sdfs: sdfs.clone(), files: files.into_iter(), current, open: None, layout: None }
    }

    /// The next rows (never an empty batch), or `None` after the last file.
    pub(crate) async fn next(&mut self) -> Result<Option<(Layout, Vec<results::Row>)>, String> {
        loop {
            let Some((f, download, reader)) = &mut self.open else {
                let Some(f) = self.files.next() else { return Ok(None) };
                let d = self.sdfs.open(&f.name, f.version).await.map_err(|e| format!("{}: {e}", f.name))?;
                self.open = Some((f, d, Reader::default()));
                continue;
            };
            let Some(piece) = download.next().await.map_err(|e| format!("{}: {e}", f.name))? else {
                reader.finish().map_err(|e| format!("{}: {e}", f.name))?;
                self.open = None;
                continue;
            };
            let rows = reader.feed(&piece).map_err(|e| format!("{}: {e}", f.name))?;
            let layout = match (self.layout, reader.layout()) {
                (Some(a), Some(b)) if a != b => return Err(format!("{}: rows of another width", f.name)),
                (a, b) => a.or(b),
            };
            self.layout = layout;
            let rows: Vec<results::Row> = rows.into_iter().filter(|r| self.current.keeps(r)).collect();
            if let (Some(l), false) = (layout, rows.is_empty()) {
                return Ok(Some((l, rows)));
            }
        }
    }

    /// The layout of the files read so far.
    pub(crate) fn layout(&self) -> Option<Layout> {
        self.layout
    }
}

/// Compact a job's base and segments into a new version of its base.
async fn compact(jobs: &Arc<Jobs>, job: &str) -> Result<(), String> {
    let state = jobs.coordinator.local_state();
    let j = state.state.inference.jobs.get(job).ok_or("the job is gone")?;
    let files = j.results.files();
    let current = Current { done: j.progress.done.clone(), samples: j.spec.samples };
    let (expect_base, segments) =
        (j.results.base.clone(), j.results.segments.iter().map(|s| s.file.clone()).collect::<Vec<_>>());
    let started = Instant::now();
    // First the size (SDFS takes it up front), then the bytes.
    let mut counting = CurrentRows::new(&jobs.sdfs, files.clone(), current.clone());
    let mut rows = 0u64;
    while let Some((_, batch)) = counting.next().await? {
        rows += batch.len() as u64;
    }
    let layout = counting.layout().unwrap_or(Layout::Class);
    let size = HEADER_BYTES as u64 + rows * layout.row_bytes() as u64;
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let name = results::file_name(job);
    let put = {
        let (sdfs, name) = (jobs.sdfs.clone(), name.clone());
        tokio::spawn(async move {
            let pieces = tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok);
            sdfs.put_stream(&name, size, pieces).await.map(|s| s.version)
        })
    };
    let mut writer = Writer::new(layout);
    let mut reading = CurrentRows::new(&jobs.sdfs, files, current);
    let sent: Result<(), String> = async {
        while let Some((_, batch)) = reading.next().await? {
            batch.iter().for_each(|r| writer.push(r));
            if writer.len() >= PIECE {
                tx.send(Bytes::from(writer.take_body())).await.map_err(|_| "the upload stopped".to_string())?;
            }
        }
        // The rest (for a file of no rows, the header alone).
        let rest = writer.take_body();
        if !rest.is_empty() {
            tx.send(Bytes::from(rest)).await.map_err(|_| "the upload stopped".to_string())?;
        }
        Ok(())
    }
    .await;
    drop(tx);
    let version = put.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    sent?;
    let base = FileRef { name: name.clone(), version };
    let cmd = JobCommand::CompactResults { job: job.to_string(), expect_base, base, segments: segments.clone() };
    match jobs.coordinator.apply(cmd).await.map_err(|e| e.to_string())?.applied {
        Ok(Reply::Done) => {}
        Ok(other) => return Err(format!("unexpected reply {other:?}")),
        Err(refusal) => return Err(refusal.to_string()),
    }
    // The sweep deletes the segments once readers are done with them.
    tracing::info!(%job, rows, segments = segments.len(), bytes = size, ms = started.elapsed().as_millis() as u64, "results compacted");
    Ok(())
}
