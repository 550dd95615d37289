//! The `Jobs` gRPC service. Any node serves the client calls (writes go
//! through the coordinator leader); `Work` is the leader's alone.

use std::sync::Arc;

use idunno_coordinator::service::status_of;
use idunno_rpc::v1;
use idunno_state::{Command, EventKind, JobCommand, JobState, Refusal, ServeCommand, TrainCommand};
use tonic::{Request, Response, Status};

use crate::results;
use crate::{Jobs, now_ms, status};

pub struct JobsService(pub Arc<Jobs>);

/// A refused command as the status a client acts on.
fn refusal_status(r: Refusal) -> Status {
    let msg = r.to_string();
    match r {
        Refusal::NoSuchJob { .. } | Refusal::NoSuchFile { .. } | Refusal::NoSuchServed { .. } => Status::not_found(msg),
        Refusal::JobExists { .. } | Refusal::ServedExists { .. } => Status::already_exists(msg),
        Refusal::BadTransition { .. } | Refusal::JobRunning { .. } | Refusal::JobNotRunning { .. } => {
            Status::failed_precondition(msg)
        }
        _ => Status::invalid_argument(msg),
    }
}

impl JobsService {
    async fn commit(&self, cmd: impl Into<Command>) -> Result<(), Status> {
        let out = self.0.coordinator.apply(cmd).await.map_err(status_of)?;
        out.applied.map(|_| ()).map_err(refusal_status)
    }

    fn json(v: &serde_json::Value) -> Result<Response<v1::JsonReply>, Status> {
        let json = serde_json::to_vec(v).map_err(|e| Status::internal(e.to_string()))?;
        // Said here, rather than as tonic's "message too large".
        let room = idunno_rpc::limits::MAX_MESSAGE - 1024;
        if json.len() > room {
            return Err(Status::resource_exhausted(format!(
                "the answer is {} MiB, more than one message carries ({} MiB)",
                json.len() >> 20,
                room >> 20
            )));
        }
        Ok(Response::new(v1::JsonReply { json }))
    }
}

#[tonic::async_trait]
impl idunno_rpc::Jobs for JobsService {
    async fn add_job(&self, req: Request<v1::AddJobRequest>) -> Result<Response<v1::JobReply>, Status> {
        let req = req.into_inner();
        let name = req.name.clone();
        let spec = match crate::validate::add_job(&self.0, req).await {
            Ok(spec) => spec,
            Err(e) => {
                if e.code() == tonic::Code::InvalidArgument || e.code() == tonic::Code::NotFound {
                    let detail = format!("job add {name} refused: {}", e.message());
                    self.0.coordinator.events().record(EventKind::InputRefused, self.0.id, None, detail, None);
                }
                return Err(e);
            }
        };
        let message = format!(
            "job {} added: {} v{} over {} inputs of {}, batch size {}",
            spec.name, spec.model, spec.model_version, spec.samples, spec.inputs, spec.batch_size
        );
        let name = spec.name.clone();
        self.commit(JobCommand::AddJob { spec }).await?;
        self.0.coordinator.record_now(EventKind::JobAdded, 0, Some(&name), message.clone()).await;
        Ok(Response::new(v1::JobReply { message }))
    }

    async fn control(&self, req: Request<v1::ControlRequest>) -> Result<Response<v1::JobReply>, Status> {
        let req = req.into_inner();
        let job = req.job.clone();
        let (cmd, message) = match req.action.as_str() {
            "start" => {
                (JobCommand::SetJobState { job: job.clone(), state: JobState::Running, now_ms: now_ms() }, "started")
            }
            "stop" => {
                (JobCommand::SetJobState { job: job.clone(), state: JobState::Stopped, now_ms: now_ms() }, "stopped")
            }
            "remove" => (JobCommand::RemoveJob { job: job.clone() }, "removed"),
            "set-batch-size" => {
                if req.batch_size == 0 {
                    return Err(Status::invalid_argument("batch size must be at least 1"));
                }
                (JobCommand::SetBatchSize { job: job.clone(), batch_size: req.batch_size }, "batch size set")
            }
            other => return Err(Status::invalid_argument(format!("unknown job action {other:?}"))),
        };
        let removed = matches!(cmd, JobCommand::RemoveJob { .. });
        self.commit(cmd).await?;
        if removed {
            let detail = format!("job {job} removed");
            self.0.coordinator.record_now(EventKind::JobRemoved, 0, Some(&job), detail).await;
        }
        Ok(Response::new(v1::JobReply { message: format!("job {job}: {message}") }))
    }

    async fn status(&self, req: Request<v1::JobQuery>) -> Result<Response<v1::JsonReply>, Status> {
        let job = req.into_inner().job;
        let (data, _) = self.0.coordinator.read().await.map_err(status_of)?;
        let job = (!job.is_empty()).then_some(job);
        let doc = status::status(&data.state, job.as_deref(), now_ms())
            .ok_or_else(|| Status::not_found(format!("no such job: {}", job.unwrap_or_default())))?;
        Self::json(&doc)
    }

    async fn assignments(&self, req: Request<v1::JobQuery>) -> Result<Response<v1::JsonReply>, Status> {
        let explain = req.into_inner().explain;
        let (data, _) = self.0.coordinator.read().await.map_err(status_of)?;
        if explain {
            return Self::json(&status::assignments_explained(&data.state, now_ms()));
        }
        Self::json(&status::assignments(&data.state))
    }

    type ResultsStream = tokio_stream::wrappers::ReceiverStream<Result<v1::ResultRows, Status>>;

    async fn results(&self, req: Request<v1::JobQuery>) -> Result<Response<Self::ResultsStream>, Status> {
        let job = req.into_inner().job;
        let (data, _) = self.0.coordinator.read().await.map_err(status_of)?;
        if let Some(t) = data.state.training.jobs.get(&job) {
            return Err(Status::failed_precondition(format!(
                "{job} is a training job: it has no results; it writes its model to {} (see idunno job status {job})",
                t.spec.out
            )));
        }
        let j = data.state.inference.jobs.get(&job).ok_or_else(|| Status::not_found(format!("no such job: {job}")))?;
        let files = j.results.files();
        let current = results::Current { done: j.progress.done.clone(), samples: j.spec.samples };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let sdfs = self.0.sdfs.clone();
        tokio::spawn(async move {
            let mut reading = crate::compact::CurrentRows::new(&sdfs, files, current);
            let sent: Result<(), String> = async {
                while let Some((layout, rows)) = reading.next().await? {
                    for part in rows.chunks(results::rows_per_message(layout)) {
                        let msg = Ok(results::to_message(layout, part));
                        tx.send(msg).await.map_err(|_| "the client went away".to_string())?;
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = sent {
                // A segment dropped meanwhile (a later pass replaced it).
                let _ =
                    tx.send(Err(Status::unavailable(format!("reading the results of {job}: {e}; try again")))).await;
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn work(&self, req: Request<v1::WorkRequest>) -> Result<Response<v1::WorkReply>, Status> {
        let mut req = req.into_inner();
        // A draining worker reports what it ran and is given nothing new.
        if self.0.coordinator.local_state().state.nodes.is_draining(req.worker) {
            req.want = 0;
        }
        self.0.leader.work(req).await.map(Response::new)
    }

    async fn train(&self, req: Request<v1::TrainRequest>) -> Result<Response<v1::JobReply>, Status> {
        let spec = crate::train::validate::train_job(&self.0, req.into_inner()).await?;
        let message = format!(
            "training job {} added: {} on {} samples of {}, {} epoch(s) of {} steps, batch size {}, {} worker(s), into {}",
            spec.name,
            spec.arch,
            spec.samples,
            spec.inputs.name,
            spec.epochs,
            spec.steps_per_epoch(),
            spec.batch_size,
            spec.workers,
            spec.out
        );
        self.commit(TrainCommand::AddTraining { spec, now_ms: now_ms() }).await?;
        Ok(Response::new(v1::JobReply { message }))
    }

    async fn infer(&self, req: Request<v1::InferBatch>) -> Result<Response<v1::InferBatchReply>, Status> {
        let timeout = idunno_rpc::limits::grpc_timeout(req.metadata());
        crate::served::infer(&self.0, req.into_inner(), timeout).await.map(Response::new)
    }

    async fn serve_add(&self, req: Request<v1::ServeAddRequest>) -> Result<Response<v1::JobReply>, Status> {
        let req = req.into_inner();
        let workers = req.workers;
        let spec = crate::served::add(&self.0, req).await?;
        let on = if workers == 0 { "every worker".to_string() } else { format!("{workers} worker(s)") };
        let message = format!(
            "serving {} (model {} v{}, {} input(s), {} output(s)) on {on}; max batch {}, max delay {} ms, max queue {}, weight {}",
            spec.name,
            spec.model,
            spec.model_version,
            spec.inputs.len(),
            spec.outputs.len(),
            spec.max_batch,
            spec.max_delay_ms,
            spec.max_queue,
            spec.weight
        );
        self.commit(ServeCommand::AddServed { spec, workers }).await?;
        Ok(Response::new(v1::JobReply { message }))
    }

    async fn serve_remove(&self, req: Request<v1::ServeRemoveRequest>) -> Result<Response<v1::JobReply>, Status> {
        let name = req.into_inner().name;
        self.commit(ServeCommand::RemoveServed { name: name.clone() }).await?;
        Ok(Response::new(v1::JobReply { message: format!("{name} is no longer served") }))
    }

    async fn serve_status(&self, req: Request<v1::ServeStatusRequest>) -> Result<Response<v1::JsonReply>, Status> {
        if req.into_inner().local {
            return Self::json(&self.0.serve_figures());
        }
        Self::json(&crate::served::status(&self.0).await)
    }

    async fn reduce(&self, req: Request<v1::ReduceRequest>) -> Result<Response<v1::ReduceReply>, Status> {
        let values = self.0.reducer.reduce(req.into_inner()).await?;
        Ok(Response::new(v1::ReduceReply { values }))
    }
}
