//! Real models on the real ONNX Runtime (fetched by scripts/assets, which
//! the test command runs first).

use idunno_ml::onnx::{MlError, OnnxModel, assets_dir, load_runtime};
use idunno_ml::{DType, Tensor, TensorView};

fn model(name: &str) -> Vec<u8> {
    let p = assets_dir().join("models").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e} (run scripts/assets)", p.display()))
}

#[test]
fn sigmoid_computes_the_logistic_function() {
    let mut m = OnnxModel::load(&model("sigmoid.onnx"), 1).unwrap();
    let x: Vec<f32> = (0..60).map(|i| (i as f32 - 30.0) / 7.0).collect();
    let out = m.run(&[Tensor::from_f32(vec![3, 4, 5], &x)]).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].shape, vec![3, 4, 5]);
    for (xi, yi) in x.iter().zip(out[0].to_f32()) {
        let want = 1.0 / (1.0 + (-xi).exp());
        assert!((yi - want).abs() < 1e-6, "sigmoid({xi}) = {yi}, want {want}");
    }
}

fn ids(rows: &[&[i64]]) -> Vec<Tensor> {
    let seq = rows[0].len();
    let flat: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    vec![
        Tensor::from_i64(vec![rows.len(), seq], &flat),
        Tensor::from_i64(vec![rows.len(), seq], &vec![1; flat.len()]),
        Tensor::from_i64(vec![rows.len(), seq], &vec![0; flat.len()]),
    ]
}

#[test]
fn minilm_embeds_a_batch_like_each_sentence_alone() {
    let mut m = OnnxModel::load(&model("minilm-int8.onnx"), 1).unwrap();
    let names: Vec<&str> = m.inputs().iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec!["input_ids", "attention_mask", "token_type_ids"]);
    // [CLS] hello world [SEP] and [CLS] world hello [SEP] (BERT vocabulary ids).
    let a: &[i64] = &[101, 7592, 2088, 102];
    let b: &[i64] = &[101, 2088, 7592, 102];
    let batch = m.run(&ids(&[a, b])).unwrap();
    assert_eq!(batch[0].shape, vec![2, 4, 384]);
    let v = batch[0].to_f32();
    assert!(v.iter().all(|x| x.is_finite()));
    let alone = m.run(&ids(&[a])).unwrap()[0].to_f32();
    let first_row = &v[..4 * 384];
    let diff = alone.iter().zip(first_row).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-3, "a sentence embeds differently alone and in a batch: {diff}");
    let second_row = &v[4 * 384..];
    let apart = first_row.iter().zip(second_row).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(apart > 1e-2, "different sentences gave the same output");
}

/// The same bytes at an odd address (so not read in place: converted)
/// and at an aligned one (read where they are).
fn misaligned(t: &Tensor) -> (Vec<u8>, usize) {
    let mut buf = vec![0u8; t.data.len() + 16];
    let at = (0..16).find(|i| (buf.as_ptr() as usize + i) % 2 == 1).unwrap();
    buf[at..at + t.data.len()].copy_from_slice(&t.data);
    (buf, at)
}

#[test]
fn inputs_read_in_place_or_converted_give_the_same_answer() {
    let mut m = OnnxModel::load(&model("sigmoid.onnx"), 1).unwrap();
    let v: Vec<f32> = (0..60).map(|i| (i as f32 - 30.0) / 7.0).collect();
    let x = Tensor::from_f32(vec![3, 4, 5], &v);
    let (buf, at) = misaligned(&x);
    let odd = TensorView { dtype: DType::F32, shape: &x.shape, data: &buf[at..at + x.data.len()] };
    assert_eq!(m.run_views(&[odd]).unwrap(), m.run_views(&[x.view()]).unwrap());

    let mut m = OnnxModel::load(&model("minilm-int8.onnx"), 1).unwrap();
    let t = ids(&[&[101, 7592, 2088, 102]]);
    let copies: Vec<(Vec<u8>, usize)> = t.iter().map(misaligned).collect();
    let odd: Vec<TensorView<'_>> = t
        .iter()
        .zip(&copies)
        .map(|(t, (buf, at))| TensorView { dtype: DType::I64, shape: &t.shape, data: &buf[*at..*at + t.data.len()] })
        .collect();
    let aligned: Vec<TensorView<'_>> = t.iter().map(Tensor::view).collect();
    assert_eq!(m.run_views(&odd).unwrap(), m.run_views(&aligned).unwrap());
}

#[test]
fn inputs_that_do_not_fit_are_refused_naming_the_problem() {
    let mut m = OnnxModel::load(&model("sigmoid.onnx"), 1).unwrap();
    let cases: Vec<(Vec<Tensor>, &str)> = vec![
        (vec![], "takes 1 input(s) (x), 0 given"),
        (vec![Tensor::from_f32(vec![3, 4], &[0.0; 12])], "input x has shape [3, 4], the model expects [3, 4, 5]"),
        (vec![Tensor::from_i64(vec![3, 4, 5], &[0; 60])], "input x is int64, the model expects float32"),
    ];
    for (inputs, needle) in cases {
        let err = m.run(&inputs).unwrap_err().to_string();
        assert!(err.contains(needle), "{err:?} should say {needle:?}");
    }
    // A dynamic batch dimension accepts any batch.
    let mut lm = OnnxModel::load(&model("minilm-int8.onnx"), 1).unwrap();
    assert!(lm.inputs()[0].accepts(&[7, 16]) && !lm.inputs()[0].accepts(&[7]));
    let u8_in = vec![Tensor { dtype: DType::U8, shape: vec![1, 2], data: vec![1, 2] }; 3];
    assert!(lm.run(&u8_in).unwrap_err().to_string().contains("is uint8, the model expects int64"));
}

#[test]
fn bytes_that_are_not_a_model_are_refused() {
    for junk in [&b""[..], b"not a model", &[0x08, 0x07, 0xff, 0xff][..]] {
        match OnnxModel::load(junk, 1) {
            Err(MlError::BadModel(msg)) => assert!(!msg.is_empty()),
            Err(other) => panic!("{junk:?}: wrong error {other}"),
            Ok(_) => panic!("{junk:?} loaded as a model"),
        }
    }
}

#[test]
fn a_missing_runtime_library_names_the_variable_to_set() {
    let err = load_runtime(std::path::Path::new("/nonexistent/libonnxruntime.so")).err().unwrap().to_string();
    assert!(err.contains("ORT_DYLIB_PATH") && err.contains("/nonexistent/libonnxruntime.so"), "{err}");
}

/// This process's resident memory, once the allocator has given back
/// what it holds freed.
fn resident_after_trim() -> u64 {
    // SAFETY: malloc_trim only releases free memory.
    unsafe { libc::malloc_trim(0) };
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() << 10
}

#[test]
fn releasing_a_models_memory_gives_back_its_arena_and_changes_no_answer() {
    let mut m = OnnxModel::load(&model("efficientnet-lite0.onnx"), 1).unwrap();
    let photos = idunno_ml::read_array(&std::fs::read(assets_dir().join("datasets/photos/photos.npy")).unwrap());
    let batch = photos.unwrap().rows(0, 8);
    let before = m.run(std::slice::from_ref(&batch)).unwrap();
    m.run(std::slice::from_ref(&batch)).unwrap();
    let busy = resident_after_trim();
    m.release_memory().unwrap();
    let released = resident_after_trim();
    // The arena holds the intermediate tensors of a batch of 8 224×224
    // photos: tens of MiB.
    assert!(busy > released + (24 << 20), "{} MiB before, {} MiB after", busy >> 20, released >> 20);
    let after = m.run(std::slice::from_ref(&batch)).unwrap();
    assert_eq!(before[0].data, after[0].data, "other answers after the release");
    // A model with several integer inputs of free dimensions runs its
    // zeros too.
    let mut text = OnnxModel::load(&model("minilm-int8.onnx"), 1).unwrap();
    text.release_memory().unwrap();
    text.run(&ids(&[&[101, 7592, 102]])).unwrap();
    text.release_memory().unwrap();
}
