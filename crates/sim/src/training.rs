//! The simulation's training job: an MLP learning the rows' classes,
//! data-parallel over two workers, a checkpoint every 10 steps (12 steps an
//! epoch), and the checks of what it produced.

use std::sync::Arc;

use idunno_rpc::v1;

use crate::{SAMPLES, added, expected_class, input_set, jobs_client, npy, retry};

pub(crate) const JOB: &str = "learn";
const MODEL: &str = "learned.model";
const EPOCHS: u32 = 25;

/// The class of every row, as `.npy` int64: what the training job learns.
fn labels() -> Vec<u8> {
    let data: Vec<u8> = (0..SAMPLES).flat_map(|i| expected_class(i).to_le_bytes()).collect();
    npy("<i8", &format!("({SAMPLES},)"), &data)
}

/// Put the labels into SDFS and add the training job (it starts at once).
pub(crate) async fn submit(nodes: &[u64]) -> Result<(), String> {
    let labels = labels();
    retry(nodes, "put the labels", |a| {
        let labels = labels.clone();
        async move { idunno_sdfs::client::put(&a, "labels.npy", &labels).await }
    })
    .await?;
    let train = v1::TrainRequest {
        name: JOB.into(),
        arch: "mlp".into(),
        inputs: "rows.npy".into(),
        labels: "labels.npy".into(),
        test_inputs: "rows.npy".into(),
        test_labels: "labels.npy".into(),
        epochs: EPOCHS,
        batch_size: 8,
        workers: 2,
        lr: "0.01".into(),
        out: MODEL.into(),
        checkpoint_every: 10,
        seed: 1,
    };
    retry(nodes, "add the training job", |a| {
        let train = train.clone();
        async move { added(jobs_client(&a).await?.train(train).await) }
    })
    .await
}

/// The training ran every step, and its model, read back from SDFS and
/// served, scores exactly the accuracy training reported. Its steps and
/// how many groups it took.
pub(crate) async fn check(nodes: &[u64]) -> Result<(u64, u64), String> {
    let status = retry(nodes, "training status", |a| async move {
        let q = v1::JobQuery { job: JOB.into(), explain: false };
        let r = jobs_client(&a).await?.status(q).await.map_err(|s| s.message().to_string())?;
        serde_json::from_slice::<serde_json::Value>(&r.into_inner().json).map_err(|e| e.to_string())
    })
    .await?;
    let t = &status[0];
    let steps = t["steps"].as_u64().unwrap_or(0);
    if t["step"].as_u64() != Some(steps) || steps == 0 {
        return Err(format!("training {JOB} is done at step {} of {steps}: {t}", t["step"]));
    }
    let reported = t["test_accuracy"].as_f64().ok_or_else(|| format!("no test accuracy: {t}"))?;
    let version = t["model_version"].as_u64().ok_or_else(|| format!("no model version: {t}"))?;
    let (_, bytes) =
        retry(nodes, "read the trained model", |a| async move { idunno_sdfs::client::get(&a, MODEL, version).await })
            .await?;
    let mut model = idunno_ml::Model::load(&bytes, 1).map_err(|e| format!("the trained model does not load: {e}"))?;
    let rows = idunno_ml::read_array(&input_set()).map_err(|e| e.to_string())?;
    let x = idunno_ml::onnx::fit(&model.inputs()[0], rows)?;
    let logits = model.run(&[x]).map_err(|e| e.to_string())?.remove(0).to_f32();
    let right = logits
        .chunks(16)
        .enumerate()
        .filter(|(i, row)| {
            let best = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(j, _)| j as i64);
            best == Some(expected_class(*i))
        })
        .count();
    let served = ((right as f64 / SAMPLES as f64) * 10_000.0).round() / 10_000.0;
    if served != reported {
        return Err(format!("the served model scores {served}, training reported {reported}"));
    }
    // However often the group re-formed, the weights are bit for bit those
    // of one process computing the same steps: each group went on from a
    // checkpoint that holds everything (weights, Adam's moments, the step),
    // and a step's gradient is the sum of its shards (two at most here, so
    // the order of the sum does not matter).
    let groups: Vec<(u64, usize)> = t["regroups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| (r["from_step"].as_u64().unwrap_or(0), r["workers"].as_array().map_or(1, Vec::len)))
        .collect();
    let trained = idunno_ml::trained::Net::from_model_file(&bytes)?.params()?;
    let reference = reference_training(steps, &groups)?;
    if let Some(k) = trained.iter().zip(&reference).position(|(a, b)| a.to_bits() != b.to_bits()) {
        return Err(format!(
            "the trained weights differ from one process's at parameter {k} ({} vs {}); groups {groups:?}",
            trained[k], reference[k]
        ));
    }
    Ok((steps, groups.len() as u64))
}

/// The weights one process gets computing `steps` steps of the training
/// job, each with as many shards as the group that last went on from at
/// or before it (`groups`: from step, members, in the order formed).
fn reference_training(steps: u64, groups: &[(u64, usize)]) -> Result<Vec<f32>, String> {
    use idunno_ml::trained::{Arch, DataSet, Shape, Trainer};
    let rows = idunno_ml::read_array(&input_set()).map_err(|e| e.to_string())?;
    let labels = idunno_ml::read_array(&labels()).map_err(|e| e.to_string())?;
    let data = Arc::new(DataSet::new(rows, &labels, "rows", "labels")?);
    let shape = Shape::new(Arch::Mlp, &data.sample, data.classes(), data.dtype)?;
    let mut t = Trainer::new(shape, data, 8, 0.01, 1)?;
    // The group in charge of each step: the last one formed from at or
    // before it (a later group going back to an earlier checkpoint takes
    // over the steps it redoes).
    let mut world = vec![1usize; steps as usize];
    for &(from, k) in groups {
        for w in world.iter_mut().skip(from as usize) {
            *w = k;
        }
    }
    while t.step < steps {
        let k = world[t.step as usize];
        let mut sum: Option<Vec<f32>> = None;
        for rank in 0..k {
            let g = t.shard_grads(rank, k)?.grads;
            match &mut sum {
                None => sum = Some(g),
                Some(s) => s.iter_mut().zip(&g).for_each(|(a, b)| *a += b),
            }
        }
        t.apply(&sum.unwrap_or_default())?;
    }
    t.net.params()
}
