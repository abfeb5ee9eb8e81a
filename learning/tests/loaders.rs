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
    DataSource::parse(text, label).and_then(|s| s.load(None)).map_err(|e| e.to_string())
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
    npy_in_order(descr, "False", shape, data)
}

/// A `.npy` file; `fortran` is `True` for column-major data.
fn npy_in_order(descr: &str, fortran: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}");
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
    assert!(error.contains("s.npy") && error.contains("before reading all data"), "{error}");
    let flat = write(dir.path(), "flat.npy", &npy("<f4", "(6,)", &values));
    let error = load(&format!("{},{}", flat.display(), labels.display()), None).unwrap_err();
    assert!(error.contains("flat.npy: features must be a 2-D array"), "{error}");
    let not_npy = write(dir.path(), "n.npy", b"hello world, not numpy");
    let error = load(&format!("{},{}", not_npy.display(), labels.display()), None).unwrap_err();
    assert!(error.contains("n.npy: not a readable .npy file"), "{error}");
    // A Fortran-order array (as NumPy writes a transposed view) reads in its logical order.
    let fortran: Vec<u8> = [1.0f64, 3.0, 2.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let f_order = write(dir.path(), "f.npy", &npy_in_order("<f8", "True", "(2, 2)", &fortran));
    let two = write(dir.path(), "y2.npy", &npy("<i8", "(2,)", &labels_bytes[..16]));
    let data = load(&format!("{},{}", f_order.display(), two.display()), None).unwrap();
    assert_eq!(data.features.row(0).to_vec(), vec![1.0, 2.0]);
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

#[test]
fn csv_quoting_text_labels_and_header_detection() {
    let dir = tempfile::tempdir().unwrap();
    let text = "\"sepal, length\",width,species\n5.1,3.5,setosa\n\"6.3\",2.9,\"virginica\"\n\n\
                5.9,3.0,versicolor\n4.9,3.1,setosa\n";
    let path = write(dir.path(), "iris.csv", text.as_bytes());
    let data = load(path.to_str().unwrap(), Some("species")).unwrap();
    assert_eq!(data.classes, vec!["setosa", "versicolor", "virginica"]);
    assert_eq!(data.labels, vec![0, 2, 1, 0]);
    assert_eq!(data.features.row(1).to_vec(), vec![6.3, 2.9]);
    // Without a header, text labels in the last column are not mistaken for one.
    let headless = write(dir.path(), "headless.csv", b"5.1,3.5,setosa\n6.3,2.9,virginica\n");
    let data = load(headless.to_str().unwrap(), None).unwrap();
    assert_eq!((data.len(), data.labels.clone()), (2, vec![0, 1]));
    let error = load(path.to_str().unwrap(), Some("width")).unwrap_err();
    assert!(error.contains("column 3 (`species`): `setosa` is not a number"), "{error}");
}

#[test]
fn a_jobs_classes_fix_the_mapping_of_a_share_that_lacks_some() {
    use fedmesh_learning::labels::class_number;
    use fedmesh_protocol::spec::Classes;
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "share.csv", b"1,2,virginica\n3,4,virginica\n");
    let names = Classes::Names(["setosa", "versicolor", "virginica"].map(String::from).to_vec());
    let source = DataSource::parse(path.to_str().unwrap(), None).unwrap();
    let data = source.load(Some(&names)).unwrap();
    assert_eq!((data.labels.clone(), data.num_classes), (vec![2, 2], 3));
    let error = source.load(Some(&Classes::Count(3))).unwrap_err().to_string();
    assert!(error.contains("`virginica` is not a class number"), "{error}");
    let digits = DataSource::parse("breast-cancer", None).unwrap();
    assert_eq!(digits.load(Some(&Classes::Count(5))).unwrap().num_classes, 5);
    assert_eq!(class_number("2.0"), Some(2));
}

#[test]
fn a_named_label_column_comes_from_a_datasets_setting() {
    let source = DataSource::from_setting("/srv/iris.csv#species").unwrap();
    assert_eq!(source.label_column(), Some("species"));
    assert_eq!(source.name(), "/srv/iris.csv");
    assert_eq!(source.missing_files(), vec![PathBuf::from("/srv/iris.csv")]);
    assert!(DataSource::from_setting("digits").unwrap().missing_files().is_empty());
}

#[test]
fn a_partition_with_class_names_reads_back_with_its_names() {
    let dir = tempfile::tempdir().unwrap();
    let source = write(dir.path(), "s.csv", b"a,b,kind\n1,2,\"x, y\"\n3,4,z\n");
    let data = load(source.to_str().unwrap(), Some("kind")).unwrap();
    let path = dir.path().join("part.csv");
    write_csv(&data, &path).unwrap();
    assert_eq!(load(path.to_str().unwrap(), None).unwrap(), data);
}
