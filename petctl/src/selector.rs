//! Label selectors as `kubectl get -l` takes them: `app=web`, `app==web`,
//! `tier!=db`, `app` (has the label), `!app` (has not), `env in (a,b)`,
//! `env notin (a,b)`, joined by commas (all must hold).

use std::collections::BTreeSet;

use anyhow::{Result, bail};
use serde_json::Value;

/// One requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
}

/// A parsed selector: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector(Vec<Requirement>);

impl Selector {
    /// Parses `text`; an error names the requirement it cannot read.
    pub fn parse(text: &str) -> Result<Selector> {
        if text.trim().is_empty() {
            return Ok(Selector::default());
        }
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                bail!("label selector {text:?}: an empty requirement (two commas in a row?)");
            }
            requirements.push(requirement(part).ok_or_else(|| {
                anyhow::anyhow!(
                    "label selector {text:?}: cannot read {part:?}; use key=value, key!=value, key, !key, key in (a,b) or key notin (a,b)"
                )
            })?);
        }
        Ok(Selector(requirements))
    }

    /// Whether an object with these `labels` (a JSON object, or null) is
    /// selected.
    pub fn matches(&self, labels: &Value) -> bool {
        let get = |key: &str| labels.get(key).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            // Kubernetes: `!=` also selects objects without the label.
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::Absent(k) => get(k).is_none(),
            Requirement::In(k, values) => get(k).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(k, values) => get(k).is_none_or(|v| !values.contains(v)),
        })
    }
}

/// Splits on commas outside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut from) = (0, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[from..]);
    parts
}

fn key(text: &str) -> Option<String> {
    let text = text.trim();
    let ok = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    ok.then(|| text.to_string())
}

fn value(text: &str) -> Option<String> {
    let text = text.trim();
    text.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .then(|| text.to_string())
}

fn set(text: &str) -> Option<BTreeSet<String>> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    inner.split(',').map(value).collect()
}

fn requirement(part: &str) -> Option<Requirement> {
    if let Some(k) = part.strip_prefix('!') {
        return Some(Requirement::Absent(key(k)?));
    }
    if let Some((k, v)) = part.split_once("!=") {
        return Some(Requirement::NotEquals(key(k)?, value(v)?));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Some(Requirement::Equals(key(k)?, value(v)?));
    }
    if let Some((k, rest)) = part.split_once(" notin ") {
        return Some(Requirement::NotIn(key(k)?, set(rest)?));
    }
    if let Some((k, rest)) = part.split_once(" in ") {
        return Some(Requirement::In(key(k)?, set(rest)?));
    }
    Some(Requirement::Exists(key(part)?))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn selects_as_kubectl_does() {
        let web = json!({"app": "kubia", "tier": "web"});
        let db = json!({"app": "kubia", "tier": "db", "disk": "ssd"});
        let none = Value::Null;
        let picks = |selector: &str| -> [bool; 3] {
            let s = Selector::parse(selector).unwrap();
            [s.matches(&web), s.matches(&db), s.matches(&none)]
        };
        assert_eq!(picks("app=kubia"), [true, true, false]);
        assert_eq!(picks("app==kubia,tier=web"), [true, false, false]);
        assert_eq!(picks("tier!=web"), [false, true, true]);
        assert_eq!(picks("disk"), [false, true, false]);
        assert_eq!(picks("!disk"), [true, false, true]);
        assert_eq!(picks("tier in (web, cache)"), [true, false, false]);
        assert_eq!(picks("tier notin (web),app"), [false, true, false]);
        assert_eq!(picks(""), [true, true, true]);
    }

    #[test]
    fn a_selector_it_cannot_read_is_refused_by_name() {
        for bad in ["app=kubia,,tier=web", "app in web", "a b", "app=(x)"] {
            let err = Selector::parse(bad).unwrap_err().to_string();
            assert!(err.contains("label selector"), "{bad}: {err}");
        }
    }
}
