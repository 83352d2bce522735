//! Revisions of a set's pod template (Kubernetes' ControllerRevisions).
//!
//! A revision is named `<set>-<hash>` after a hash of the template's
//! canonical JSON, so the same template always makes the same name: applying
//! an old template again finds its revision (and gives it the next number)
//! rather than making a new one, and pods made from it count as updated.

use std::hash::Hasher as _;

use petset_proto::v1;
use serde_json::Value;

/// The hash part of a revision name: 10 hex digits of FNV-1a over the
/// template's canonical JSON (object keys sorted).
pub fn template_hash(template: &v1::PodTemplateSpec) -> String {
    let value = serde_json::to_value(template).expect("templates serialize");
    let mut text = String::new();
    canonical(&value, &mut text);
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(text.as_bytes());
    let hex = format!("{:016x}", hasher.finish());
    hex[6..].to_string()
}

/// `<set>-<hash>`.
pub fn revision_name(set: &str, template: &v1::PodTemplateSpec) -> String {
    format!("{set}-{}", template_hash(template))
}

fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(image: &str, labels: &[(&str, &str)]) -> v1::PodTemplateSpec {
        v1::PodTemplateSpec {
            metadata: Some(v1::ObjectMeta {
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
            spec: Some(v1::PodSpec {
                containers: vec![v1::Container {
                    name: "app".into(),
                    image: image.into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn same_template_same_name_whatever_the_map_order() {
        let a = template(
            "kubia-pet",
            &[("app", "kubia"), ("tier", "web"), ("z", "1")],
        );
        let b = template(
            "kubia-pet",
            &[("z", "1"), ("tier", "web"), ("app", "kubia")],
        );
        assert_eq!(revision_name("kubia", &a), revision_name("kubia", &b));
        assert_eq!(template_hash(&a).len(), 10);
        let c = template("kubia-pet:v2", &[("app", "kubia")]);
        assert_ne!(template_hash(&a), template_hash(&c));
    }
}
