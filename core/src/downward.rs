//! What a container's `env[].valueFrom` may name (Kubernetes' downward API
//! for environment variables): the contract the StatefulSet API checks and
//! the node agent resolves.

use crate::quantity::Quantity;

/// Pod fields a `fieldRef` may name, besides `metadata.labels['KEY']` and
/// `metadata.annotations['KEY']`.
pub const FIELD_PATHS: [&str; 8] = [
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "status.podIP",
    "status.podIPs",
    "status.hostIP",
    "status.hostIPs",
];

/// Container resources a `resourceFieldRef` may name.
pub const RESOURCES: [&str; 4] = [
    "limits.cpu",
    "limits.memory",
    "requests.cpu",
    "requests.memory",
];

/// The key of `metadata.labels['KEY']` or `metadata.annotations['KEY']`.
pub fn keyed_field(path: &str) -> Option<(&str, &str)> {
    ["metadata.labels", "metadata.annotations"]
        .into_iter()
        .find_map(|map| {
            let key = path
                .strip_prefix(map)?
                .strip_prefix("['")?
                .strip_suffix("']")?;
            Some((map, key))
        })
}

/// Whether a `fieldRef.fieldPath` is one petset answers; why not if not.
pub fn field_path(path: &str) -> Result<(), String> {
    if FIELD_PATHS.contains(&path) {
        return Ok(());
    }
    match keyed_field(path) {
        Some((_, key)) => crate::validate::label_key(key),
        None => Err(format!(
            "Unsupported value: {path:?}: supported values: {}, metadata.labels['<KEY>'], metadata.annotations['<KEY>']",
            FIELD_PATHS.join(", ")
        )),
    }
}

/// Whether `divisor` is one Kubernetes allows for `resource`.
pub fn divisor(resource: &str, divisor: &str) -> Result<(), String> {
    if divisor.is_empty() {
        return Ok(());
    }
    let allowed: &[&str] = if resource.ends_with(".cpu") {
        &["1m", "1"]
    } else {
        &[
            "1", "1k", "1M", "1G", "1T", "1P", "1E", "1Ki", "1Mi", "1Gi", "1Ti", "1Pi", "1Ei",
        ]
    };
    // The same quantity written otherwise ("1000m" for "1") is the same.
    let value = |q: &str| Quantity::parse(q).ok().and_then(|q| q.milli_value());
    let given = value(divisor);
    if given.is_some() && allowed.iter().any(|a| value(a) == given) {
        Ok(())
    } else {
        Err(format!(
            "Unsupported value: {divisor:?}: supported values for {resource}: {}",
            allowed.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_paths_and_divisors_follow_kubernetes() {
        for ok in [
            "metadata.name",
            "status.podIP",
            "metadata.labels['app']",
            "metadata.annotations['example.com/team']",
        ] {
            assert_eq!(field_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "metadata.labels",
            "spec.serviceAccountName",
            "metadata.labels[app]",
            "metadata.labels['bad key']",
            "",
        ] {
            assert!(field_path(bad).is_err(), "{bad}");
        }
        assert_eq!(divisor("limits.cpu", "1m"), Ok(()));
        assert_eq!(divisor("limits.cpu", "1000m"), Ok(()));
        assert_eq!(divisor("requests.memory", "1Mi"), Ok(()));
        assert!(divisor("limits.cpu", "1Mi").is_err());
        assert!(divisor("limits.memory", "3").is_err());
        assert!(divisor("limits.memory", "lots").is_err());
    }
}
