//! `job add`: the model and the input set are read from SDFS and checked
//! against each other; only a job that can run enters the job table.
//! Every refusal names the file and, for shapes, both shapes.

use idunno_ml::Model;
use idunno_ml::layout::Layout;
use idunno_ml::onnx::{Signature, check_fit};
use idunno_rpc::v1;
use idunno_state::{ClusterState, FileRef, FileVersion, JobSpec, MAX_BATCH_SIZE, OutputKind};
use tonic::Status;

use crate::Jobs;

pub(crate) fn latest(state: &ClusterState, name: &str, what: &str) -> Result<u64, Status> {
    state
        .namespace
        .files
        .get(name)
        .and_then(|f| f.versions.last())
        .map(|v| v.version)
        .ok_or_else(|| Status::not_found(format!("{what} {name} is not in SDFS (put it there first: idunno fs put)")))
}

async fn read(jobs: &Jobs, name: &str, version: u64) -> Result<Vec<u8>, Status> {
    jobs.sdfs
        .get(name, version)
        .await
        .map(|(_, b)| b)
        .map_err(|e| Status::unavailable(format!("reading {name} from SDFS: {e}")))
}

/// Where the rows of array file `name` are: read from its header alone,
/// however large the file.
pub(crate) async fn layout(jobs: &Jobs, state: &ClusterState, name: &str, version: u64) -> Result<Layout, Status> {
    let v = pinned(state, name, version)?;
    let head = v.size.min(idunno_ml::layout::HEADER_BYTES as u64);
    let prefix = jobs
        .sdfs
        .read_range(name, v, 0, head)
        .await
        .map_err(|e| Status::unavailable(format!("reading {name} from SDFS: {e}")))?;
    idunno_ml::layout::layout(&prefix, v.size).map_err(|e| Status::invalid_argument(format!("{name}: {e}")))
}

/// Version `version` of `name` as the state read for this request has it
/// (no second round trip to the leader per file).
pub(crate) fn pinned<'a>(state: &'a ClusterState, name: &str, version: u64) -> Result<&'a FileVersion, Status> {
    let versions = state.namespace.files.get(name).map(|f| f.versions.as_slice()).unwrap_or_default();
    versions
        .iter()
        .find(|v| v.version == version)
        .ok_or_else(|| Status::not_found(format!("{name} has no version {version} in SDFS")))
}

/// The largest batch whose outputs fit in the worker's results budget, if
/// the model's first output has a fixed size per input: a class is one
/// small number, a vector 4 bytes a value.
fn max_batch(first_output: Option<&Signature>, output: OutputKind) -> Option<u32> {
    if output == OutputKind::Class {
        return None;
    }
    let dims: Option<Vec<usize>> = first_output?.shape.get(1..)?.iter().map(|d| usize::try_from(*d).ok()).collect();
    let values = idunno_ml::limits::elements(&dims?)?.max(1);
    let per_input = values.saturating_mul(4);
    let fit = (crate::RESULTS_BUDGET / per_input).clamp(1, MAX_BATCH_SIZE as usize);
    Some(fit as u32)
}

/// The `--transpose` argument that would make samples of shape `sample`
/// fit the model input `sig`, if their axes are the model's in another
/// order.
fn opt_in(sig: &Signature, sample: &[usize]) -> Option<String> {
    let model: Option<Vec<usize>> = sig.shape.get(1..)?.iter().map(|d| usize::try_from(*d).ok()).collect();
    let p = idunno_ml::shapes::permutation(sample, &model?)?;
    Some(p.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(","))
}

/// The shape of a sample once its axes are given in the order `perm`
/// (none: as it is).
fn transposed(sample: &[usize], perm: &[usize]) -> Result<Vec<usize>, String> {
    if perm.is_empty() {
        return Ok(sample.to_vec());
    }
    let mut sorted = perm.to_vec();
    sorted.sort_unstable();
    if sorted != (0..sample.len()).collect::<Vec<_>>() {
        return Err(format!(
            "--transpose {perm:?} is not an order of the {} axes of its samples {sample:?}",
            sample.len()
        ));
    }
    Ok(perm.iter().map(|p| sample[*p]).collect())
}

/// Check the request against SDFS and the model; the command to commit.
pub(crate) async fn add_job(jobs: &Jobs, req: v1::AddJobRequest) -> Result<JobSpec, Status> {
    let name = req.name.trim().to_string();
    if name.is_empty() {
        return Err(Status::invalid_argument("the job needs a name"));
    }
    idunno_sdfs::service::check_name(&crate::results::file_name(&name))
        .map_err(|s| Status::invalid_argument(format!("job name {name:?}: {}", s.message())))?;
    if req.batch_size == 0 {
        return Err(Status::invalid_argument("batch size must be at least 1"));
    }
    if req.inputs.is_empty() {
        return Err(Status::invalid_argument("the job needs an input set (--inputs)"));
    }
    let output = match req.output.as_str() {
        "" if req.labels.is_empty() => OutputKind::Vector,
        "" | "class" => OutputKind::Class,
        "vector" => OutputKind::Vector,
        other => return Err(Status::invalid_argument(format!("output must be class or vector, not {other:?}"))),
    };
    let (state, _) = jobs.coordinator.read().await.map_err(idunno_coordinator::service::status_of)?;
    let state = &state.state;
    if state.inference.jobs.contains_key(&name) {
        return Err(Status::already_exists(format!("job {name} already exists")));
    }

    let model_version = latest(state, &req.model, "model")?;
    let model_bytes = read(jobs, &req.model, model_version).await?;
    let model_name = req.model.clone();
    let model = tokio::task::spawn_blocking(move || Model::load(&model_bytes, 1))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| match e {
            idunno_ml::onnx::MlError::BadModel(why) => Status::invalid_argument(format!(
                "{model_name} is not a model idunno can serve (ONNX, or trained by idunno train): {why}"
            )),
            other => Status::failed_precondition(other.to_string()),
        })?;
    let sigs = model.inputs().to_vec();
    let max_batch = max_batch(model.outputs().first(), output);
    drop(model);
    if req.batch_size > max_batch.unwrap_or(MAX_BATCH_SIZE) {
        return Err(Status::invalid_argument(format!(
            "batch size {} is too large for {}: at most {} (a query's outputs must fit in one message)",
            req.batch_size,
            req.model,
            max_batch.unwrap_or(MAX_BATCH_SIZE)
        )));
    }

    // Input files in the model's input order: by position, or `input=file`.
    let names: Vec<&str> = sigs.iter().map(|s| s.name.as_str()).collect();
    if req.inputs.len() != sigs.len() {
        return Err(Status::invalid_argument(format!(
            "{} takes {} input(s) ({}), {} input file(s) given",
            req.model,
            sigs.len(),
            names.join(", "),
            req.inputs.len()
        )));
    }
    let mut files: Vec<Option<String>> = vec![None; sigs.len()];
    for (i, spec) in req.inputs.iter().enumerate() {
        match spec.split_once('=') {
            Some((input, file)) => {
                let Some(k) = names.iter().position(|n| *n == input) else {
                    return Err(Status::invalid_argument(format!(
                        "{} has no input {input} (it has {})",
                        req.model,
                        names.join(", ")
                    )));
                };
                files[k] = Some(file.to_string());
            }
            None => files[i] = Some(spec.clone()),
        }
    }
    if !req.transpose.is_empty() && sigs.len() != 1 {
        return Err(Status::invalid_argument(format!(
            "--transpose applies to a model with one input; {} takes {}",
            req.model,
            sigs.len()
        )));
    }
    let perm: Vec<usize> = req.transpose.iter().map(|p| *p as usize).collect();
    let mut input_files = Vec::new();
    let mut input_shards = Vec::new();
    let mut samples: Option<(u64, String)> = None;
    for (sig, file) in sigs.iter().zip(files) {
        let file = file.ok_or_else(|| Status::invalid_argument(format!("no input file for {}", sig.name)))?;
        let set = crate::shards::resolve(jobs, state, &file, "input set").await?;
        let (version, t) = (set.version, set.layout);
        input_shards.push(set.shards);
        if t.shape.is_empty() {
            return Err(Status::invalid_argument(format!("{file} is a scalar, not an input set")));
        }
        let sample =
            transposed(t.sample_shape(), &perm).map_err(|e| Status::invalid_argument(format!("{file}: {e}")))?;
        check_fit(sig, t.dtype, &sample).map_err(|e| {
            // Said in terms of the file's own axes, whatever was asked.
            let why = match (perm.is_empty(), check_fit(sig, t.dtype, t.sample_shape())) {
                (true, _) => match opt_in(sig, t.sample_shape()) {
                    Some(p) => format!("{e}; or let the workers do it: --transpose {p}"),
                    None => e,
                },
                (false, Ok(())) => format!("--transpose {perm:?} makes samples {sample:?}: {e}; as they are, they fit"),
                (false, Err(raw)) => format!("--transpose {perm:?} makes samples {sample:?}, which do not fit; {raw}"),
            };
            Status::invalid_argument(format!("{file}: {why}"))
        })?;
        let n = t.samples() as u64;
        if let Some((m, other)) = &samples
            && *m != n
        {
            return Err(Status::invalid_argument(format!("{file} has {n} samples but {other} has {m}")));
        }
        samples = Some((n, file.clone()));
        input_files.push(FileRef { name: file, version });
    }
    let (samples, _) = samples.ok_or_else(|| Status::invalid_argument("no input set"))?;
    if samples == 0 {
        return Err(Status::invalid_argument("the input set is empty"));
    }

    let (labels, labels_version, label_shards) = if req.labels.is_empty() {
        (None, 0, Vec::new())
    } else {
        let set = crate::shards::resolve(jobs, state, &req.labels, "labels").await?;
        let (version, t) = (set.version, set.layout);
        let ok_shape = t.shape == [samples as usize] || t.shape == [samples as usize, 1];
        if !ok_shape {
            return Err(Status::invalid_argument(format!(
                "labels {} have shape {:?}; expected [{samples}] (one per input)",
                req.labels, t.shape
            )));
        }
        if matches!(t.dtype, idunno_ml::DType::F32 | idunno_ml::DType::F64) {
            return Err(Status::invalid_argument(format!("labels {} are {}; expected integers", req.labels, t.dtype)));
        }
        (Some(req.labels.clone()), version, set.shards)
    };
    if input_shards.iter().all(Vec::is_empty) {
        input_shards.clear();
    }

    let spec = JobSpec {
        name,
        model: req.model,
        model_version,
        inputs: input_files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(","),
        input_files,
        labels,
        labels_version,
        batch_size: req.batch_size,
        samples,
        passes: (req.passes > 0).then_some(req.passes),
        output,
        max_batch: max_batch.unwrap_or(0),
        transpose: req.transpose,
        input_shards,
        label_shards,
    };
    Ok(spec)
}
