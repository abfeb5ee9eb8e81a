//! Feature scaling fitted on a training split and applied unchanged to any other split.

use crate::data::Dataset;
use ndarray::{Array1, Axis};
use serde::{Deserialize, Serialize};

/// How features are scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scaling {
    /// Each feature to [0, 1] by the training split's minimum and maximum.
    MinMax,
    /// Every feature to [0, 1] by one range, the training split's overall minimum and maximum:
    /// for pixels, where a per-feature range would differ between data owners.
    MinMaxAll,
    /// Each feature to zero mean and unit variance by the training split's statistics.
    Standardize,
    /// Leave features as they are.
    None,
}

/// Fitted statistics: `x' = (x - offset) / scale`, per feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    pub offset: Vec<f32>,
    pub scale: Vec<f32>,
}

impl Scaler {
    /// Fits the statistics on `train`. A constant feature gets scale 1 (never a division by 0).
    pub fn fit(scaling: Scaling, train: &Dataset) -> Self {
        let x = &train.features;
        let (offset, spread): (Array1<f32>, Array1<f32>) = match scaling {
            Scaling::MinMax => {
                let min = x.fold_axis(Axis(0), f32::INFINITY, |a, &b| a.min(b));
                let max = x.fold_axis(Axis(0), f32::NEG_INFINITY, |a, &b| a.max(b));
                let range = &max - &min;
                (min, range)
            }
            Scaling::MinMaxAll => {
                let min = x.fold(f32::INFINITY, |a, &b| a.min(b));
                let max = x.fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                (Array1::from_elem(x.ncols(), min), Array1::from_elem(x.ncols(), max - min))
            }
            Scaling::Standardize => {
                let mean = x.mean_axis(Axis(0)).unwrap_or_else(|| Array1::zeros(x.ncols()));
                let std = x.std_axis(Axis(0), 0.0);
                (mean, std)
            }
            Scaling::None => (Array1::zeros(x.ncols()), Array1::ones(x.ncols())),
        };
        let scale = spread.iter().map(|&s| if s > 1e-12 { s } else { 1.0 }).collect();
        Self { offset: offset.to_vec(), scale }
    }

    /// Scales a data set's features in place.
    pub fn apply(&self, data: &mut Dataset) {
        for mut row in data.features.rows_mut() {
            for ((value, offset), scale) in row.iter_mut().zip(&self.offset).zip(&self.scale) {
                *value = (*value - offset) / scale;
            }
        }
    }
}
