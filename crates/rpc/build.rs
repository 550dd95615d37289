//! Generates the protocol code. protoc comes from the protoc-bin-vendored
//! crate so that building needs no system package.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    // File bytes and tensors as `bytes::Bytes`: a chunk fanned out to four
    // replicas, or a request's tensor on its way to a worker, is shared,
    // not copied.
    config.bytes([
        ".idunno.v1.Chunk.data",
        ".idunno.v1.PutMessage.data",
        ".idunno.v1.GetMessage.data",
        ".idunno.v1.QueryResult.outputs",
        ".idunno.v1.RawTensor.data",
        ".inference.ModelInferRequest.raw_input_contents",
        ".inference.ModelInferResponse.raw_output_contents",
    ]);
    tonic_prost_build::configure().compile_with_config(
        config,
        &[
            "proto/idunno/v1/node.proto",
            "proto/idunno/v1/coordinator.proto",
            "proto/idunno/v1/sdfs.proto",
            "proto/idunno/v1/jobs.proto",
            "proto/inference/grpc_service.proto",
        ],
        &["proto"],
    )?;
    Ok(())
}
