//! File formats: CSV (header detected, label column chosen), MNIST IDX and NumPy `.npy`, each
//! read with a clear error for every kind of bad file; and writing a data set back out as CSV.

use crate::data::Dataset;
use crate::error::{LearningError, Result};
use flate2::read::GzDecoder;
use ndarray::Array2;
use std::io::{Read, Write};
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

/// Parses CSV: a first row with any non-numeric cell is a header; the label column is
/// `label_column` (0-based index or header name) or the last.
pub fn parse_csv(path: &Path, bytes: &[u8], label_column: Option<&str>) -> Result<Dataset> {
    let text = std::str::from_utf8(bytes).map_err(|_| bad_file(path, "not UTF-8 text"))?;
    let mut lines = text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()).peekable();
    let header: Option<Vec<&str>> = match lines.peek() {
        Some((_, first)) if first.split(',').any(|cell| cell.trim().parse::<f64>().is_err()) => {
            let cells = first.split(',').map(str::trim).collect();
            lines.next();
            Some(cells)
        }
        _ => None,
    };
    let mut width = None;
    let mut label_index = None;
    let mut values = Vec::new();
    let mut labels = Vec::new();
    for (number, line) in lines {
        let line_number = number + 1;
        let bad_line = |problem: String| LearningError::BadLine {
            path: path.to_owned(),
            line: line_number,
            problem,
        };
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let expected = *width.get_or_insert(cells.len());
        if cells.len() != expected {
            return Err(bad_line(format!(
                "{} columns, but earlier rows have {expected}",
                cells.len()
            )));
        }
        let label_at = match label_index {
            Some(index) => index,
            None => *label_index.insert(resolve_label_column(
                path,
                label_column,
                header.as_deref(),
                expected,
            )?),
        };
        for (column, cell) in cells.iter().enumerate() {
            let value: f64 = cell.parse().map_err(|_| {
                bad_line(format!("column {}: `{cell}` is not a number", column + 1))
            })?;
            if column == label_at {
                labels.push(parse_label(value).map_err(bad_line)?);
            } else {
                values.push(value as f32);
            }
        }
    }
    let columns = width.ok_or_else(|| bad_file(path, "no data rows"))?;
    if columns < 2 {
        return Err(bad_file(path, "a row needs at least one feature and a label"));
    }
    let features = Array2::from_shape_vec((labels.len(), columns - 1), values)
        .map_err(|e| bad_file(path, e.to_string()))?;
    Dataset::new(features, labels, path)
}

fn resolve_label_column(
    path: &Path,
    wanted: Option<&str>,
    header: Option<&[&str]>,
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
    header
        .and_then(|names| names.iter().position(|name| *name == wanted))
        .ok_or_else(|| bad_file(path, format!("no column named `{wanted}` in the header")))
}

fn parse_label(value: f64) -> std::result::Result<usize, String> {
    if value < 0.0 || value.fract() != 0.0 || value > 1e6 {
        Err(format!("label {value} is not a class number (0, 1, 2, ...)"))
    } else {
        Ok(value as usize)
    }
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

/// Reads a NumPy pair: 2-D features (float or integer) and 1-D integer labels.
pub fn load_npy_pair(features: &Path, labels: &Path) -> Result<Dataset> {
    let (feature_shape, feature_values) = read_npy(features)?;
    let (label_shape, label_values) = read_npy(labels)?;
    if feature_shape.len() != 2 {
        return Err(bad_file(
            features,
            format!("features must be 2-D, this array has shape {feature_shape:?}"),
        ));
    }
    if label_shape.len() != 1 {
        return Err(bad_file(
            labels,
            format!("labels must be 1-D, this array has shape {label_shape:?}"),
        ));
    }
    let label_list = label_values
        .iter()
        .map(|&v| parse_label(v))
        .collect::<std::result::Result<Vec<usize>, String>>()
        .map_err(|problem| bad_file(labels, problem))?;
    let matrix = Array2::from_shape_vec(
        (feature_shape[0], feature_shape[1]),
        feature_values.iter().map(|&v| v as f32).collect(),
    )
    .map_err(|e| bad_file(features, e.to_string()))?;
    Dataset::new(matrix, label_list, features)
}

/// Reads a `.npy` file (C order; f4, f8, u1, i1, i4, i8, u4, u8, little-endian) as f64 values.
pub fn read_npy(path: &Path) -> Result<(Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path)
        .map_err(|source| LearningError::Io { path: path.to_owned(), source })?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad_file(path, "not a .npy file (wrong magic string)"));
    }
    let (header_len, header_start): (usize, usize) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => {
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        version => {
            return Err(bad_file(path, format!(".npy format version {version} is not supported")));
        }
    };
    let header_end = header_start
        .checked_add(header_len)
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| bad_file(path, "truncated .npy header"))?;
    let header = std::str::from_utf8(&bytes[header_start..header_end])
        .map_err(|_| bad_file(path, ".npy header is not text"))?;
    let descr =
        header_value(header, "descr").ok_or_else(|| bad_file(path, ".npy header has no descr"))?;
    if header_value(header, "fortran_order").is_some_and(|v| v.starts_with("True")) {
        return Err(bad_file(
            path,
            "Fortran-order arrays are not supported; save with np.ascontiguousarray",
        ));
    }
    let shape =
        parse_shape(header).ok_or_else(|| bad_file(path, ".npy header has no readable shape"))?;
    let descr = quoted(descr).ok_or_else(|| bad_file(path, ".npy descr is not a quoted string"))?;
    let (size, decode): (usize, fn(&[u8]) -> f64) = match descr {
        "<f4" => (4, |b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        "<f8" => (8, |b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])),
        "|u1" | "<u1" => (1, |b| f64::from(b[0])),
        "|i1" | "<i1" => (1, |b| f64::from(b[0] as i8)),
        "<i4" => (4, |b| f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        "<u4" => (4, |b| f64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        "<i8" => {
            (8, |b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64)
        }
        "<u8" => {
            (8, |b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f64)
        }
        other => {
            return Err(bad_file(
                path,
                format!("dtype {other} is not supported (use float32, float64 or an integer type)"),
            ));
        }
    };
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad_file(path, "shape overflows"))?;
    let data = &bytes[header_end..];
    if Some(data.len()) != count.checked_mul(size) {
        return Err(bad_file(
            path,
            format!(
                "shape {shape:?} needs {} bytes of data, the file has {}",
                count.saturating_mul(size),
                data.len()
            ),
        ));
    }
    Ok((shape, data.chunks_exact(size).map(decode).collect()))
}

/// The text after `'key':` in a .npy header dict, up to the next comma outside parentheses.
fn header_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let start = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    Some(rest)
}

/// The text between the quotes that open `text`.
fn quoted(text: &str) -> Option<&str> {
    let quote = text.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let rest = &text[1..];
    Some(&rest[..rest.find(quote)?])
}

fn parse_shape(header: &str) -> Option<Vec<usize>> {
    let rest = header_value(header, "shape")?.strip_prefix('(')?;
    let inside = &rest[..rest.find(')')?];
    inside.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse().ok()).collect()
}

/// Writes a data set as CSV (features, then the label; no header), readable by [`parse_csv`].
pub fn write_csv(dataset: &Dataset, path: &Path) -> Result<()> {
    let write_error = |source| LearningError::Write { path: path.to_owned(), source };
    let file = std::fs::File::create(path).map_err(write_error)?;
    let mut out = std::io::BufWriter::new(file);
    for (row, label) in dataset.features.rows().into_iter().zip(&dataset.labels) {
        for value in row {
            write!(out, "{value},").map_err(write_error)?;
        }
        writeln!(out, "{label}").map_err(write_error)?;
    }
    out.flush().map_err(write_error)
}
