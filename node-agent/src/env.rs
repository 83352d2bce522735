//! A container's environment and command line, as the kubelet makes them:
//! each variable in order, a `valueFrom.fieldRef` or `resourceFieldRef`
//! resolved against the pod, a literal value expanded with the variables
//! defined before it; then `$(VAR)` in `command` and `args` expanded with
//! all of them (Kubernetes' `third_party/forked/golang/expansion`).

use std::collections::BTreeMap;

use petset_core::quantity::Quantity;
use petset_proto::v1;

/// Kubernetes' `$(VAR)` expansion of `input`: `$(NAME)` becomes the value
/// `lookup` gives NAME, or stays `$(NAME)` when it gives none; `$$` is a
/// literal `$` (so `$$(NAME)` is the text `$(NAME)`); any other `$`, and an
/// unclosed `$(`, stay as they are.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        match after.chars().next() {
            // A `$` at the very end.
            None => {
                out.push('$');
                rest = after;
            }
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('(') => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 1..];
                }
                // Incomplete: `$(` stays, the rest is read on.
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            Some(c) => {
                out.push('$');
                out.push(c);
                rest = &after[c.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// What a container's variables may refer to.
#[derive(Debug, Clone)]
pub struct PodFacts<'a> {
    /// The pod.
    pub pod: &'a v1::Pod,
    /// Its address.
    pub pod_ip: String,
    /// Its node's address.
    pub host_ip: String,
    /// The node's allocatable cpu (millicores) and memory (bytes): what an
    /// unset limit stands for.
    pub node: NodeAllocatable,
}

/// What a node can give its pods.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeAllocatable {
    /// Millicores.
    pub cpu_milli: u64,
    /// Bytes.
    pub memory_bytes: u64,
}

impl NodeAllocatable {
    /// This machine's: its cpus, and its memory (`/proc/meminfo`).
    pub fn of_this_machine() -> NodeAllocatable {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().strip_suffix("kB"))
                    .and_then(|kb| kb.trim().parse::<u64>().ok())
            })
            .map_or(0, |kb| kb * 1024);
        NodeAllocatable {
            cpu_milli: cpus * 1000,
            memory_bytes: memory,
        }
    }
}

/// The environment of `container` in the pod: its variables in order, each
/// `valueFrom` resolved and each literal value expanded with the ones
/// before it. A later definition of a name replaces an earlier one.
pub fn environment(
    facts: &PodFacts<'_>,
    container: &v1::Container,
) -> Result<BTreeMap<String, String>, String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for (i, var) in container.env.iter().enumerate() {
        let value = match &var.value_from {
            Some(source) => resolve(facts, container, source)
                .map_err(|e| format!("env[{i}] {}: {e}", var.name))?,
            None => expand(&var.value, |name| env.get(name).cloned()),
        };
        env.insert(var.name.clone(), value);
    }
    Ok(env)
}

/// `command` and `args` with `$(VAR)` expanded from `env`.
pub fn expand_all(words: &[String], env: &BTreeMap<String, String>) -> Vec<String> {
    words
        .iter()
        .map(|w| expand(w, |name| env.get(name).cloned()))
        .collect()
}

fn resolve(
    facts: &PodFacts<'_>,
    container: &v1::Container,
    source: &v1::EnvVarSource,
) -> Result<String, String> {
    if let Some(field) = &source.field_ref {
        return field_value(facts, &field.field_path);
    }
    if let Some(resource) = &source.resource_field_ref {
        let spec = facts.pod.spec.as_ref();
        let target = if resource.container_name.is_empty() {
            Some(container)
        } else {
            spec.and_then(|s| {
                s.containers
                    .iter()
                    .find(|c| c.name == resource.container_name)
            })
        }
        .ok_or_else(|| format!("no container {:?} in the pod", resource.container_name))?;
        return resource_value(target, &resource.resource, &resource.divisor, facts.node);
    }
    // The API refuses these; a record from before that is answered alike.
    Err("ConfigMaps and Secrets do not exist in petset".into())
}

/// The value of a pod field (Kubernetes' downward API for env).
pub fn field_value(facts: &PodFacts<'_>, path: &str) -> Result<String, String> {
    let meta = facts.pod.metadata.clone().unwrap_or_default();
    let keyed = |prefix: &str| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(key.to_string())
    };
    Ok(match path {
        "metadata.name" => meta.name,
        "metadata.namespace" => meta.namespace,
        "metadata.uid" => meta.uid,
        "spec.nodeName" => facts.pod.node_name.clone(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        _ => {
            if let Some(key) = keyed("metadata.labels['") {
                meta.labels.get(&key).cloned().unwrap_or_default()
            } else if let Some(key) = keyed("metadata.annotations['") {
                meta.annotations.get(&key).cloned().unwrap_or_default()
            } else {
                return Err(format!("unsupported fieldPath {path:?}"));
            }
        }
    })
}

/// A container's cpu or memory request or limit in units of `divisor`,
/// rounded up (cpu with divisor `1` is whole cores, `1m` millicores), as
/// Kubernetes answers it: an unset limit is the node's allocatable, an
/// unset request is the limit when one is set (API defaulting), else 0.
pub fn resource_value(
    container: &v1::Container,
    resource: &str,
    divisor: &str,
    node: NodeAllocatable,
) -> Result<String, String> {
    let (which, name) = resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resource {resource:?}"))?;
    let (node_amount, unit): (u64, fn(&Quantity) -> Option<u64>) = match name {
        "cpu" => (node.cpu_milli, Quantity::milli_value),
        "memory" => (node.memory_bytes, Quantity::value),
        _ => return Err(format!("unsupported resource {resource:?}")),
    };
    let resources = container.resources.clone().unwrap_or_default();
    let parse = |q: &String| -> Result<u64, String> {
        Quantity::parse(q)
            .map_err(|e| format!("{resource}: {e}"))
            .and_then(|q| unit(&q).ok_or_else(|| format!("{resource}: out of range")))
    };
    let limit = resources.limits.get(name).map(parse).transpose()?;
    let amount = match which {
        "limits" => limit.unwrap_or(node_amount),
        "requests" => match resources.requests.get(name) {
            Some(q) => parse(q)?,
            None => limit.unwrap_or(0),
        },
        _ => return Err(format!("unsupported resource {resource:?}")),
    };
    let divisor = if divisor.is_empty() { "1" } else { divisor };
    let divisor = Quantity::parse(divisor).map_err(|e| format!("divisor: {e}"))?;
    let (n, d) = (Some(amount), unit(&divisor));
    let (n, d) = n
        .zip(d)
        .filter(|(_, d)| *d > 0)
        .ok_or_else(|| format!("{resource}: the value or its divisor is out of range"))?;
    Ok(n.div_ceil(d).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "VAR_A" => Some("A".into()),
            "VAR_B" => Some("B".into()),
            "VAR_EMPTY" => Some(String::new()),
            "VAR_REF" => Some("$(VAR_A)".into()),
            _ => None,
        }
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        for (input, want) in [
            ("$(VAR_A)", "A"),
            ("___$(VAR_B)___", "___B___"),
            ("$(VAR_A)-$(VAR_A)", "A-A"),
            ("$(VAR_A)$(VAR_B)", "AB"),
            ("$(VAR_EMPTY)", ""),
            ("$(UNKNOWN)", "$(UNKNOWN)"),
            ("$(UNKNOWN)-$(VAR_A)", "$(UNKNOWN)-A"),
            // An expanded value is not expanded again.
            ("$(VAR_REF)", "$(VAR_A)"),
            // $$ escapes.
            ("$$(VAR_A)", "$(VAR_A)"),
            ("$$$(VAR_A)", "$A"),
            ("$$$$(VAR_A)", "$$(VAR_A)"),
            ("f000-$$VAR_A", "f000-$VAR_A"),
            // A $ that starts nothing stays.
            ("$VAR_A", "$VAR_A"),
            ("${VAR_A}", "${VAR_A}"),
            ("$", "$"),
            ("a$", "a$"),
            ("$é", "$é"),
            // An unclosed reference stays; what follows is read on.
            ("$(VAR_A", "$(VAR_A"),
            ("$(VAR_A$(VAR_B)", "$(VAR_A$(VAR_B)"),
            ("$($(VAR_A)", "$($(VAR_A)"),
            ("$()", "$()"),
            ("", ""),
            ("no refs", "no refs"),
        ] {
            assert_eq!(expand(input, lookup), want, "{input:?}");
        }
    }

    fn pod() -> v1::Pod {
        v1::Pod {
            metadata: Some(v1::ObjectMeta {
                name: "web-1".into(),
                namespace: "shop".into(),
                uid: "u-1".into(),
                labels: [("app".to_string(), "web".to_string())].into(),
                annotations: [("team".to_string(), "blue".to_string())].into(),
                ..Default::default()
            }),
            node_name: "node-2".into(),
            ..Default::default()
        }
    }

    fn var(name: &str, value: &str) -> v1::EnvVar {
        v1::EnvVar {
            name: name.into(),
            value: value.into(),
            value_from: None,
        }
    }

    fn field(name: &str, path: &str) -> v1::EnvVar {
        v1::EnvVar {
            name: name.into(),
            value: String::new(),
            value_from: Some(v1::EnvVarSource {
                field_ref: Some(v1::ObjectFieldSelector {
                    api_version: "v1".into(),
                    field_path: path.into(),
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn variables_resolve_in_order_from_the_pod_and_earlier_variables() {
        let pod = pod();
        let facts = PodFacts {
            pod: &pod,
            pod_ip: "10.1.2.3".into(),
            host_ip: "192.168.0.2".into(),
            node: NodeAllocatable::default(),
        };
        let container = v1::Container {
            env: vec![
                // Refers to a variable defined later: left as it is.
                var("EARLY", "$(POD)"),
                field("POD", "metadata.name"),
                field("NS", "metadata.namespace"),
                field("UID", "metadata.uid"),
                field("APP", "metadata.labels['app']"),
                field("TEAM", "metadata.annotations['team']"),
                field("NONE", "metadata.labels['missing']"),
                field("NODE", "spec.nodeName"),
                field("IP", "status.podIP"),
                field("HOST", "status.hostIP"),
                var("URL", "http://$(POD).$(NS):$(PORT)/$$(POD)"),
                var("PORT", "8080"),
            ],
            command: vec!["serve".into(), "--name=$(POD)".into()],
            args: vec!["--peer=$(IP):$(PORT)".into(), "$(UNSET)".into()],
            ..Default::default()
        };
        let env = environment(&facts, &container).unwrap();
        let want: BTreeMap<String, String> = [
            ("EARLY", "$(POD)"),
            ("POD", "web-1"),
            ("NS", "shop"),
            ("UID", "u-1"),
            ("APP", "web"),
            ("TEAM", "blue"),
            ("NONE", ""),
            ("NODE", "node-2"),
            ("IP", "10.1.2.3"),
            ("HOST", "192.168.0.2"),
            ("URL", "http://web-1.shop:$(PORT)/$(POD)"),
            ("PORT", "8080"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(env, want);
        assert_eq!(
            expand_all(&container.command, &env),
            ["serve", "--name=web-1"]
        );
        assert_eq!(
            expand_all(&container.args, &env),
            ["--peer=10.1.2.3:8080", "$(UNSET)"]
        );
    }

    #[test]
    fn resources_come_in_units_of_the_divisor_rounded_up() {
        let container = v1::Container {
            name: "db".into(),
            resources: Some(v1::ResourceRequirements {
                requests: [
                    ("cpu".to_string(), "250m".to_string()),
                    ("memory".to_string(), "64Mi".to_string()),
                ]
                .into(),
                limits: [("cpu".to_string(), "1500m".to_string())].into(),
            }),
            ..Default::default()
        };
        let node = NodeAllocatable {
            cpu_milli: 4000,
            memory_bytes: 8 << 30,
        };
        for (resource, divisor, want) in [
            ("requests.cpu", "", "1"),
            ("requests.cpu", "1m", "250"),
            ("limits.cpu", "1", "2"),
            ("limits.cpu", "1m", "1500"),
            ("requests.memory", "", "67108864"),
            ("requests.memory", "1Mi", "64"),
            ("requests.memory", "1M", "68"),
            // No memory limit: the node's allocatable.
            ("limits.memory", "1Gi", "8"),
        ] {
            assert_eq!(
                resource_value(&container, resource, divisor, node).unwrap(),
                want,
                "{resource} / {divisor:?}"
            );
        }
        // No request but a limit: the limit (API defaulting); neither: 0.
        let limited = v1::Container {
            resources: Some(v1::ResourceRequirements {
                limits: [("memory".to_string(), "1Gi".to_string())].into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            resource_value(&limited, "requests.memory", "1Mi", node).unwrap(),
            "1024"
        );
        assert_eq!(
            resource_value(&limited, "requests.cpu", "1m", node).unwrap(),
            "0"
        );
        assert!(resource_value(&container, "requests.gpu", "", node).is_err());
        assert!(resource_value(&container, "cpu", "", node).is_err());
        assert!(resource_value(&container, "requests.cpu", "0", node).is_err());
    }

    #[test]
    fn an_unsupported_field_is_an_error_naming_the_variable() {
        let pod = pod();
        let facts = PodFacts {
            pod: &pod,
            pod_ip: String::new(),
            host_ip: String::new(),
            node: NodeAllocatable::default(),
        };
        let container = v1::Container {
            env: vec![var("A", "1"), field("SA", "spec.serviceAccountName")],
            ..Default::default()
        };
        let err = environment(&facts, &container).unwrap_err();
        assert!(
            err.contains("env[1] SA") && err.contains("spec.serviceAccountName"),
            "{err}"
        );
    }
}
