//! Property fuzzing of every decoder of files a user hands the cluster:
//! `.npy`, IDX, trained models and checkpoints (safetensors), and tensors
//! made from them. Inputs are built around real headers with hostile
//! fields (shapes whose product overflows, multi-byte descr, header
//! lengths past the end) and then mutated byte by byte.
//!
//! The properties: no input panics; a decoded tensor's data matches its
//! shape exactly; and decoding allocates at most [`bound`] bytes, whatever
//! the file declares. CI runs proptest's default number of cases; the long
//! run is `PROPTEST_CASES=1000000 cargo test --release -p idunno-ml --test
//! fuzz` (figures in docs/limits.md).

use idunno_ml::onnx::Signature;
use idunno_ml::trained::{Arch, Checkpoint, Net, ServedModel, Shape};
use idunno_ml::{DType, Tensor, idx, npy, read_array, shapes};
use idunno_testkit::alloc::{Counting, peak_during};
use proptest::prelude::*;

#[global_allocator]
static ALLOC: Counting = Counting;

/// The most a decoder may allocate for an input of `len` bytes: a copy of
/// the data and its conversion, plus a constant for headers and messages.
fn bound(len: usize) -> usize {
    4 * len + (1 << 20)
}

/// Mutations applied to a well-formed file: (position as a fraction of
/// the length, new byte), and how much to cut from the end.
fn mutations() -> impl Strategy<Value = (Vec<(f64, u8)>, usize)> {
    (prop::collection::vec((0.0..1.0f64, any::<u8>()), 0..4), prop_oneof![4 => Just(0usize), 1 => 0..64usize])
}

fn mutate(mut bytes: Vec<u8>, (flips, cut): &(Vec<(f64, u8)>, usize)) -> Vec<u8> {
    for (at, b) in flips {
        if !bytes.is_empty() {
            let i = ((bytes.len() as f64) * at) as usize % bytes.len();
            bytes[i] = *b;
        }
    }
    let keep = bytes.len().saturating_sub(*cut);
    bytes.truncate(keep);
    bytes
}

/// A dimension: mostly small, sometimes huge (products that overflow).
fn dim() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0..5u64,
        1 => Just(u32::MAX as u64 + 1),
        1 => Just(u64::MAX),
        1 => Just(1u64 << 62),
        1 => any::<u64>(),
    ]
}

fn descr() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "<f4",
            "|u1",
            ">i8",
            "<i4",
            "<f8",
            "|i1",
            ">f4",
            "<c8",
            "",
            "<",
            "é4",
            "ü",
            "<f4\u{301}"
        ])
        .prop_map(String::from),
        "\\PC{0,6}",
    ]
}

fn npy_file() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec![1u8, 2, 3, 9]),
        descr(),
        prop::sample::select(vec!["False", "True", "0"]),
        prop::collection::vec(dim(), 0..6),
        prop::collection::vec(any::<u8>(), 0..96),
        prop_oneof![8 => Just(None), 1 => any::<u32>().prop_map(Some)],
        mutations(),
    )
        .prop_map(|(major, descr, fortran, shape, data, header_len, muts)| {
            let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
            let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
            let header = format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}\n");
            let mut out = b"\x93NUMPY".to_vec();
            out.extend([major, 0]);
            let len = header_len.unwrap_or(header.len() as u32);
            if major == 1 {
                out.extend((len as u16).to_le_bytes());
            } else {
                out.extend(len.to_le_bytes());
            }
            out.extend(header.as_bytes());
            out.extend(data);
            mutate(out, &muts)
        })
}

fn idx_file() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec![0x08u8, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x07, 0xFF]),
        prop_oneof![8 => 0..5u8, 1 => any::<u8>()],
        prop::collection::vec(prop_oneof![6 => 0..5u32, 1 => any::<u32>()], 0..40),
        prop::collection::vec(any::<u8>(), 0..96),
        mutations(),
    )
        .prop_map(|(code, ndims, dims, data, muts)| {
            let mut out = vec![0, 0, code, ndims];
            for d in dims.iter().take(ndims as usize) {
                out.extend(d.to_be_bytes());
            }
            out.extend(data);
            mutate(out, &muts)
        })
}

/// Checks a decoded tensor holds exactly what its shape says.
fn consistent(t: &Tensor) -> Result<(), TestCaseError> {
    let n = idunno_ml::limits::elements(&t.shape).and_then(|n| n.checked_mul(t.dtype.size()));
    prop_assert_eq!(n, Some(t.data.len()), "shape {:?} of {}", t.shape, t.dtype);
    Ok(())
}

fn decode_checked(
    bytes: &[u8],
    decode: impl FnOnce(&[u8]) -> Result<Tensor, idunno_ml::FormatError>,
) -> Result<(), TestCaseError> {
    let (result, peak) = peak_during(|| decode(bytes));
    prop_assert!(peak <= bound(bytes.len()), "{peak} bytes allocated for a {}-byte input", bytes.len());
    match result {
        Ok(t) => consistent(&t),
        Err(e) => {
            prop_assert!(!e.to_string().is_empty());
            Ok(())
        }
    }
}

/// A small real model or checkpoint file, with its metadata values
/// replaced by hostile ones at random.
fn model_file() -> impl Strategy<Value = Vec<u8>> {
    let hostile = prop_oneof![
        Just(String::from("1000000000000")),
        Just(String::from("18446744073709551615")),
        Just(",".repeat(1000)),
        Just(String::from("28,28")),
        Just(String::from("1,4,4")),
        Just(String::from("cnn")),
        Just(String::from("float32")),
        "\\PC{0,8}",
    ];
    (
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(
            (prop::sample::select(vec!["sample_shape", "classes", "arch", "input_dtype", "format", "step"]), hostile),
            0..3,
        ),
        mutations(),
    )
        .prop_map(|(cnn, checkpoint, overrides, muts)| {
            let arch = if cnn { Arch::Cnn } else { Arch::Mlp };
            let shape = Shape::new(arch, &[4, 4], 3, DType::U8).expect("a valid toy shape");
            let net = Net::init(shape.clone(), 7).expect("init");
            let file = if checkpoint {
                let params = net.params().expect("params");
                let c = Checkpoint {
                    shape,
                    step: 3,
                    adam: idunno_ml::trained::Adam::new(0.001, params.len()),
                    params,
                    notes: Default::default(),
                };
                c.to_bytes().expect("checkpoint")
            } else {
                net.to_model_file().expect("model file")
            };
            mutate(with_metadata(&file, &overrides), &muts)
        })
}

/// `file` (safetensors) with some metadata values replaced.
fn with_metadata(file: &[u8], overrides: &[(&str, String)]) -> Vec<u8> {
    let st = safetensors::SafeTensors::deserialize(file).expect("our own file");
    let (_, header) = safetensors::SafeTensors::read_metadata(file).expect("our own file");
    let mut meta = header.metadata().clone().unwrap_or_default();
    for (k, v) in overrides {
        meta.insert(k.to_string(), v.clone());
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> =
        st.tensors().into_iter().map(|(n, v)| (n.to_string(), v)).collect();
    safetensors::serialize(views, Some(meta)).expect("serialize")
}

proptest! {
    #[test]
    fn npy_decoder(bytes in npy_file()) {
        decode_checked(&bytes, npy::read)?;
    }

    #[test]
    fn idx_decoder(bytes in idx_file()) {
        decode_checked(&bytes, idx::read)?;
    }

    #[test]
    fn any_bytes_as_an_array(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        decode_checked(&bytes, read_array)?;
    }

    #[test]
    fn trained_model_and_checkpoint_loaders(bytes in model_file()) {
        let (loaded, peak) = peak_during(|| ServedModel::load(&bytes, 1).map(|_| ()));
        prop_assert!(peak <= bound(bytes.len()), "{peak} bytes allocated loading a {}-byte model", bytes.len());
        if let Err(e) = loaded {
            prop_assert!(!e.to_string().is_empty());
        }
        let (_, peak) = peak_during(|| Checkpoint::from_bytes(&bytes).map(|_| ()));
        prop_assert!(peak <= bound(bytes.len()), "{peak} bytes allocated reading a {}-byte checkpoint", bytes.len());
    }

    /// Tensors built inconsistently by hand (shape and data disagree), cut
    /// into rows and fitted to random model inputs: no panic, and a fitted
    /// batch holds exactly what its shape says.
    #[test]
    fn tensors_rows_and_fitting(
        shape in prop::collection::vec(prop_oneof![4 => 0..6usize, 1 => Just(usize::MAX)], 0..4),
        data_len in 0..200usize,
        start in 0..8usize,
        count in prop_oneof![4 => 0..8usize, 1 => Just(usize::MAX)],
        model in prop::collection::vec(prop_oneof![3 => 1..6i64, 1 => Just(-1i64)], 0..4),
        to_i64 in any::<bool>(),
        perm in prop::collection::vec(0..4usize, 0..4),
    ) {
        let t = Tensor { dtype: DType::U8, shape, data: vec![1; data_len] };
        let rows = t.rows(start, count);
        prop_assert!(rows.data.len() <= t.data.len());
        if let Ok(p) = rows.permute_samples(&perm) {
            consistent(&p)?;
            prop_assert_eq!(p.data.len(), rows.data.len());
        }
        let dtype = Some(if to_i64 { DType::I64 } else { DType::F32 });
        let sig = Signature { name: "x".into(), dtype, shape: model };
        if idunno_ml::limits::elements(&rows.shape).and_then(|n| n.checked_mul(1)) == Some(rows.data.len())
            && let Ok(fitted) = shapes::fit(&sig, rows)
        {
            consistent(&fitted)?;
        }
    }
}
