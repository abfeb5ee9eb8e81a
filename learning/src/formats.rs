//! File formats: CSV (header detected, label column chosen), MNIST IDX and NumPy `.npy`, each
//! read with a clear error for every kind of bad file; and writing a data set back out as CSV.

use crate::data::Dataset;
use crate::error::{LearningError, Result};
use crate::labels;
use fedmesh_protocol::spec::Classes;
use flate2::read::GzDecoder;
use ndarray::{Array, Array2, Dimension, Ix1, Ix2};
use ndarray_npy::{ReadNpyError, ReadNpyExt, ReadableElement};
use std::io::Read;
use std::path::Path;

fn bad_file(path: &Path, problem: impl Into<String>) -> LearningError {
    LearningError::BadFile { path: path.to_owned(), problem: problem.into() }
}

/// Decompresses gzip bytes.
pub fn gunzip(path: &Path, bytes: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .map_err(|e| bad_file(path, format!("not a valid gzip file: {e}")))?;
    Ok(out)
}

/// Reads a file, decompressing it when its name ends in `.gz`.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path)
        .map_err(|source| LearningError::Io { path: path.to_owned(), source })?;
    if path.extension().is_some_and(|e| e == "gz") { gunzip(path, &bytes) } else { Ok(bytes) }
}

/// Parses CSV (RFC 4180 quoting, blank lines skipped). The first row is a header when it names
/// the label column or has text where the next row has a number; the label column is
/// `label_column` (0-based index or header name) or the last. Labels become classes as
/// [`labels::assign`] says, by the job's `classes` when given.
pub fn parse_csv(
    path: &Path,
    bytes: &[u8],
    label_column: Option<&str>,
    classes: Option<&Classes>,
) -> Result<Dataset> {
    let mut rows = read_rows(path, bytes)?;
    let header = is_header(&rows, label_column).then(|| rows.remove(0).1);
    let (first_line, first) = rows.first().ok_or_else(|| bad_file(path, "no data rows"))?;
    let width = first.len();
    if width < 2 {
        return Err(bad_line(path, *first_line, "a row needs at least one feature and a label"));
    }
    let label_at = resolve_label_column(path, label_column, header.as_ref(), width)?;
    let mut values = Vec::with_capacity(rows.len() * (width - 1));
    let mut label_cells = Vec::with_capacity(rows.len());
    for (line, row) in &rows {
        if row.len() != width {
            let problem = format!("{} columns, but earlier rows have {width}", row.len());
            return Err(bad_line(path, *line, problem));
        }
        for (column, cell) in row.iter().enumerate() {
            if column == label_at {
                label_cells.push(cell.to_owned());
                continue;
            }
            let value: f64 = cell.parse().map_err(|_| {
                let name = column_name(header.as_ref(), column);
                bad_line(
                    path,
                    *line,
                    format!("column {}{name}: `{cell}` is not a number", column + 1),
                )
            })?;
            values.push(value as f32);
        }
    }
    let assigned = labels::assign(&label_cells, classes).map_err(|problem| {
        let name = column_name(header.as_ref(), label_at);
        bad_file(path, format!("label column {}{name}: {problem}", label_at + 1))
    })?;
    let features = Array2::from_shape_vec((label_cells.len(), width - 1), values)
        .map_err(|e| bad_file(path, e.to_string()))?;
    Dataset::labelled(features, assigned, path)
}

fn bad_line(path: &Path, line: u64, problem: impl Into<String>) -> LearningError {
    LearningError::BadLine { path: path.to_owned(), line: line as usize, problem: problem.into() }
}

/// Every non-blank record with its line number, cells trimmed.
fn read_rows(path: &Path, bytes: &[u8]) -> Result<Vec<(u64, csv::StringRecord)>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(bytes);
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|error| {
            let line = error.position().map_or(0, csv::Position::line);
            match error.kind() {
                csv::ErrorKind::Utf8 { .. } => bad_line(path, line, "not UTF-8 text"),
                _ => bad_line(path, line, error.to_string()),
            }
        })?;
        let line = record.position().map_or(0, csv::Position::line);
        if record.iter().any(|cell| !cell.is_empty()) {
            rows.push((line, record));
        }
    }
    Ok(rows)
}

/// Whether the first row is a header: it holds the named label column, or a column holds text in
/// the first row and a number in the second (labels may be text in every row).
fn is_header(rows: &[(u64, csv::StringRecord)], label_column: Option<&str>) -> bool {
    let Some((_, first)) = rows.first() else { return false };
    let is_number = |cell: &str| cell.parse::<f64>().is_ok();
    let named = label_column
        .filter(|name| name.parse::<usize>().is_err())
        .is_some_and(|name| first.iter().any(|cell| cell == name));
    match rows.get(1) {
        _ if named => true,
        Some((_, second)) => {
            first.iter().zip(second.iter()).any(|(a, b)| !is_number(a) && is_number(b))
        }
        None => first.iter().all(|cell| !is_number(cell)),
    }
}

/// ` (`name`)` for a column the header names, else nothing.
fn column_name(header: Option<&csv::StringRecord>, column: usize) -> String {
    header.and_then(|h| h.get(column)).map_or_else(String::new, |name| format!(" (`{name}`)"))
}

fn resolve_label_column(
    path: &Path,
    wanted: Option<&str>,
    header: Option<&csv::StringRecord>,
    width: usize,
) -> Result<usize> {
    let Some(wanted) = wanted else { return Ok(width - 1) };
    if let Ok(index) = wanted.parse::<usize>() {
        return if index < width {
            Ok(index)
        } else {
            Err(bad_file(
                path,
                format!("label column {index} does not exist: rows have {width} columns"),
            ))
        };
    }
    let Some(names) = header else {
        return Err(bad_file(
            path,
            format!("no header row names a column `{wanted}`; give the label column's index"),
        ));
    };
    names.iter().position(|name| name == wanted).ok_or_else(|| {
        let known: Vec<&str> = names.iter().collect();
        bad_file(path, format!("no column named `{wanted}` in the header ({})", known.join(", ")))
    })
}

/// Reads an MNIST IDX pair: `idx3` unsigned-byte images and `idx1` labels.
pub fn load_idx(images: &Path, labels: &Path) -> Result<Dataset> {
    let (image_dims, pixels) = read_idx(images)?;
    let (label_dims, label_bytes) = read_idx(labels)?;
    if image_dims.len() < 2 {
        return Err(bad_file(images, "an images file needs at least 2 dimensions"));
    }
    if label_dims.len() != 1 {
        return Err(bad_file(labels, "a labels file must have exactly 1 dimension"));
    }
    let rows = image_dims[0];
    let features = Array2::from_shape_vec(
        (rows, pixels.len() / rows.max(1)),
        pixels.iter().map(|&p| f32::from(p)).collect(),
    )
    .map_err(|e| bad_file(images, e.to_string()))?;
    Dataset::new(features, label_bytes.iter().map(|&l| usize::from(l)).collect(), labels)
}

fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let bytes = read_maybe_gz(path)?;
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad_file(path, "not an IDX file (wrong magic number)"));
    }
    if bytes[2] != 0x08 {
        return Err(bad_file(
            path,
            format!(
                "IDX element type 0x{:02x} is not supported (only unsigned bytes, 0x08)",
                bytes[2]
            ),
        ));
    }
    let rank = usize::from(bytes[3]);
    let header_len = 4 + 4 * rank;
    if rank == 0 || bytes.len() < header_len {
        return Err(bad_file(path, "truncated IDX header"));
    }
    let dims: Vec<usize> = bytes[4..header_len]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad_file(path, "IDX dimensions overflow"))?;
    let data = &bytes[header_len..];
    if data.len() != expected {
        return Err(bad_file(
            path,
            format!("IDX header promises {expected} bytes of data, the file has {}", data.len()),
        ));
    }
    Ok((dims, data.to_vec()))
}

/// Reads a NumPy pair: 2-D features and 1-D whole-number labels (float or integer arrays).
pub fn load_npy_pair(features: &Path, labels: &Path) -> Result<Dataset> {
    let matrix = read_npy::<Ix2>(features, "features must be a 2-D array")?;
    let label_values = read_npy::<Ix1>(labels, "labels must be a 1-D array")?;
    let label_list = label_values
        .iter()
        .map(|&value| {
            labels::whole_class(value).ok_or_else(|| {
                bad_file(labels, format!("label {value} is not a class number (0, 1, 2, ...)"))
            })
        })
        .collect::<Result<Vec<usize>>>()?;
    Dataset::new(matrix.mapv(|v| v as f32), label_list, features)
}

/// Reads a `.npy` file (any byte order and memory order) of floats or integers as f64; `what`
/// says what shape is expected when the file has another.
pub fn read_npy<D: Dimension>(path: &Path, what: &str) -> Result<Array<f64, D>> {
    let bytes = std::fs::read(path)
        .map_err(|source| LearningError::Io { path: path.to_owned(), source })?;
    type Reader<D> = fn(&[u8]) -> std::result::Result<Array<f64, D>, ReadNpyError>;
    let readers: [Reader<D>; 8] = [
        |b| read_as::<f32, D>(b, f64::from),
        |b| read_as::<f64, D>(b, |v| v),
        |b| read_as::<u8, D>(b, f64::from),
        |b| read_as::<i8, D>(b, f64::from),
        |b| read_as::<i32, D>(b, f64::from),
        |b| read_as::<u32, D>(b, f64::from),
        |b| read_as::<i64, D>(b, |v| v as f64),
        |b| read_as::<u64, D>(b, |v| v as f64),
    ];
    for reader in readers {
        match reader(&bytes) {
            Err(ReadNpyError::WrongDescriptor(_)) => continue,
            Err(error @ ReadNpyError::WrongNdim(..)) => {
                return Err(bad_file(path, format!("{what}: {error}")));
            }
            Err(error) => return Err(bad_file(path, format!("not a readable .npy file: {error}"))),
            Ok(array) => return Ok(array),
        }
    }
    Err(bad_file(path, "the array's dtype is not supported (use a float or integer type)"))
}

fn read_as<T: ReadableElement + Copy, D: Dimension>(
    bytes: &[u8],
    to_f64: fn(T) -> f64,
) -> std::result::Result<Array<f64, D>, ReadNpyError> {
    Ok(Array::<T, D>::read_npy(bytes)?.mapv(to_f64))
}

/// Writes a data set as CSV (features, then the label: its class name when the data set has
/// names, else its number; no header), readable by [`parse_csv`].
pub fn write_csv(dataset: &Dataset, path: &Path) -> Result<()> {
    let write_error = |source| LearningError::Write { path: path.to_owned(), source };
    let mut writer = csv::Writer::from_path(path).map_err(|e| write_error(e.into()))?;
    for (row, &label) in dataset.features.rows().into_iter().zip(&dataset.labels) {
        let mut cells: Vec<String> = row.iter().map(f32::to_string).collect();
        cells.push(dataset.classes.get(label).cloned().unwrap_or_else(|| label.to_string()));
        writer.write_record(&cells).map_err(|e| write_error(e.into()))?;
    }
    writer.flush().map_err(write_error)
}
