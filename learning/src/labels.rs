//! Labels to class numbers: numbers as they are, names by the job's class list or, without one,
//! in sorted order (the mapping is kept with the data set).

use fedmesh_protocol::spec::Classes;
use std::collections::BTreeSet;

/// The largest class number a numeric label may be.
const MAX_CLASS_NUMBER: usize = 1_000_000;

/// Labels as class numbers, the class count, and the class names (empty for numeric labels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub labels: Vec<usize>,
    pub num_classes: usize,
    pub names: Vec<String>,
}

/// Maps each label text to its class. `classes` (a job's) fixes the mapping; without it labels
/// that are all numbers are class numbers, and others are names, classes in sorted order.
/// An error names the first label that does not fit.
pub fn assign(cells: &[String], classes: Option<&Classes>) -> Result<Assigned, String> {
    match classes {
        Some(Classes::Names(names)) => by_names(cells, names),
        Some(Classes::Count(count)) => {
            let count = *count as usize;
            let labels = numbers(cells).map_err(|cell| {
                format!(
                    "label `{cell}` is not a class number; the job has {count} classes (a job \
                     whose labels are names lists them in `classes`)"
                )
            })?;
            match labels.iter().find(|&&label| label >= count) {
                Some(label) => Err(format!("label {label} is not below the job's {count} classes")),
                None => Ok(Assigned { labels, num_classes: count, names: Vec::new() }),
            }
        }
        None if cells.iter().all(|cell| cell.parse::<f64>().is_ok()) => {
            let labels = numbers(cells)
                .map_err(|cell| format!("label {cell} is not a class number (0, 1, 2, ...)"))?;
            let num_classes = labels.iter().max().map_or(0, |max| max + 1);
            Ok(Assigned { labels, num_classes, names: Vec::new() })
        }
        None => {
            let sorted: BTreeSet<&String> = cells.iter().collect();
            let names: Vec<String> = sorted.into_iter().cloned().collect();
            by_names(cells, &names)
        }
    }
}

fn by_names(cells: &[String], names: &[String]) -> Result<Assigned, String> {
    let labels = cells
        .iter()
        .map(|cell| {
            names.iter().position(|name| name == cell).ok_or_else(|| {
                format!("label `{cell}` is not one of the job's classes: {}", names.join(", "))
            })
        })
        .collect::<Result<Vec<usize>, String>>()?;
    Ok(Assigned { labels, num_classes: names.len(), names: names.to_vec() })
}

/// Every label as a class number, or the first one that is not.
fn numbers(cells: &[String]) -> Result<Vec<usize>, &String> {
    cells.iter().map(|cell| class_number(cell).ok_or(cell)).collect()
}

/// `3` or `3.0` as class 3; negative, fractional, huge or non-numeric text as none.
pub fn class_number(text: &str) -> Option<usize> {
    whole_class(text.trim().parse().ok()?)
}

/// A whole, non-negative, not huge number as a class number.
pub fn whole_class(value: f64) -> Option<usize> {
    let whole = value >= 0.0 && value.fract() == 0.0 && value <= MAX_CLASS_NUMBER as f64;
    whole.then_some(value as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|t| (*t).to_owned()).collect()
    }

    #[test]
    fn names_map_in_sorted_order_without_a_job_list() {
        let assigned = assign(&cells(&["virginica", "setosa", "versicolor", "setosa"]), None);
        let assigned = assigned.unwrap();
        assert_eq!(assigned.names, cells(&["setosa", "versicolor", "virginica"]));
        assert_eq!(assigned.labels, vec![2, 0, 1, 0]);
        assert_eq!(assigned.num_classes, 3);
    }

    #[test]
    fn numbers_stay_numbers() {
        let assigned = assign(&cells(&["2", "0", "1.0"]), None).unwrap();
        assert_eq!((assigned.labels, assigned.num_classes), (vec![2, 0, 1], 3));
        assert!(assigned.names.is_empty());
        let error = assign(&cells(&["1", "0.5"]), None).unwrap_err();
        assert!(error.contains("label 0.5 is not a class number"), "{error}");
    }

    #[test]
    fn a_job_list_fixes_the_mapping_even_when_a_class_is_missing() {
        let names = Classes::Names(cells(&["setosa", "versicolor", "virginica"]));
        let assigned = assign(&cells(&["virginica", "virginica"]), Some(&names)).unwrap();
        assert_eq!((assigned.labels, assigned.num_classes), (vec![2, 2], 3));
        let error = assign(&cells(&["rose"]), Some(&names)).unwrap_err();
        assert!(error.contains("`rose` is not one of the job's classes"), "{error}");
    }

    #[test]
    fn a_job_count_bounds_numeric_labels() {
        let assigned = assign(&cells(&["0", "1"]), Some(&Classes::Count(10))).unwrap();
        assert_eq!(assigned.num_classes, 10);
        let error = assign(&cells(&["10"]), Some(&Classes::Count(10))).unwrap_err();
        assert!(error.contains("not below the job's 10 classes"), "{error}");
        let error = assign(&cells(&["cat"]), Some(&Classes::Count(10))).unwrap_err();
        assert!(error.contains("`cat` is not a class number"), "{error}");
    }
}
