//! The Open Inference Protocol over gRPC: `inference.GRPCInferenceService`
//! on the node's RPC port, for stock clients (tritonclient.grpc). The same
//! requests as `/v2` over HTTP, the same checks and answers; tensors come
//! as `raw_input_contents` or typed `contents`, and go back as
//! `raw_output_contents`. With a secret, a call carries a certificate of
//! the cluster or its token (`authorization: Bearer T`; `idunno_rpc::auth`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use idunno_rpc::inference::grpc_inference_service_server::GrpcInferenceService;
use idunno_rpc::inference::{
    InferParameter, InferTensorContents, ModelInferRequest, ModelInferResponse, ModelMetadataRequest,
    ModelMetadataResponse, ModelReadyRequest, ModelReadyResponse, ServerLiveRequest, ServerLiveResponse,
    ServerMetadataRequest, ServerMetadataResponse, ServerReadyRequest, ServerReadyResponse, infer_parameter,
    model_infer_request, model_infer_response, model_metadata_response,
};
use tonic::{Request, Response, Status};

use crate::codec::{self, Datatype, InferRequest, Requested, Tensor};
use crate::entry::{ServeError, Serving};

pub struct InferenceService(pub Arc<Serving>);

fn status(e: ServeError) -> Status {
    let m = e.to_string();
    match e {
        ServeError::NotFound(_) => Status::not_found(m),
        ServeError::BadRequest(_) => Status::invalid_argument(m),
        ServeError::QueueFull(_) => Status::resource_exhausted(m),
        ServeError::Unavailable(_) => Status::unavailable(m),
        ServeError::Deadline(_) => Status::deadline_exceeded(m),
    }
}

fn bad(why: String) -> Status {
    Status::invalid_argument(why)
}

/// An input's elements from the typed field of its datatype, as raw bytes.
fn from_contents(name: &str, dt: Datatype, c: &InferTensorContents) -> Result<Vec<u8>, Status> {
    let out: Vec<u8> = match dt {
        Datatype::Bool => c.bool_contents.iter().map(|b| u8::from(*b)).collect(),
        Datatype::U8 => c
            .uint_contents
            .iter()
            .map(|v| u8::try_from(*v))
            .collect::<Result<_, _>>()
            .map_err(|_| bad(format!("input {name}: a UINT8 value out of range")))?,
        Datatype::I8 => c
            .int_contents
            .iter()
            .map(|v| i8::try_from(*v).map(|x| x as u8))
            .collect::<Result<_, _>>()
            .map_err(|_| bad(format!("input {name}: an INT8 value out of range")))?,
        Datatype::I16 => c
            .int_contents
            .iter()
            .map(|v| i16::try_from(*v).map(i16::to_le_bytes))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad(format!("input {name}: an INT16 value out of range")))?
            .concat(),
        Datatype::I32 => c.int_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Datatype::I64 => c.int64_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Datatype::F32 => c.fp32_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Datatype::F64 => c.fp64_contents.iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    Ok(out)
}

/// A request's deadline from its `timeout` parameter (µs), if it has one.
fn timeout_param(p: &std::collections::HashMap<String, InferParameter>) -> Option<u64> {
    match p.get("timeout")?.parameter_choice.as_ref()? {
        infer_parameter::ParameterChoice::Int64Param(v) => u64::try_from(*v).ok(),
        infer_parameter::ParameterChoice::Uint64Param(v) => Some(*v),
        _ => None,
    }
}

/// The protocol's request as the entry takes it.
fn request(r: ModelInferRequest) -> Result<InferRequest, Status> {
    if r.inputs.is_empty() || r.inputs.len() > codec::MAX_TENSORS {
        return Err(bad(format!("a request has 1 to {} inputs, not {}", codec::MAX_TENSORS, r.inputs.len())));
    }
    if !r.raw_input_contents.is_empty() && r.raw_input_contents.len() != r.inputs.len() {
        return Err(bad(format!(
            "{} raw_input_contents for {} inputs: give one per input, in order",
            r.raw_input_contents.len(),
            r.inputs.len()
        )));
    }
    let timeout_us = timeout_param(&r.parameters);
    let mut inputs = Vec::with_capacity(r.inputs.len());
    for (i, t) in r.inputs.into_iter().enumerate() {
        let model_infer_request::InferInputTensor { name, datatype, shape, contents, .. } = t;
        let dt = Datatype::parse(&datatype).ok_or_else(|| {
            bad(format!("input {name}: datatype {datatype} is not supported (BOOL, UINT8, INT8-INT64, FP32, FP64)"))
        })?;
        if shape.len() > codec::MAX_RANK || shape.iter().any(|d| *d < 0) {
            return Err(bad(format!("input {name}: shape {shape:?} is not a shape")));
        }
        let shape: Vec<u64> = shape.iter().map(|d| *d as u64).collect();
        let bytes = Tensor::elements(&shape)
            .and_then(|n| n.checked_mul(dt.size() as u64))
            .ok_or_else(|| bad(format!("input {name}: shape {shape:?} is too large")))?;
        let data = match r.raw_input_contents.get(i) {
            Some(raw) => raw.clone(),
            None => from_contents(&name, dt, &contents.unwrap_or_default())?.into(),
        };
        if data.len() as u64 != bytes {
            return Err(bad(format!(
                "input {name}: shape {shape:?} of {} needs {bytes} bytes, {} given",
                dt.name(),
                data.len()
            )));
        }
        inputs.push(Tensor { name, datatype: dt, shape, data });
    }
    let outputs = r.outputs.into_iter().map(|o| Requested { name: o.name, binary: true }).collect();
    Ok(InferRequest { id: r.id, inputs, outputs, binary_outputs: true, timeout_us })
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: self.0.ready() }))
    }

    async fn model_ready(&self, req: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        let r = req.into_inner();
        let ready = crate::http::model_is_ready(&self.0, &r.name, Some(&r.version));
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "idunno".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec!["binary_tensor_data".into()],
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = req.into_inner();
        let served =
            self.0.model(&r.name).ok_or_else(|| Status::not_found(format!("no served model named {}", r.name)))?;
        let spec = served.spec;
        if !r.version.is_empty() && r.version != spec.model_version.to_string() {
            return Err(Status::not_found(format!(
                "model {} is served at version {}, not {}",
                r.name, spec.model_version, r.version
            )));
        }
        let tensors = |ts: Vec<idunno_state::TensorSpec>| {
            ts.into_iter()
                .map(|t| model_metadata_response::TensorMetadata { name: t.name, datatype: t.datatype, shape: t.shape })
                .collect()
        };
        Ok(Response::new(ModelMetadataResponse {
            name: spec.name,
            versions: vec![spec.model_version.to_string()],
            platform: spec.platform,
            inputs: tensors(spec.inputs),
            outputs: tensors(spec.outputs),
        }))
    }

    async fn model_infer(&self, req: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        let deadline = idunno_rpc::limits::grpc_timeout(req.metadata()).map(|d| Instant::now() + d);
        let r = req.into_inner();
        let (name, version) = (r.model_name.clone(), r.model_version.clone());
        let request = request(r)?;
        let deadline = deadline.or_else(|| Some(Instant::now() + Duration::from_secs(30)));
        let answer = self.0.infer(&name, Some(&version), request, deadline).await.map_err(status)?;
        let mut outputs = Vec::with_capacity(answer.outputs.len());
        let mut raw = Vec::with_capacity(answer.outputs.len());
        for t in answer.outputs {
            outputs.push(model_infer_response::InferOutputTensor {
                name: t.name,
                datatype: t.datatype.name().to_string(),
                shape: t.shape.iter().map(|d| *d as i64).collect(),
                ..Default::default()
            });
            raw.push(t.data);
        }
        Ok(Response::new(ModelInferResponse {
            model_name: answer.model_name,
            model_version: answer.model_version,
            id: answer.id,
            parameters: Default::default(),
            outputs,
            raw_output_contents: raw,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(
        name: &str,
        dt: &str,
        shape: &[i64],
        contents: InferTensorContents,
    ) -> model_infer_request::InferInputTensor {
        model_infer_request::InferInputTensor {
            name: name.into(),
            datatype: dt.into(),
            shape: shape.to_vec(),
            parameters: Default::default(),
            contents: Some(contents),
        }
    }

    #[test]
    fn typed_and_raw_contents_read_the_same_and_bad_ones_are_named() {
        let typed = ModelInferRequest {
            inputs: vec![input(
                "x",
                "FP32",
                &[2],
                InferTensorContents { fp32_contents: vec![1.0, -2.5], ..Default::default() },
            )],
            ..Default::default()
        };
        let a = request(typed).unwrap();
        let raw_bytes: Vec<u8> = [1.0f32, -2.5].iter().flat_map(|v| v.to_le_bytes()).collect();
        let raw = ModelInferRequest {
            inputs: vec![input("x", "FP32", &[2], InferTensorContents::default())],
            raw_input_contents: vec![raw_bytes.clone().into()],
            ..Default::default()
        };
        assert_eq!(request(raw).unwrap().inputs, a.inputs);
        assert_eq!(a.inputs[0].data, raw_bytes);
        let cases = [
            (ModelInferRequest::default(), "1 to 64 inputs"),
            (
                ModelInferRequest {
                    inputs: vec![input(
                        "x",
                        "FP32",
                        &[3],
                        InferTensorContents { fp32_contents: vec![1.0], ..Default::default() },
                    )],
                    ..Default::default()
                },
                "needs 12 bytes, 4 given",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input(
                        "x",
                        "UINT8",
                        &[1],
                        InferTensorContents { uint_contents: vec![256], ..Default::default() },
                    )],
                    ..Default::default()
                },
                "out of range",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("x", "BYTES", &[1], InferTensorContents::default())],
                    ..Default::default()
                },
                "BYTES is not supported",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("x", "FP32", &[-1], InferTensorContents::default())],
                    ..Default::default()
                },
                "not a shape",
            ),
            (
                ModelInferRequest {
                    inputs: vec![input("x", "FP32", &[1], InferTensorContents::default())],
                    raw_input_contents: vec![vec![0u8; 4].into(), vec![0u8; 4].into()],
                    ..Default::default()
                },
                "2 raw_input_contents for 1 inputs",
            ),
        ];
        for (r, want) in cases {
            let e = request(r).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(want), "{:?} should say {want:?}", e.message());
        }
    }
}
