//! The naming and number rules Kubernetes gives its objects, shared by every
//! service so that one name is valid everywhere or nowhere.
//!
//! Each check answers `Err(reason)` with the rule, ready for
//! [`crate::error::Violations::check`].

use std::collections::BTreeMap;

use crate::error::Violations;

/// Longest DNS-1123 label: 63 characters.
pub const DNS1123_LABEL_MAX: usize = 63;
/// Longest DNS-1123 subdomain: 253 characters.
pub const DNS1123_SUBDOMAIN_MAX: usize = 253;
/// Longest IANA service name (a port name): 15 characters.
pub const IANA_SVC_NAME_MAX: usize = 15;

/// A DNS-1123 label: lower-case letters, digits and '-', starting and ending
/// with a letter or digit, at most 63 characters.
pub fn dns1123_label(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > DNS1123_LABEL_MAX {
        return Err(format!(
            "must be no more than {DNS1123_LABEL_MAX} characters (DNS-1123 label), got {}",
            value.len()
        ));
    }
    let ok_inner = value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ends_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = value.as_bytes();
    if !ok_inner || !ends_ok(bytes[0]) || !ends_ok(bytes[bytes.len() - 1]) {
        return Err(format!(
            "{value:?} is not a DNS-1123 label: use lower-case letters, digits and '-', \
             starting and ending with a letter or digit (e.g. 'my-name' or '123-abc')"
        ));
    }
    Ok(())
}

/// A DNS-1123 subdomain: DNS-1123 labels joined by '.', at most 253 characters.
pub fn dns1123_subdomain(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > DNS1123_SUBDOMAIN_MAX {
        return Err(format!(
            "must be no more than {DNS1123_SUBDOMAIN_MAX} characters (DNS-1123 subdomain), got {}",
            value.len()
        ));
    }
    for label in value.split('.') {
        dns1123_label(label).map_err(|_| {
            format!(
                "{value:?} is not a DNS-1123 subdomain: use lower-case letters, digits, '-' and '.', \
                 each part starting and ending with a letter or digit (e.g. 'example.com')"
            )
        })?;
    }
    Ok(())
}

/// An IANA service name, which is what a named port must be: at most 15
/// lower-case letters, digits and '-', with at least one letter, no '-' at
/// either end and no two '-' in a row.
pub fn iana_svc_name(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > IANA_SVC_NAME_MAX {
        return Err(format!(
            "must be no more than {IANA_SVC_NAME_MAX} characters (IANA service name), got {}",
            value.len()
        ));
    }
    let chars_ok = value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !chars_ok || value.starts_with('-') || value.ends_with('-') || value.contains("--") {
        return Err(format!(
            "{value:?} is not an IANA service name: use lower-case letters, digits and single '-' inside (e.g. 'http')"
        ));
    }
    if !value.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(format!(
            "{value:?} is not an IANA service name: it must contain at least one letter"
        ));
    }
    Ok(())
}

/// A port number: 1 to 65535.
pub fn port(value: i64) -> Result<(), String> {
    if (1..=65535).contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "must be between 1 and 65535, inclusive; got {value}"
        ))
    }
}

/// A transport protocol, as Kubernetes names them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Protocol {
    /// TCP, the default.
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// Parses `TCP`, `UDP` or `SCTP`; empty means TCP.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value {
            "" | "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            other => Err(format!(
                "unsupported value {other:?}: supported values are \"TCP\", \"UDP\", \"SCTP\""
            )),
        }
    }

    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// The SRV label spelling (`tcp`, `udp`, `sctp`).
    pub fn srv_label(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One port of a list (a service's ports, a pod's container ports): its
/// name is an IANA service name, required when the port is one of several;
/// its protocol and number are valid. Each broken rule is recorded under
/// `<field>.name`, `<field>.protocol` or `<field>.port`. Answers the protocol
/// and number when both are valid.
pub fn named_port(
    v: &mut Violations,
    field: &str,
    name: &str,
    number: i32,
    protocol: &str,
    one_of_several: bool,
) -> Option<(Protocol, u16)> {
    if name.is_empty() {
        if one_of_several {
            v.add(
                format!("{field}.name"),
                "is required when there is more than one port",
            );
        }
    } else {
        v.check(format!("{field}.name"), iana_svc_name(name));
    }
    let protocol = Protocol::parse(protocol)
        .map_err(|reason| v.add(format!("{field}.protocol"), reason))
        .ok();
    let number = port(number.into())
        .map_err(|reason| v.add(format!("{field}.port"), reason))
        .ok()
        .map(|()| number as u16);
    protocol.zip(number)
}

/// A label key: an optional DNS-1123 subdomain prefix and '/', then a name of
/// at most 63 alphanumerics, '-', '_' or '.', starting and ending with an
/// alphanumeric.
pub fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        dns1123_subdomain(prefix)
            .map_err(|reason| format!("prefix of label key {key:?}: {reason}"))?;
    }
    qualified_name_part(name).map_err(|reason| format!("label key {key:?}: {reason}"))
}

/// A label value: empty, or at most 63 alphanumerics, '-', '_' or '.',
/// starting and ending with an alphanumeric.
pub fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    qualified_name_part(value).map_err(|reason| format!("label value {value:?}: {reason}"))
}

fn qualified_name_part(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > DNS1123_LABEL_MAX {
        return Err("must be 1 to 63 characters".into());
    }
    let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.';
    let bytes = name.as_bytes();
    if !bytes.iter().all(|&b| ok(b))
        || !bytes[0].is_ascii_alphanumeric()
        || !bytes[bytes.len() - 1].is_ascii_alphanumeric()
    {
        return Err("must consist of alphanumerics, '-', '_' or '.', and start and end with an alphanumeric".into());
    }
    Ok(())
}

/// Every key and value of a label map (labels, selectors).
pub fn labels(map: &BTreeMap<String, String>) -> Result<(), String> {
    for (key, value) in map {
        label_key(key)?;
        label_value(value)?;
    }
    Ok(())
}

/// The namespace an empty one stands for.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Turns an empty namespace into `default`, as Kubernetes does.
pub fn namespace_or_default(namespace: &str) -> String {
    if namespace.is_empty() {
        DEFAULT_NAMESPACE.to_string()
    } else {
        namespace.to_string()
    }
}

/// Checks a request's `namespace` (empty: `default`, else a DNS-1123 label)
/// and `name` (under `name_rule`), naming both fields; answers the
/// namespace.
pub fn namespaced_name(
    namespace: &str,
    name: &str,
    name_rule: fn(&str) -> Result<(), String>,
) -> crate::Result<String> {
    let namespace = namespace_or_default(namespace);
    let mut v = Violations::new();
    v.check("namespace", dns1123_label(&namespace));
    v.check("name", name_rule(name));
    v.into_result()?;
    Ok(namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_dns1123() {
        for ok in ["a", "kubia", "web-0", "0", "a1-b2", &"a".repeat(63)] {
            assert_eq!(dns1123_label(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "ä",
            &"a".repeat(64),
            "a\0b",
            "../x",
        ] {
            assert!(dns1123_label(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn subdomains_are_dotted_labels() {
        assert!(dns1123_subdomain("cluster.local").is_ok());
        assert!(dns1123_subdomain("a..b").is_err());
        assert!(dns1123_subdomain(".a").is_err());
        assert!(dns1123_subdomain(&"a.".repeat(127)).is_err());
    }

    #[test]
    fn port_names_are_iana_service_names() {
        assert!(iana_svc_name("http").is_ok());
        assert!(iana_svc_name("h2-c").is_ok());
        for bad in ["", "123", "a--b", "-a", "HTTP", "way-too-long-name"] {
            assert!(iana_svc_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ports_and_protocols() {
        assert!(port(1).is_ok() && port(65535).is_ok());
        assert!(port(0).is_err() && port(65536).is_err() && port(-1).is_err());
        assert_eq!(Protocol::parse(""), Ok(Protocol::Tcp));
        assert_eq!(Protocol::parse("SCTP"), Ok(Protocol::Sctp));
        assert!(Protocol::parse("tcp").unwrap_err().contains("\"TCP\""));
    }

    #[test]
    fn label_keys_and_values() {
        assert!(label_key("app").is_ok());
        assert!(label_key("statefulset.kubernetes.io/pod-name").is_ok());
        assert!(label_key("Bad Key").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("kubia").is_ok());
        assert!(label_value("-x").is_err());
    }
}
