//! Loaders: each format reads what it should, and each kind of bad file gets an error that names
//! the file and the problem.

use fedmesh_learning::formats::write_csv;
use fedmesh_learning::{DataSource, Dataset};
use std::io::Write;
use std::path::{Path, PathBuf};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn load(text: &str, label: Option<&str>) -> Result<Dataset, String> {
    DataSource::parse(text, label).and_then(|s| s.load()).map_err(|e| e.to_string())
}

#[test]
fn embedded_data_sets_have_their_documented_shapes() {
    for (name, rows, features, classes) in
        [("mnist5k", 5000, 784, 10), ("digits", 1797, 64, 10), ("breast-cancer", 569, 30, 2)]
    {
        let data = load(name, None).unwrap();
        assert_eq!(
            (data.len(), data.num_features(), data.num_classes),
            (rows, features, classes),
            "{name}"
        );
    }
}

#[test]
fn csv_with_a_header_and_a_named_label_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "d.csv", b"a,label,b\n1,0,2\n3,1,4\n5,1,6\n");
    let data = load(path.to_str().unwrap(), Some("label")).unwrap();
    assert_eq!(data.labels, vec![0, 1, 1]);
    assert_eq!(data.features.row(2).to_vec(), vec![5.0, 6.0]);
    let by_index = load(path.to_str().unwrap(), Some("1")).unwrap();
    assert_eq!(by_index, data);
}

#[test]
fn a_written_partition_reads_back_identically() {
    let dir = tempfile::tempdir().unwrap();
    let data = load("digits", None).unwrap().select(&[0, 5, 9, 100]);
    let path = dir.path().join("part.csv");
    write_csv(&data, &path).unwrap();
    let mut back = load(path.to_str().unwrap(), None).unwrap();
    back.num_classes = data.num_classes;
    assert_eq!(back, data);
}

fn idx(magic_type: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 0, magic_type, dims.len() as u8];
    for d in dims {
        bytes.extend_from_slice(&d.to_be_bytes());
    }
    bytes.extend_from_slice(data);
    bytes
}

#[test]
fn idx_pairs_load_and_bad_idx_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let images = write(dir.path(), "img.idx", &idx(8, &[2, 2, 2], &[0, 1, 2, 3, 4, 5, 6, 7]));
    let labels = write(dir.path(), "lab.idx", &idx(8, &[2], &[3, 1]));
    let pair = format!("{},{}", images.display(), labels.display());
    let data = load(&pair, None).unwrap();
    assert_eq!(data.labels, vec![3, 1]);
    assert_eq!(data.features.row(1).to_vec(), vec![4.0, 5.0, 6.0, 7.0]);

    let wrong_magic = write(dir.path(), "bad.idx", b"\x01\x02\x08\x01\x00\x00\x00\x01\x05");
    let error = load(&format!("{},{}", images.display(), wrong_magic.display()), None).unwrap_err();
    assert!(error.contains("bad.idx") && error.contains("magic"), "{error}");
    let truncated = write(dir.path(), "short.idx", &idx(8, &[2, 2, 2], &[0, 1, 2]));
    let error = load(&format!("{},{}", truncated.display(), labels.display()), None).unwrap_err();
    assert!(error.contains("short.idx") && error.contains("promises 8 bytes"), "{error}");
}

fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

#[test]
fn npy_pairs_load_and_bad_npy_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let values: Vec<u8> =
        [1.5f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let features = write(dir.path(), "x.npy", &npy("<f4", "(3, 2)", &values));
    let labels_bytes: Vec<u8> = [0i64, 2, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
    let labels = write(dir.path(), "y.npy", &npy("<i8", "(3,)", &labels_bytes));
    let data = load(&format!("{},{}", features.display(), labels.display()), None).unwrap();
    assert_eq!(data.labels, vec![0, 2, 1]);
    assert_eq!(data.features.row(0).to_vec(), vec![1.5, 2.0]);

    let complex = write(dir.path(), "c.npy", &npy("<c8", "(3, 2)", &[0; 48]));
    let error = load(&format!("{},{}", complex.display(), labels.display()), None).unwrap_err();
    assert!(error.contains("c.npy") && error.contains("not supported"), "{error}");
    let short = write(dir.path(), "s.npy", &npy("<f4", "(3, 2)", &values[..8]));
    let error = load(&format!("{},{}", short.display(), labels.display()), None).unwrap_err();
    assert!(error.contains("s.npy") && error.contains("needs 24 bytes"), "{error}");
    let flat = write(dir.path(), "flat.npy", &npy("<f4", "(6,)", &values));
    let error = load(&format!("{},{}", flat.display(), labels.display()), None).unwrap_err();
    assert!(error.contains("must be 2-D"), "{error}");
    let not_npy = write(dir.path(), "n.npy", b"hello world, not numpy");
    assert!(
        load(&format!("{},{}", not_npy.display(), labels.display()), None)
            .unwrap_err()
            .contains("magic")
    );
}

#[test]
fn each_kind_of_bad_csv_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8], &str); 6] = [
        ("ragged.csv", b"1,2,0\n3,4\n", "line 2: 2 columns"),
        ("text.csv", b"1,2,0\n3,x,1\n", "line 2: column 2: `x` is not a number"),
        ("label.csv", b"1,2,0.5\n", "not a class number"),
        ("empty.csv", b"", "no data rows"),
        ("header-only.csv", b"a,b,c\n", "no data rows"),
        ("binary.csv", b"\xff\xfe\x00", "not UTF-8"),
    ];
    for (name, bytes, expected) in cases {
        let path = write(dir.path(), name, bytes);
        let error = load(path.to_str().unwrap(), None).unwrap_err();
        assert!(error.contains(name) && error.contains(expected), "{name}: {error}");
    }
    let path = write(dir.path(), "ok.csv", b"a,b\n1,0\n");
    assert!(
        load(path.to_str().unwrap(), Some("nope")).unwrap_err().contains("no column named `nope`")
    );
    assert!(load(path.to_str().unwrap(), Some("9")).unwrap_err().contains("does not exist"));
    let missing = dir.path().join("missing.csv");
    assert!(load(missing.to_str().unwrap(), None).unwrap_err().contains("missing.csv"));
    assert!(load("no-such-dataset", None).unwrap_err().contains("unknown data set"));
    let gz = write(dir.path(), "bad.csv.gz", b"not gzip");
    assert!(load(gz.to_str().unwrap(), None).unwrap_err().contains("gzip"));
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(b"1,2,1\n3,4,0\n").unwrap();
    let good_gz = write(dir.path(), "good.csv.gz", &encoder.finish().unwrap());
    assert_eq!(load(good_gz.to_str().unwrap(), None).unwrap().labels, vec![1, 0]);
}
