//! Print the inputs and outputs of an ONNX model: `cargo run --release -p idunno-ml --example signature -- model.onnx`

fn main() {
    let path = std::env::args().nth(1).expect("usage: signature MODEL.onnx");
    let bytes = std::fs::read(&path).expect("read model");
    match idunno_ml::onnx::OnnxModel::load(&bytes, 1) {
        Ok(m) => {
            for s in m.inputs() {
                println!("input  {} {:?} {:?}", s.name, s.dtype, s.shape);
            }
            for s in m.outputs() {
                println!("output {} {:?} {:?}", s.name, s.dtype, s.shape);
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
