//! The four documents of a Flame job as Flame's tools read them (`job.json`, `modelSpec.json`,
//! `dataSpec.json`, `schema.json`): parsed with every unknown key refused, and read leniently,
//! with a warning, when they are not quite JSON (a trailing comma, a list in braces).

use super::FlameError;
use crate::tag::{FieldWarning, TagSchema, unknown_schema_keys};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

pub const JOB_FILE: &str = "job.json";
pub const MODEL_SPEC_FILE: &str = "modelSpec.json";
pub const DATA_SPEC_FILE: &str = "dataSpec.json";
pub const SCHEMA_FILE: &str = "schema.json";

/// `job.json`, as `flamectl create job` reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JobFile {
    pub id: Option<String>,
    pub name: String,
    pub user_id: Option<String>,
    pub design_id: Option<String>,
    pub schema_revision: Option<i64>,
    pub code_revision: Option<i64>,
    pub priority: Option<String>,
    pub backend: Option<String>,
    pub max_run_time: Option<u64>,
    pub data_spec_path: Option<String>,
    pub model_spec_path: Option<String>,
}

/// `modelSpec.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ModelSpecFile {
    pub base_model: Option<BaseModel>,
    /// Flame allows any hyperparameter beside the ones it names.
    #[serde(default)]
    pub hyperparameters: Map<String, Value>,
    #[serde(default)]
    pub dependencies: Vec<String>,
    pub selector: Option<Plugin>,
    pub optimizer: Option<Plugin>,
    pub registry: Option<Registry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseModel {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub version: i64,
}

/// A selector or an optimizer: which one (`sort`) and its arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plugin {
    pub sort: Option<String>,
    #[serde(default)]
    pub kwargs: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    pub sort: String,
    #[serde(default)]
    pub uri: String,
}

/// One entry of `dataSpec.json`: a data-consuming role's data set ids by group label.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RoleDatasetGroups {
    pub role: String,
    pub dataset_groups: BTreeMap<String, Vec<String>>,
}

/// Parses one document into `T`, reporting its problems with their paths.
pub fn parse<T: DeserializeOwned>(
    file: &str,
    text: &str,
    warnings: &mut Vec<FieldWarning>,
) -> Result<T, FlameError> {
    let value = json_value(file, text, warnings)?;
    deserialize(file, value)
}

/// Parses `schema.json`, refusing every key Flame's schema format does not have.
pub fn parse_schema(text: &str, warnings: &mut Vec<FieldWarning>) -> Result<TagSchema, FlameError> {
    let value = json_value(SCHEMA_FILE, text, warnings)?;
    let unknown = unknown_schema_keys(&value);
    if !unknown.is_empty() {
        let problems = unknown.iter().map(|key| format!("{}: {}", key.path, key.message()));
        return Err(FlameError::Invalid {
            file: SCHEMA_FILE.to_owned(),
            problems: problems.collect(),
        });
    }
    deserialize(SCHEMA_FILE, value)
}

fn deserialize<T: DeserializeOwned>(file: &str, value: Value) -> Result<T, FlameError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        FlameError::Invalid {
            file: file.to_owned(),
            problems: vec![format!("{path}: {}", error.into_inner())],
        }
    })
}

/// The document as JSON; failing that, as repaired by [`lenient`], with a warning.
fn json_value(
    file: &str,
    text: &str,
    warnings: &mut Vec<FieldWarning>,
) -> Result<Value, FlameError> {
    let strict_error = match serde_json::from_str(text) {
        Ok(value) => return Ok(value),
        Err(error) => error,
    };
    let repaired = serde_json::from_str(&lenient(text)).map_err(|_| FlameError::Invalid {
        file: file.to_owned(),
        problems: vec![format!("not valid JSON: {strict_error}")],
    })?;
    warnings.push(FieldWarning::new(
        file,
        format!(
            "not valid JSON ({strict_error}): read with its trailing commas dropped and braces \
             around keyless entries taken as a list"
        ),
    ));
    Ok(repaired)
}

/// `text` with the two slips Flame's own examples make repaired: a comma before a closing
/// bracket or brace is dropped, and a `{` opening straight onto another `{` (an object of
/// keyless entries) becomes `[`, its matching `}` a `]`. Strings are left alone.
fn lenient(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let next_significant = |from: usize| chars[from..].iter().copied().find(|c| !c.is_whitespace());
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    // For each open brace or bracket: whether it was turned into a list.
    let mut open: Vec<bool> = Vec::new();
    for (index, &c) in chars.iter().enumerate() {
        if in_string {
            in_string = c != '"' || escaped;
            escaped = c == '\\' && !escaped;
            out.push(c);
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            ',' if matches!(next_significant(index + 1), Some('}' | ']')) => {}
            '{' | '[' => {
                let listed = c == '{' && next_significant(index + 1) == Some('{');
                open.push(listed);
                out.push(if listed { '[' } else { c });
            }
            '}' | ']' => out.push(if open.pop() == Some(true) { ']' } else { c }),
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_reading_repairs_trailing_commas_and_braced_lists_but_not_strings() {
        let text = r#"{ { "a": ["x,]", "y",], }, }"#;
        assert_eq!(lenient(text), r#"[ { "a": ["x,]", "y"] } ]"#);
        let mut warnings = Vec::new();
        let value: Value = parse("f.json", text, &mut warnings).unwrap();
        assert_eq!(value, serde_json::json!([{"a": ["x,]", "y"]}]));
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].to_string().starts_with("f.json: not valid JSON"), "{}", warnings[0]);
    }

    #[test]
    fn text_beyond_repair_is_refused_with_the_strict_error() {
        let error = parse::<Value>("f.json", "{\"a\": }", &mut Vec::new()).unwrap_err();
        assert!(error.to_string().starts_with("f.json: not valid JSON"), "{error}");
    }
}
