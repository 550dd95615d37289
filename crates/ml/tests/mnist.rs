//! Training on the real MNIST in one process: the reference the
//! data-parallel training is compared with. (The CNN to 98.5% takes
//! minutes: bench/training measures it, beside the cluster.)

use std::sync::Arc;

use idunno_ml::trained::{Arch, DataSet, Shape, Trainer};

fn load(name: &str) -> idunno_ml::Tensor {
    let p = idunno_ml::onnx::assets_dir().join("datasets/mnist").join(name);
    let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e} (scripts/assets fetches it)", p.display()));
    idunno_ml::read_array(&bytes).unwrap()
}

fn mnist(kind: &str) -> DataSet {
    DataSet::new(
        load(&format!("{kind}-images-idx3-ubyte")),
        &load(&format!("{kind}-labels-idx1-ubyte")),
        "images",
        "labels",
    )
    .unwrap()
}

fn train(arch: Arch, epochs: u64, batch: usize, lr: f32) -> f64 {
    let data = Arc::new(mnist("train"));
    let test = mnist("t10k");
    let shape = Shape::new(arch, &data.sample, data.classes(), data.dtype).unwrap();
    let mut t = Trainer::new(shape, data, batch, lr, 1).unwrap();
    let steps = t.steps_per_epoch() * epochs;
    let started = std::time::Instant::now();
    while t.step < steps {
        let g = t.shard_grads(0, 1).unwrap();
        t.apply(&g.grads).unwrap();
    }
    let (_, right) = t.net.evaluate(&test, 0..test.len()).unwrap();
    let acc = right as f64 / test.len() as f64;
    eprintln!("{arch:?}: {epochs} epoch(s) in {:.1} s, test accuracy {acc:.4}", started.elapsed().as_secs_f64());
    acc
}

#[test]
fn an_mlp_learns_mnist_in_one_epoch() {
    let acc = train(Arch::Mlp, 1, 64, 1e-3);
    assert!(acc > 0.9, "test accuracy {acc}");
}
