//! What parsing a manifest reports back: warnings, errors, and the field paths they name.
//!
//! Paths are written the way `kubectl explain` and Kubernetes validation errors write
//! them: `spec.template.spec.containers[0].image`. A map key that is not a plain
//! identifier (a label or resource name such as `nvidia.com/gpu`) is quoted in
//! brackets so the path stays unambiguous: `resources.limits["nvidia.com/gpu"]`.

use std::fmt;

/// A field peer accepted but does not act on (or a Kubernetes kind peer does not run).
///
/// Warnings never stop a workload from being applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The file, as the caller named it.
    pub file: String,
    /// 1-based position of the YAML document in the file.
    pub document: usize,
    /// Kind and name of the object, e.g. `Deployment api`, when they could be read.
    pub object: Option<String>,
    /// Field path inside the document; empty when the warning is about the whole object.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file, self.document)?;
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Why a file or one document in it could not be turned into a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The file, as the caller named it.
    pub file: String,
    /// 1-based position of the YAML document; `None` for an error about the whole file.
    pub document: Option<usize>,
    /// Kind and name of the object, e.g. `Deployment api`, when they could be read.
    pub object: Option<String>,
    /// 1-based line of the error, when the YAML parser could tell.
    pub line: Option<usize>,
    /// 1-based column of the error, when the YAML parser could tell.
    pub column: Option<usize>,
    /// Field path inside the document, when the error is about one field.
    pub path: Option<String>,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        let mut sep = ": ";
        if let Some(document) = self.document {
            write!(f, "{sep}document {document}")?;
            if let Some(object) = &self.object {
                write!(f, " ({object})")?;
            }
            sep = ", ";
        }
        if let Some(line) = self.line {
            write!(f, "{sep}line {line}")?;
            if let Some(column) = self.column {
                write!(f, " column {column}")?;
            }
        }
        if let Some(path) = &self.path {
            write!(f, ": {path}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ManifestError {}

/// A problem with one field, before the file and document are attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { path: path.into(), message: message.into() }
    }
}

/// A field note (warning) before the file and document are attached: (path, message).
pub(crate) type Note = (String, String);

/// Appends a map key to a field path.
pub(crate) fn join(path: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (path.is_empty(), plain) {
        (true, true) => key.to_owned(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{key:?}]"),
    }
}

/// Appends a list index to a field path.
pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// The field path a `serde_path_to_error` error points at, in our notation.
pub(crate) fn serde_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path {
        out = match segment {
            Segment::Seq { index: i } => index(&out, *i),
            Segment::Map { key } => join(&out, key),
            Segment::Enum { variant } => join(&out, variant),
            Segment::Unknown => join(&out, "?"),
        };
    }
    out
}

/// Rewrites a serde data-model error into our wording: lowercase, "expected X, got Y".
///
/// Returns the path suffix to append (for a missing field, the field itself) and the message.
pub(crate) fn serde_message(raw: &str) -> (Option<String>, String) {
    if let Some(rest) = raw.strip_prefix("invalid type: ") {
        if let Some((got, expected)) = rest.rsplit_once(", expected ") {
            return (None, format!("expected {}, got {}", expected_noun(expected), got_noun(got)));
        }
    }
    if let Some(rest) = raw.strip_prefix("invalid value: ") {
        if let Some((got, expected)) = rest.rsplit_once(", expected ") {
            return (None, format!("expected {}, got {}", expected_noun(expected), got_noun(got)));
        }
    }
    if let Some(field) = raw.strip_prefix("missing field `").and_then(|s| s.strip_suffix('`')) {
        return (Some(field.to_owned()), "required field is missing".to_owned());
    }
    (None, lowercase_first(raw))
}

fn expected_noun(expected: &str) -> String {
    match expected {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" => "an integer".to_owned(),
        "a boolean" | "bool" => "a boolean (true or false)".to_owned(),
        "a string" | "string" => "a string".to_owned(),
        "a sequence" => "a list".to_owned(),
        "a map" => "a mapping".to_owned(),
        "Quantity" => "a quantity such as 500m or 128Mi".to_owned(),
        "IntOrString" => "an integer or a string such as 25%".to_owned(),
        other if other.starts_with("a ") || other.starts_with("an ") => other.to_owned(),
        other if other.chars().next().is_some_and(|c| c.is_ascii_uppercase()) => {
            format!("a mapping ({other})")
        }
        other => other.to_owned(),
    }
}

fn got_noun(got: &str) -> String {
    match got {
        "map" => "a mapping".to_owned(),
        "sequence" => "a list".to_owned(),
        "unit value" => "null".to_owned(),
        other => other.replace('`', ""),
    }
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The message and (line, column) of a YAML error, without the location repeated in the text.
pub(crate) fn yaml_error(err: &serde_yaml_ng::Error) -> (String, Option<(usize, usize)>) {
    let text = err.to_string();
    match err.location() {
        Some(loc) => {
            let at = format!(" at line {} column {}", loc.line(), loc.column());
            let message = text.replacen(&at, "", 1);
            (lowercase_first(&message), Some((loc.line(), loc.column())))
        }
        None => (lowercase_first(&text), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_quote_keys_that_are_not_identifiers() {
        assert_eq!(join("", "spec"), "spec");
        assert_eq!(join("spec", "replicas"), "spec.replicas");
        assert_eq!(join("limits", "nvidia.com/gpu"), "limits[\"nvidia.com/gpu\"]");
        assert_eq!(index("containers", 2), "containers[2]");
    }

    #[test]
    fn serde_messages_are_rewritten() {
        assert_eq!(
            serde_message("invalid type: string \"five\", expected i32"),
            (None, "expected an integer, got string \"five\"".to_owned())
        );
        assert_eq!(
            serde_message("missing field `name`"),
            (Some("name".to_owned()), "required field is missing".to_owned())
        );
    }
}
