//! The array formats, case by case: real headers as NumPy and the MNIST
//! distribution write them, and malformed files with the error they get.

use idunno_ml::{DType, FormatError, Tensor, idx, npy, read_array};

/// An .npy file exactly as `numpy.save` (format 1.0) writes it.
fn numpy_file(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    numpy_file_ordered(descr, "False", shape, data)
}

fn numpy_file_ordered(descr: &str, fortran: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn npy_files_as_numpy_writes_them() {
    let f: Vec<u8> = [1.5f32, -2.0, 0.25, 8.0, 0.0, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let t = npy::read(&numpy_file("<f4", "(2, 3)", &f)).unwrap();
    assert_eq!((t.dtype, t.shape.clone()), (DType::F32, vec![2, 3]));
    assert_eq!(t.to_f32(), vec![1.5, -2.0, 0.25, 8.0, 0.0, 3.0]);
    assert_eq!(t.rows(1, 5).to_f32(), vec![8.0, 0.0, 3.0]);

    let labels =
        npy::read(&numpy_file("<i8", "(3,)", &[7i64, 0, 9].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>()))
            .unwrap();
    assert_eq!(labels.to_i64(), vec![7, 0, 9]);
    assert_eq!(labels.sample_shape(), &[] as &[usize]);

    let pixels = npy::read(&numpy_file("|u1", "(2, 2, 2)", &[0, 255, 1, 2, 3, 4, 5, 6])).unwrap();
    assert_eq!(pixels.sample_shape(), &[2, 2]);
    assert_eq!(pixels.to_f32()[1], 255.0);

    // Big-endian data is swapped into the tensor's little-endian bytes.
    let be: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|v| v.to_be_bytes()).collect();
    assert_eq!(npy::read(&numpy_file(">f4", "(2,)", &be)).unwrap().to_f32(), vec![1.0, 2.0]);

    // A scalar has shape ().
    let s = npy::read(&numpy_file("<f8", "()", &2.5f64.to_le_bytes())).unwrap();
    assert_eq!((s.shape.len(), s.to_f32()), (0, vec![2.5]));
}

#[test]
fn npy_round_trip() {
    for t in [
        Tensor::from_f32(vec![2, 2], &[1.0, 2.0, 3.0, 4.0]),
        Tensor::from_i64(vec![3], &[-1, 0, 1]),
        Tensor { dtype: DType::U8, shape: vec![1, 28, 28], data: vec![9; 784] },
    ] {
        let bytes = npy::write(&t);
        assert_eq!((10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize) % 64, 0, "aligned like numpy");
        assert_eq!(read_array(&bytes).unwrap(), t);
    }
}

#[test]
fn bad_npy_files_say_what_is_wrong() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"PK\x03\x04 a zip".to_vec(), "an .npy or IDX array"),
        (b"\x93NUMPY\x09\x00".to_vec(), "unsupported npy version: 9"),
        (numpy_file("<c8", "(1,)", &[0; 8]), "unsupported npy dtype: <c8"),
        (numpy_file("<f4", "(2, 3)", &[0; 20]), "describes 24 bytes of data but 20 follow"),
        (numpy_file("<f4", "(2, x)", &[0; 8]), "non-integer"),
        (b"\x93NUMPY\x01\x00\xff\x00{'descr'".to_vec(), "ends inside the header"),
    ];
    for (bytes, needle) in cases {
        let err = read_array(&bytes).unwrap_err().to_string();
        assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    }
    let fortran = numpy_file_ordered("<f4", "True", "(1,)", &[0; 4]);
    assert_eq!(
        npy::read(&fortran).unwrap_err(),
        FormatError::Unsupported { what: "npy memory order", value: "Fortran".into() }
    );
}

#[test]
fn idx_as_mnist_ships_it() {
    // Two 2x3 images of u8, and labels; dims big-endian.
    let mut images = vec![0, 0, 0x08, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3];
    images.extend(1..=12u8);
    let t = idx::read(&images).unwrap();
    assert_eq!((t.dtype, t.shape.clone()), (DType::U8, vec![2, 2, 3]));
    assert_eq!(t.rows(1, 1).data, (7..=12).collect::<Vec<u8>>());
    let labels = read_array(&[0, 0, 0x08, 1, 0, 0, 0, 3, 5, 0, 4]).unwrap();
    assert_eq!(labels.to_i64(), vec![5, 0, 4]);
    // Big-endian f32 elements come out right.
    let mut f = vec![0, 0, 0x0D, 1, 0, 0, 0, 2];
    f.extend(1.5f32.to_be_bytes());
    f.extend((-3.0f32).to_be_bytes());
    assert_eq!(idx::read(&f).unwrap().to_f32(), vec![1.5, -3.0]);
}

#[test]
fn bad_idx_files_say_what_is_wrong() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0, 0, 0x07, 1, 0, 0, 0, 1, 0], "unsupported IDX type code: 0x07"),
        (vec![0, 0, 0x08, 3, 0, 0, 0, 1], "ends inside its 3 dimensions"),
        (vec![0, 0, 0x08, 1, 0, 0, 0, 5, 1, 2], "describes 5 bytes of data but 2 follow"),
    ];
    for (bytes, needle) in cases {
        let err = idx::read(&bytes).unwrap_err().to_string();
        assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    }
}
