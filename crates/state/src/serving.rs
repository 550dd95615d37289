//! Models served online (`idunno serve add`): answered by any node over
//! the Open Inference Protocol. The table holds what every node needs to
//! answer a request the same way — the model file and version, the
//! batching and queue limits, the tensors the model takes and gives —,
//! which workers the leader placed it on (they load it), and which of
//! them have it loaded and take its requests. Requests themselves never
//! go through here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Applied, Refusal, Reply, non_empty};

/// At most this many served models (a bound on the table).
pub const MAX_SERVED: usize = 256;
/// At most this many inputs or outputs per model.
pub const MAX_TENSORS: usize = 64;
/// At most this many dimensions per tensor.
pub const MAX_RANK: usize = 16;
/// The longest name: of a model, a tensor or an SDFS file.
pub const MAX_NAME: usize = 256;
/// Bounds on a served model's limits.
pub const MAX_SERVE_BATCH: u32 = 4096;
pub const MAX_SERVE_DELAY_MS: u32 = 10_000;
pub const MAX_SERVE_QUEUE: u32 = 1_000_000;
pub const MAX_WEIGHT: u32 = 1_000;
/// The most workers a served model may ask for (0 asks for every one).
pub const MAX_SERVE_WORKERS: u32 = 4096;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServingTable {
    /// Served models by name.
    pub models: BTreeMap<String, Served>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    pub spec: ServeSpec,
    /// Placed workers that have the model loaded and take its requests,
    /// sorted.
    pub ready: Vec<u64>,
    /// How many workers should load it: 0 for every live one.
    pub workers: u32,
    /// The workers the leader placed it on, sorted: they load it, the
    /// others do not.
    pub placed: Vec<u64>,
}

/// One input or output of a served model, as the protocol names it:
/// `datatype` is the protocol's (`FP32`, `INT64`, `UINT8`, …) and `-1` in
/// `shape` is a dimension the model leaves free (the batch, a length).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServeSpec {
    pub name: String,
    /// The model file in SDFS and the version served.
    pub model: String,
    pub model_version: u64,
    /// The protocol's platform name (`onnxruntime_onnx`, or `idunno` for a
    /// model the cluster trained).
    pub platform: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Dynamic batching: up to `max_batch` requests' rows run together,
    /// gathered for at most `max_delay_ms` after the first arrives.
    pub max_batch: u32,
    pub max_delay_ms: u32,
    /// Requests waiting at one node beyond this are refused (429).
    pub max_queue: u32,
    /// Request rates under overload are in the ratio of the weights.
    pub weight: u32,
    /// When it was added (the leader's clock).
    pub added_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ServeCommand {
    AddServed {
        spec: ServeSpec,
        /// How many workers load it (0, or absent: every live one).
        #[serde(default)]
        workers: u32,
    },
    RemoveServed {
        name: String,
    },
    /// The workers ready for each served model (the whole table: models
    /// not named have none). Names no longer served are ignored.
    SetServeReady {
        ready: BTreeMap<String, Vec<u64>>,
    },
    /// The leader's placement of the models it names (the others keep
    /// theirs). Names no longer served are ignored.
    SetServePlacement {
        placed: BTreeMap<String, Vec<u64>>,
    },
}

impl ServeCommand {
    pub const OPS: &[&str] = &["add_served", "remove_served", "set_serve_ready", "set_serve_placement"];
}

/// Sorted, distinct worker ids (0 is no worker).
fn worker_set(mut workers: Vec<u64>) -> Vec<u64> {
    workers.sort_unstable();
    workers.dedup();
    workers.retain(|w| *w != 0);
    workers
}

fn is_worker_set(workers: &[u64]) -> bool {
    workers.windows(2).all(|w| w[0] < w[1]) && !workers.contains(&0)
}

fn bad(why: String) -> Refusal {
    Refusal::BadServe(why)
}

fn check_name(what: &str, name: &str) -> Result<(), Refusal> {
    non_empty(what, name)?;
    if name.len() > MAX_NAME {
        return Err(bad(format!("{what} is {} bytes long; at most {MAX_NAME}", name.len())));
    }
    Ok(())
}

/// A served model's name goes in URLs (`/v2/models/{name}`): letters,
/// digits and `-_.`, not starting with a dot.
fn check_model_name(name: &str) -> Result<(), Refusal> {
    check_name("the served model's name", name)?;
    let ok = name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && !name.starts_with('.');
    if !ok {
        return Err(bad(format!(
            "served model name {name:?}: use letters, digits, '-', '_' and '.' (it is part of a URL)"
        )));
    }
    Ok(())
}

fn check_tensors(what: &str, tensors: &[TensorSpec]) -> Result<(), Refusal> {
    if tensors.is_empty() || tensors.len() > MAX_TENSORS {
        return Err(bad(format!("a served model has 1 to {MAX_TENSORS} {what}, not {}", tensors.len())));
    }
    for t in tensors {
        check_name("a tensor's name", &t.name)?;
        if !DATATYPES.contains(&t.datatype.as_str()) {
            return Err(bad(format!("tensor {}: datatype {:?} is not one of {DATATYPES:?}", t.name, t.datatype)));
        }
        if t.shape.len() > MAX_RANK || t.shape.iter().any(|d| *d < -1) {
            return Err(bad(format!("tensor {}: shape {:?} is not a shape", t.name, t.shape)));
        }
    }
    Ok(())
}

/// The protocol's datatypes a served model may take or give.
pub const DATATYPES: &[&str] =
    &["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"];

impl ServeSpec {
    pub fn check(&self) -> Result<(), Refusal> {
        check_model_name(&self.name)?;
        check_name("the model file", &self.model)?;
        check_name("the platform", &self.platform)?;
        check_tensors("inputs", &self.inputs)?;
        check_tensors("outputs", &self.outputs)?;
        let limit = |what: &str, v: u32, max: u32| {
            if v == 0 || v > max { Err(bad(format!("{what} must be 1 to {max}, not {v}"))) } else { Ok(()) }
        };
        limit("max batch", self.max_batch, MAX_SERVE_BATCH)?;
        limit("max queue", self.max_queue, MAX_SERVE_QUEUE)?;
        limit("weight", self.weight, MAX_WEIGHT)?;
        if self.max_delay_ms > MAX_SERVE_DELAY_MS {
            return Err(bad(format!("max delay must be at most {MAX_SERVE_DELAY_MS} ms, not {}", self.max_delay_ms)));
        }
        Ok(())
    }
}

impl ServingTable {
    pub fn apply(&mut self, cmd: ServeCommand) -> Applied {
        match cmd {
            ServeCommand::AddServed { spec, workers } => {
                spec.check()?;
                if workers > MAX_SERVE_WORKERS {
                    return Err(bad(format!(
                        "workers must be at most {MAX_SERVE_WORKERS} (0: every one), not {workers}"
                    )));
                }
                if self.models.contains_key(&spec.name) {
                    return Err(Refusal::ServedExists { name: spec.name });
                }
                if self.models.len() >= MAX_SERVED {
                    return Err(bad(format!("{MAX_SERVED} models are served already")));
                }
                let served = Served { spec, ready: Vec::new(), workers, placed: Vec::new() };
                self.models.insert(served.spec.name.clone(), served);
                Ok(Reply::Done)
            }
            ServeCommand::RemoveServed { name } => match self.models.remove(&name) {
                Some(_) => Ok(Reply::Done),
                None => Err(Refusal::NoSuchServed { name }),
            },
            ServeCommand::SetServeReady { ready } => {
                for (name, served) in &mut self.models {
                    served.ready = worker_set(ready.get(name).cloned().unwrap_or_default());
                }
                Ok(Reply::Done)
            }
            ServeCommand::SetServePlacement { placed } => {
                for (name, workers) in placed {
                    if let Some(served) = self.models.get_mut(&name) {
                        served.placed = worker_set(workers);
                    }
                }
                Ok(Reply::Done)
            }
        }
    }

    pub fn check(&self) -> Result<(), String> {
        if self.models.len() > MAX_SERVED {
            return Err(format!("{} served models; at most {MAX_SERVED}", self.models.len()));
        }
        for (name, s) in &self.models {
            if name != &s.spec.name {
                return Err(format!("served model {name} is filed as {}", s.spec.name));
            }
            s.spec.check().map_err(|e| format!("served model {name}: {e}"))?;
            if !is_worker_set(&s.ready) {
                return Err(format!("served model {name}: ready workers {:?} not sorted and distinct", s.ready));
            }
            if !is_worker_set(&s.placed) {
                return Err(format!("served model {name}: placed workers {:?} not sorted and distinct", s.placed));
            }
            if s.workers > MAX_SERVE_WORKERS {
                return Err(format!("served model {name} asks for {} workers", s.workers));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> ServeSpec {
        ServeSpec {
            name: name.into(),
            model: "models/m.onnx".into(),
            model_version: 1,
            platform: "onnxruntime_onnx".into(),
            inputs: vec![TensorSpec { name: "x".into(), datatype: "FP32".into(), shape: vec![-1, 4] }],
            outputs: vec![TensorSpec { name: "y".into(), datatype: "FP32".into(), shape: vec![-1, 2] }],
            max_batch: 8,
            max_delay_ms: 2,
            max_queue: 100,
            weight: 1,
            added_ms: 5,
        }
    }

    #[test]
    fn served_models_are_added_once_made_ready_and_removed() {
        let mut t = ServingTable::default();
        t.apply(ServeCommand::AddServed { spec: spec("m"), workers: 2 }).unwrap();
        assert_eq!((t.models["m"].workers, t.models["m"].placed.len()), (2, 0));
        let again = t.apply(ServeCommand::AddServed { spec: spec("m"), workers: 0 });
        assert_eq!(again, Err(Refusal::ServedExists { name: "m".into() }));
        t.apply(ServeCommand::SetServeReady {
            ready: [("m".into(), vec![3, 1, 3, 0]), ("gone".into(), vec![2])].into(),
        })
        .unwrap();
        assert_eq!(t.models["m"].ready, vec![1, 3]);
        assert!(!t.models.contains_key("gone"));
        t.apply(ServeCommand::SetServePlacement {
            placed: [("m".into(), vec![4, 0, 2, 4]), ("gone".into(), vec![1])].into(),
        })
        .unwrap();
        assert_eq!(t.models["m"].placed, vec![2, 4]);
        assert!(!t.models.contains_key("gone"));
        t.check().unwrap();
        t.apply(ServeCommand::RemoveServed { name: "m".into() }).unwrap();
        assert_eq!(
            t.apply(ServeCommand::RemoveServed { name: "m".into() }),
            Err(Refusal::NoSuchServed { name: "m".into() })
        );
    }

    #[test]
    fn bad_specs_are_refused_and_change_nothing() {
        let mut t = ServingTable::default();
        let cases: Vec<(ServeSpec, &str)> = vec![
            (ServeSpec { name: "a/b".into(), ..spec("x") }, "part of a URL"),
            (ServeSpec { name: "".into(), ..spec("x") }, "must not be empty"),
            (ServeSpec { max_batch: 0, ..spec("x") }, "max batch must be 1 to"),
            (ServeSpec { max_queue: MAX_SERVE_QUEUE + 1, ..spec("x") }, "max queue"),
            (ServeSpec { max_delay_ms: MAX_SERVE_DELAY_MS + 1, ..spec("x") }, "max delay"),
            (ServeSpec { weight: 0, ..spec("x") }, "weight"),
            (ServeSpec { inputs: vec![], ..spec("x") }, "inputs"),
            (
                ServeSpec {
                    inputs: vec![TensorSpec { name: "x".into(), datatype: "FLOAT".into(), shape: vec![1] }],
                    ..spec("x")
                },
                "datatype",
            ),
            (
                ServeSpec {
                    outputs: vec![TensorSpec { name: "y".into(), datatype: "FP32".into(), shape: vec![-2] }],
                    ..spec("x")
                },
                "not a shape",
            ),
        ];
        let too_many = t.apply(ServeCommand::AddServed { spec: spec("x"), workers: MAX_SERVE_WORKERS + 1 });
        assert!(too_many.unwrap_err().to_string().contains("workers must be at most"));
        for (s, want) in cases {
            let e = t.apply(ServeCommand::AddServed { spec: s, workers: 0 }).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should say {want:?}");
            assert!(t.models.is_empty());
        }
    }
}
