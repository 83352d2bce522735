//! The messages a StatefulSet spec is made of (de)serialize in Kubernetes'
//! own shape (camelCase names, unknown fields refused), so a manifest's
//! `spec` reads straight into them. Kubernetes writes some strings as
//! numbers (`IntOrString` ports, quantities like `cpu: 1`); these accept
//! both.

use std::collections::HashMap;

use serde::{Deserialize, Deserializer};

#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(i64),
    Float(f64),
    String(String),
}

impl IntOrString {
    fn into_string(self) -> String {
        match self {
            IntOrString::Int(n) => n.to_string(),
            IntOrString::Float(f) => f.to_string(),
            IntOrString::String(s) => s,
        }
    }
}

/// A number or a string, kept as a string.
pub fn int_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(IntOrString::deserialize(d)?.into_string())
}

/// A map of quantities, each a number or a string.
pub fn quantities<'de, D: Deserializer<'de>>(d: D) -> Result<HashMap<String, String>, D::Error> {
    let map = HashMap::<String, IntOrString>::deserialize(d)?;
    Ok(map.into_iter().map(|(k, v)| (k, v.into_string())).collect())
}
