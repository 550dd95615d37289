//! `idunno train`: the request is checked against the data in SDFS and the
//! architecture before the job enters the replicated state; a refusal
//! names the problem and nothing starts.

use idunno_ml::trained::{Arch, Shape};
use idunno_rpc::v1;
use idunno_state::{ClusterState, FileRef, TrainSpec};
use tonic::Status;

use super::runner::DataCache;
use super::{DEFAULT_CHECKPOINT_EVERY, DEFAULT_LR};
use crate::Jobs;

fn pinned(state: &ClusterState, name: &str, what: &str) -> Result<FileRef, Status> {
    let version = crate::validate::latest(state, name, what)?;
    Ok(FileRef { name: name.to_string(), version })
}

pub(crate) async fn train_job(jobs: &Jobs, req: v1::TrainRequest) -> Result<TrainSpec, Status> {
    let bad = |m: String| Status::invalid_argument(m);
    let name = req.name.trim().to_string();
    if name.is_empty() {
        return Err(bad("the training job needs a name".to_string()));
    }
    idunno_sdfs::service::check_name(&format!("{name}.ckpt"))
        .map_err(|s| bad(format!("job name {name:?}: {}", s.message())))?;
    let arch = Arch::parse(&req.arch).map_err(bad)?;
    if req.epochs == 0 {
        return Err(bad("epochs must be at least 1".to_string()));
    }
    if req.batch_size == 0 {
        return Err(bad("batch size must be at least 1".to_string()));
    }
    if req.workers == 0 {
        return Err(bad("workers must be at least 1".to_string()));
    }
    let lr = if req.lr.is_empty() { DEFAULT_LR.to_string() } else { req.lr.clone() };
    match lr.parse::<f32>() {
        Ok(x) if x > 0.0 && x.is_finite() => {}
        _ => return Err(bad(format!("learning rate {lr:?} is not a positive number"))),
    }
    if req.out.trim().is_empty() {
        return Err(bad("the training job needs an output model name (--out)".to_string()));
    }
    idunno_sdfs::service::check_name(&req.out).map_err(|s| bad(format!("--out {:?}: {}", req.out, s.message())))?;
    if req.inputs.is_empty() || req.labels.is_empty() {
        return Err(bad("training needs --inputs and --labels".to_string()));
    }
    if req.test_inputs.is_empty() != req.test_labels.is_empty() {
        return Err(bad("--test-inputs and --test-labels go together".to_string()));
    }

    let (state, _) = jobs.coordinator.read().await.map_err(idunno_coordinator::service::status_of)?;
    let state = &state.state;
    if state.inference.jobs.contains_key(&name) || state.training.jobs.contains_key(&name) {
        return Err(Status::already_exists(format!("job {name} already exists")));
    }
    let inputs = pinned(state, &req.inputs, "input set")?;
    let labels = pinned(state, &req.labels, "labels")?;
    let train = DataCache::get(jobs, &inputs, &labels).await.map_err(bad)?;
    if train.is_empty() {
        return Err(bad(format!("{} holds no samples", req.inputs)));
    }
    let shape = Shape::new(arch, &train.sample, train.classes(), train.dtype)
        .map_err(|e| bad(format!("{}: {e}", req.inputs)))?;
    let (test_inputs, test_labels) = if req.test_inputs.is_empty() {
        (None, None)
    } else {
        let ti = pinned(state, &req.test_inputs, "test input set")?;
        let tl = pinned(state, &req.test_labels, "test labels")?;
        let test = DataCache::get(jobs, &ti, &tl).await.map_err(bad)?;
        if test.sample != train.sample {
            return Err(bad(format!("test samples have shape {:?}, training samples {:?}", test.sample, train.sample)));
        }
        if test.classes() > shape.classes {
            return Err(bad(format!(
                "{} names class {} but the training labels only go to {}",
                req.test_labels,
                test.classes() - 1,
                shape.classes - 1
            )));
        }
        (Some(ti), Some(tl))
    };
    let spec = TrainSpec {
        name,
        arch: arch.name().to_string(),
        inputs,
        labels,
        test_inputs,
        test_labels,
        samples: train.len() as u64,
        classes: shape.classes as u32,
        epochs: req.epochs,
        batch_size: req.batch_size,
        workers: req.workers,
        lr,
        seed: req.seed,
        checkpoint_every: if req.checkpoint_every == 0 { DEFAULT_CHECKPOINT_EVERY } else { req.checkpoint_every },
        out: req.out.trim().to_string(),
    };
    Ok(spec)
}
