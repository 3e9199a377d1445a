//! Splits a manifest file (multi-document YAML, a JSON object, a JSON array or a `kind: List`)
//! into documents as JSON values, each with its index, so one bad document does not hide the
//! others and a syntax error names the line and column in the whole file.
//!
//! No judgement of content here: that is `lint`'s job.

use serde_json::Value;

/// One document of a file: its 1-based index and either its value or why it could not be read.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    pub index: usize,
    pub content: Result<Value, String>,
}

/// Every non-empty document of `text`. Empty documents (only comments or whitespace) are left out
/// but keep their index, so indexes match what a reader counts in the file.
pub fn documents(text: &str) -> Vec<Document> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        return json_documents(text);
    }
    let mut out = Vec::new();
    for (i, (first_line, chunk)) in yaml_chunks(text).into_iter().enumerate() {
        if is_blank(&chunk) {
            continue;
        }
        let content = serde_saphyr::from_str::<Value>(&chunk).map_err(|error| {
            let message = first_line_of(&error.to_string());
            match error.location() {
                Some(at) => format!(
                    "invalid YAML at line {}, column {}: {message}",
                    at.line() + first_line as u64,
                    at.column()
                ),
                None => format!("invalid YAML: {message}"),
            }
        });
        match content {
            Ok(value) => out.extend(expand_list(i + 1, value)),
            Err(error) => out.push(Document {
                index: i + 1,
                content: Err(error),
            }),
        }
    }
    out
}

fn json_documents(text: &str) -> Vec<Document> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .flat_map(|(i, item)| expand_list(i + 1, item))
            .collect(),
        Ok(value) => expand_list(1, value),
        Err(error) => vec![Document {
            index: 1,
            content: Err(format!(
                "invalid JSON at line {}, column {}: {}",
                error.line(),
                error.column(),
                // serde_json appends the position itself; it is already in front.
                error
                    .to_string()
                    .split(" at line ")
                    .next()
                    .unwrap_or_default()
            )),
        }],
    }
}

/// A `kind: List` (what `kubectl get -o yaml` prints) stands for its items.
fn expand_list(index: usize, value: Value) -> Vec<Document> {
    if value.get("kind").and_then(Value::as_str) == Some("List")
        && let Some(Value::Array(items)) = value.get("items")
    {
        return items
            .iter()
            .map(|item| Document {
                index,
                content: Ok(item.clone()),
            })
            .collect();
    }
    if value.is_null() {
        return Vec::new();
    }
    vec![Document {
        index,
        content: Ok(value),
    }]
}

/// Splits at `---` lines. Each chunk keeps the number of lines before it, so error lines can be
/// shifted back to file lines; the marker itself is blanked to keep columns.
fn yaml_chunks(text: &str) -> Vec<(usize, String)> {
    let mut chunks = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    for (n, line) in text.lines().enumerate() {
        let is_marker =
            line.starts_with("---") && line[3..].chars().next().is_none_or(char::is_whitespace);
        if is_marker {
            if n > 0 || !current.is_empty() {
                chunks.push((start, std::mem::take(&mut current)));
            }
            start = n;
            current.push_str("   ");
            current.push_str(&line[3..]);
            current.push('\n');
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    chunks.push((start, current));
    // Comments before the first `---` are not a document of their own.
    if chunks.len() > 1 && is_blank(&chunks[0].1) {
        chunks.remove(0);
    }
    chunks
}

fn is_blank(chunk: &str) -> bool {
    chunk.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "..."
    })
}

/// The parser's first line without its own `error: line L column C:` prefix (the location is
/// reported separately, shifted to the whole file).
fn first_line_of(message: &str) -> String {
    let line = message.lines().next().unwrap_or_default().trim();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    // The parser's advice is about its own options, not about the user's file.
    let line = line
        .split(", set DuplicateKeyPolicy")
        .next()
        .unwrap_or(line);
    match line
        .strip_prefix("line ")
        .and_then(|rest| rest.split_once(": "))
    {
        Some((location, rest)) if location.contains("column") => rest.to_owned(),
        Some(_) | None => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_numbered_as_a_reader_counts_them() {
        let docs = documents("a: 1\n---\n# only a comment\n---\nb: 2\n");
        let indexes: Vec<usize> = docs.iter().map(|d| d.index).collect();
        assert_eq!(indexes, vec![1, 3]);
        assert_eq!(docs[1].content, Ok(serde_json::json!({"b": 2})));
    }

    #[test]
    fn a_leading_marker_does_not_count_as_a_document() {
        let docs = documents("---\na: 1\n---\nb: 2\n");
        let indexes: Vec<usize> = docs.iter().map(|d| d.index).collect();
        assert_eq!(indexes, vec![1, 2]);
    }

    #[test]
    fn a_syntax_error_names_the_line_in_the_whole_file() {
        let docs = documents("a: 1\n---\nb: 2\nc: [1, 2\n");
        assert_eq!(docs.len(), 2);
        let error = docs[1].content.clone().expect_err("unclosed flow sequence");
        assert!(error.starts_with("invalid YAML at line "), "{error}");
        let line: u64 = error["invalid YAML at line ".len()..]
            .split(',')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("a line number");
        assert!((4..=5).contains(&line), "{error}");
    }

    #[test]
    fn a_duplicate_key_is_a_syntax_error_without_parser_advice() {
        let docs = documents("a: 1\na: 2\n");
        let error = docs[0].content.clone().expect_err("duplicate key");
        assert_eq!(
            error,
            "invalid YAML at line 2, column 1: duplicate mapping key: a"
        );
    }

    #[test]
    fn a_json_syntax_error_names_its_position_once() {
        let docs = documents("{\"a\": \n}");
        let error = docs[0].content.clone().expect_err("no value");
        assert_eq!(error, "invalid JSON at line 2, column 1: expected value");
    }

    #[test]
    fn a_json_list_stands_for_its_items() {
        let docs = documents(r#"{"kind": "List", "items": [{"a": 1}, {"b": 2}]}"#);
        assert_eq!(docs.len(), 2);
    }
}
