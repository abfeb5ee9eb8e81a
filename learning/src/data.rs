//! Data sets: the embedded ones by name, a user's CSV, MNIST IDX and NumPy `.npy` files, and a
//! deterministic train/test split.

use crate::error::{LearningError, Result};
use crate::formats;
use crate::labels::Assigned;
use fedmesh_protocol::spec::Classes;
use ndarray::{Array2, Axis};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use std::path::{Path, PathBuf};

/// Features (one row per sample) and integer class labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub features: Array2<f32>,
    pub labels: Vec<usize>,
    pub num_classes: usize,
    /// Each class's name when the labels were names (class i is `classes[i]`), else empty.
    pub classes: Vec<String>,
}

/// Where a data set comes from, as a user names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// `mnist5k`, `digits` or `breast-cancer`, compiled into fedmesh.
    Embedded(Embedded),
    /// A CSV file (optionally `.gz`); the label column by 0-based index or header name.
    Csv { path: PathBuf, label_column: Option<String> },
    /// MNIST IDX: an images file and a labels file (optionally `.gz`).
    Idx { images: PathBuf, labels: PathBuf },
    /// NumPy: a 2-D features array and a 1-D labels array.
    Npy { features: PathBuf, labels: PathBuf },
}

/// The data sets shipped with fedmesh (see data/README.md for their origin).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Embedded {
    Mnist5k,
    Digits,
    BreastCancer,
}

const MNIST5K: &[u8] = include_bytes!("../../data/mnist_5k.csv.gz");
const DIGITS: &[u8] = include_bytes!("../../data/digits.csv.gz");
const BREAST_CANCER: &[u8] = include_bytes!("../../data/breast_cancer.csv");

impl Embedded {
    /// The embedded data set called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "mnist5k" => Some(Self::Mnist5k),
            "digits" => Some(Self::Digits),
            "breast-cancer" => Some(Self::BreastCancer),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Mnist5k => "mnist5k",
            Self::Digits => "digits",
            Self::BreastCancer => "breast-cancer",
        }
    }

    /// How many classes the data set has (a partition of it may hold fewer).
    pub fn num_classes(self) -> usize {
        match self {
            Self::Mnist5k | Self::Digits => 10,
            Self::BreastCancer => 2,
        }
    }

    /// The scaling that suits the data set: pixels to [0, 1] by the pixel range (the same for
    /// every share of the data), measurements standardized.
    pub fn preferred_scaling(self) -> crate::scale::Scaling {
        match self {
            Self::Mnist5k | Self::Digits => crate::scale::Scaling::MinMaxAll,
            Self::BreastCancer => crate::scale::Scaling::Standardize,
        }
    }

    fn load(self) -> Result<Dataset> {
        let path = PathBuf::from(format!("<embedded {}>", self.name()));
        match self {
            Self::Mnist5k => {
                formats::parse_csv(&path, &formats::gunzip(&path, MNIST5K)?, None, None)
            }
            Self::Digits => formats::parse_csv(&path, &formats::gunzip(&path, DIGITS)?, None, None),
            Self::BreastCancer => formats::parse_csv(&path, BREAST_CANCER, None, None),
        }
    }
}

impl DataSource {
    /// Parses a user's `--dataset` value: an embedded name, `FEATURES,LABELS` for an IDX or `.npy`
    /// pair, or a CSV path.
    pub fn parse(text: &str, label_column: Option<&str>) -> Result<Self> {
        if let Some(embedded) = Embedded::from_name(text) {
            return Ok(Self::Embedded(embedded));
        }
        if let Some((first, second)) = text.split_once(',') {
            let (first, second) = (PathBuf::from(first), PathBuf::from(second));
            let is_npy = first.extension().is_some_and(|e| e == "npy");
            return Ok(if is_npy {
                Self::Npy { features: first, labels: second }
            } else {
                Self::Idx { images: first, labels: second }
            });
        }
        let path = PathBuf::from(text);
        if path.extension().is_none() && !path.exists() {
            return Err(LearningError::UnknownDataset(text.to_owned()));
        }
        Ok(Self::Csv { path, label_column: label_column.map(str::to_owned) })
    }

    /// Parses a node's `[datasets]` value: as [`parse`](Self::parse), where `PATH#COLUMN` names
    /// a CSV file's label column.
    pub fn from_setting(text: &str) -> Result<Self> {
        match text.rsplit_once('#') {
            Some((path, column)) if !column.is_empty() => Self::parse(path, Some(column)),
            _ => Self::parse(text, None),
        }
    }

    /// Reads the whole data set, its labels mapped to classes as [`crate::labels::assign`]
    /// says (by `classes`, a job's, when given).
    pub fn load(&self, classes: Option<&Classes>) -> Result<Dataset> {
        let numeric = match self {
            Self::Csv { path, label_column } => {
                let bytes = formats::read_maybe_gz(path)?;
                return formats::parse_csv(path, &bytes, label_column.as_deref(), classes);
            }
            Self::Embedded(embedded) => embedded.load()?,
            Self::Idx { images, labels } => formats::load_idx(images, labels)?,
            Self::Npy { features, labels } => formats::load_npy_pair(features, labels)?,
        };
        match classes {
            Some(classes) => numeric.relabel(classes, &self.files()[0]),
            None => Ok(numeric),
        }
    }

    /// The files it reads (an embedded set's name for one that has none).
    pub fn files(&self) -> Vec<PathBuf> {
        match self {
            Self::Embedded(embedded) => vec![PathBuf::from(embedded.name())],
            Self::Csv { path, .. } => vec![path.clone()],
            Self::Idx { images, labels } => vec![images.clone(), labels.clone()],
            Self::Npy { features, labels } => vec![features.clone(), labels.clone()],
        }
    }

    /// Its files that do not exist (none for an embedded set).
    pub fn missing_files(&self) -> Vec<PathBuf> {
        match self {
            Self::Embedded(_) => Vec::new(),
            _ => self.files().into_iter().filter(|path| !path.exists()).collect(),
        }
    }

    /// How a user would name it: the embedded name, or the files (comma-separated).
    pub fn name(&self) -> String {
        let files: Vec<String> = self.files().iter().map(|f| f.display().to_string()).collect();
        files.join(",")
    }

    /// A CSV file's label column, if one was named.
    pub fn label_column(&self) -> Option<&str> {
        match self {
            Self::Csv { label_column, .. } => label_column.as_deref(),
            _ => None,
        }
    }

    /// The scaling that suits it (min-max unless the data set is known to prefer another).
    pub fn preferred_scaling(&self) -> crate::scale::Scaling {
        match self {
            Self::Embedded(embedded) => embedded.preferred_scaling(),
            _ => crate::scale::Scaling::MinMax,
        }
    }
}

impl Dataset {
    /// Builds a data set, checking that rows and labels agree and that it is not empty.
    pub fn new(features: Array2<f32>, labels: Vec<usize>, origin: &Path) -> Result<Self> {
        let bad = |problem: String| LearningError::BadFile { path: origin.to_owned(), problem };
        if features.nrows() != labels.len() {
            return Err(bad(format!(
                "{} feature rows but {} labels",
                features.nrows(),
                labels.len()
            )));
        }
        if labels.is_empty() || features.ncols() == 0 {
            return Err(bad("the data set is empty".to_owned()));
        }
        if features.iter().any(|v| !v.is_finite()) {
            return Err(bad("a feature is not a finite number".to_owned()));
        }
        let num_classes = labels.iter().max().map_or(0, |m| m + 1);
        Ok(Self { features, labels, num_classes, classes: Vec::new() })
    }

    /// Builds a data set whose labels were mapped to classes (checked as [`Dataset::new`]).
    pub fn labelled(features: Array2<f32>, assigned: Assigned, origin: &Path) -> Result<Self> {
        let dataset = Self::new(features, assigned.labels, origin)?;
        Ok(Self { num_classes: assigned.num_classes, classes: assigned.names, ..dataset })
    }

    /// The same samples with their class numbers mapped to a job's `classes` (a numbered
    /// class's name is its number).
    pub fn relabel(self, classes: &Classes, origin: &Path) -> Result<Self> {
        let cells: Vec<String> = self.labels.iter().map(usize::to_string).collect();
        let assigned = crate::labels::assign(&cells, Some(classes))
            .map_err(|problem| LearningError::BadFile { path: origin.to_owned(), problem })?;
        Self::labelled(self.features, assigned, origin)
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn num_features(&self) -> usize {
        self.features.ncols()
    }

    /// The samples at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        Dataset {
            features: self.features.select(Axis(0), indices),
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            num_classes: self.num_classes,
            classes: self.classes.clone(),
        }
    }

    /// A seeded shuffle split: `(train, test)` with `test_fraction` of the samples in test.
    pub fn split(&self, test_fraction: f32, seed: u64) -> Result<(Dataset, Dataset)> {
        if !(0.0..1.0).contains(&test_fraction) {
            return Err(LearningError::Invalid(format!(
                "test fraction {test_fraction} is not in [0, 1)"
            )));
        }
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        let test_len = (self.len() as f32 * test_fraction).round() as usize;
        let (test, train) = order.split_at(test_len);
        Ok((self.select(train), self.select(test)))
    }

    /// How many samples of each class.
    pub fn label_histogram(&self) -> Vec<usize> {
        histogram(&self.labels, self.num_classes)
    }
}

/// Counts of each label in `0..num_classes`.
pub fn histogram(labels: &[usize], num_classes: usize) -> Vec<usize> {
    let mut counts = vec![0; num_classes];
    for &label in labels {
        if label < num_classes {
            counts[label] += 1;
        }
    }
    counts
}
