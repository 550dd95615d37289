//! The real MNIST (converted by scripts/assets) and Fashion-MNIST (from
//! Debian's package) through the IDX reader.

use idunno_ml::onnx::assets_dir;
use idunno_ml::{DType, read_array};

fn load(name: &str) -> idunno_ml::Tensor {
    load_from("mnist", name)
}

fn load_from(set: &str, name: &str) -> idunno_ml::Tensor {
    let p = assets_dir().join("datasets").join(set).join(name);
    let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e} (run scripts/assets)", p.display()));
    read_array(&bytes).unwrap()
}

#[test]
fn mnist_reads_as_the_well_known_data_set() {
    let train = load("train-images-idx3-ubyte");
    let train_labels = load("train-labels-idx1-ubyte");
    let test = load("t10k-images-idx3-ubyte");
    let test_labels = load("t10k-labels-idx1-ubyte");
    assert_eq!((train.dtype, train.shape.clone()), (DType::U8, vec![60000, 28, 28]));
    assert_eq!(test.shape, vec![10000, 28, 28]);
    assert_eq!((train_labels.shape.clone(), test_labels.shape.clone()), (vec![60000], vec![10000]));
    let y = train_labels.to_i64();
    let t = test_labels.to_i64();
    // Facts anyone who has used MNIST knows: the first training digit is a
    // 5, the first test digit a 7; there are 6742 ones among the training
    // digits and 1135 in the test set.
    assert_eq!((y[0], t[0]), (5, 7));
    assert_eq!(y.iter().filter(|v| **v == 1).count(), 6742);
    assert_eq!(t.iter().filter(|v| **v == 1).count(), 1135);
    assert!(y.iter().chain(&t).all(|v| (0..10).contains(v)));
    // Pixels span the full byte range, the border is blank.
    assert_eq!(train.data.iter().max(), Some(&255));
    let first = train.rows(0, 1);
    assert_eq!(first.data[..28].iter().map(|p| u32::from(*p)).sum::<u32>(), 0);
}

#[test]
fn fashion_mnist_reads_as_the_well_known_data_set() {
    let train = load_from("fashion-mnist", "train-images-idx3-ubyte");
    let train_labels = load_from("fashion-mnist", "train-labels-idx1-ubyte").to_i64();
    let test_labels = load_from("fashion-mnist", "t10k-labels-idx1-ubyte").to_i64();
    assert_eq!((train.dtype, train.shape.clone()), (DType::U8, vec![60000, 28, 28]));
    assert_eq!(load_from("fashion-mnist", "t10k-images-idx3-ubyte").shape, vec![10000, 28, 28]);
    // Balanced classes: 6000 of each of the 10 in training, 1000 in test;
    // the first training item is an ankle boot (9), the first test one too.
    for class in 0..10 {
        assert_eq!(train_labels.iter().filter(|v| **v == class).count(), 6000);
        assert_eq!(test_labels.iter().filter(|v| **v == class).count(), 1000);
    }
    assert_eq!((train_labels[0], test_labels[0]), (9, 9));
}
