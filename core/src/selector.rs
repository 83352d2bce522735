//! Kubernetes node selectors (`nodeAffinity.required.nodeSelectorTerms`):
//! which nodes a volume (and so its pod) may live on.
//!
//! A node matches a selector when it matches any of its terms, and a term
//! when it meets all of its requirements. Every node carries the label
//! `kubernetes.io/hostname` with its name, so a node-local volume pins its
//! pod with `kubernetes.io/hostname In [<node>]`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Violations;
use crate::validate;

/// The label every node has, holding its name.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// How a requirement compares a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operator {
    /// The label's value is one of the values.
    In,
    /// The label is absent or its value is none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
    /// The label's value, as an integer, is greater than the one value.
    Gt,
    /// The label's value, as an integer, is less than the one value.
    Lt,
}

/// `key operator values`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// The comparison.
    pub operator: Operator,
    /// The values it compares with.
    pub values: Vec<String>,
}

/// Any of the terms; each term is all of its requirements.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSelector {
    /// The terms, ORed.
    pub terms: Vec<Vec<Requirement>>,
}

impl NodeSelector {
    /// Pins to one node by name.
    pub fn hostname(node: &str) -> NodeSelector {
        NodeSelector {
            terms: vec![vec![Requirement {
                key: HOSTNAME_LABEL.into(),
                operator: Operator::In,
                values: vec![node.into()],
            }]],
        }
    }

    /// Whether a node with `labels` matches. A selector with no terms
    /// matches no node, as in Kubernetes.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.terms
            .iter()
            .any(|term| term.iter().all(|r| r.matches(labels)))
    }

    /// Whether the node called `node`, knowing only its name, matches.
    pub fn matches_node(&self, node: &str) -> bool {
        self.matches(&node_labels(node))
    }

    /// The node names the selector allows, when it names them (every term
    /// pins `kubernetes.io/hostname In [...]`); `None` when it selects by
    /// other labels.
    pub fn pinned_nodes(&self) -> Option<Vec<String>> {
        let mut nodes = Vec::new();
        for term in &self.terms {
            let pin = term
                .iter()
                .find(|r| r.key == HOSTNAME_LABEL && r.operator == Operator::In)?;
            nodes.extend(pin.values.iter().cloned());
        }
        nodes.sort();
        nodes.dedup();
        Some(nodes)
    }

    /// Builds a selector from API parts, naming broken rules under `field`.
    pub fn parse<'a>(
        field: &str,
        terms: impl IntoIterator<Item = Vec<(&'a str, &'a str, Vec<String>)>>,
        violations: &mut Violations,
    ) -> NodeSelector {
        let mut out = NodeSelector::default();
        for (t, term) in terms.into_iter().enumerate() {
            let mut requirements = Vec::new();
            if term.is_empty() {
                violations.add(
                    format!("{field}.nodeSelectorTerms[{t}]"),
                    "must have at least one match expression",
                );
            }
            for (r, (key, operator, values)) in term.into_iter().enumerate() {
                let at = format!("{field}.nodeSelectorTerms[{t}].matchExpressions[{r}]");
                violations.check(format!("{at}.key"), validate::label_key(key));
                let operator = match operator {
                    "In" => Operator::In,
                    "NotIn" => Operator::NotIn,
                    "Exists" => Operator::Exists,
                    "DoesNotExist" => Operator::DoesNotExist,
                    "Gt" => Operator::Gt,
                    "Lt" => Operator::Lt,
                    other => {
                        violations.add(
                            format!("{at}.operator"),
                            format!(
                                "must be In, NotIn, Exists, DoesNotExist, Gt or Lt, got {other:?}"
                            ),
                        );
                        continue;
                    }
                };
                let values_ok = match operator {
                    Operator::In | Operator::NotIn => !values.is_empty(),
                    Operator::Exists | Operator::DoesNotExist => values.is_empty(),
                    Operator::Gt | Operator::Lt => {
                        values.len() == 1 && values[0].parse::<i64>().is_ok()
                    }
                };
                if !values_ok {
                    violations.add(
                        format!("{at}.values"),
                        match operator {
                            Operator::In | Operator::NotIn => "must have at least one value",
                            Operator::Exists | Operator::DoesNotExist => "must be empty",
                            Operator::Gt | Operator::Lt => "must be exactly one integer",
                        },
                    );
                }
                for (v, value) in values.iter().enumerate() {
                    violations.check(format!("{at}.values[{v}]"), validate::label_value(value));
                }
                requirements.push(Requirement {
                    key: key.into(),
                    operator,
                    values,
                });
            }
            out.terms.push(requirements);
        }
        out
    }
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::Gt | Operator::Lt => {
                let (Some(have), Some(want)) = (
                    value.and_then(|v| v.parse::<i64>().ok()),
                    self.values.first().and_then(|v| v.parse::<i64>().ok()),
                ) else {
                    return false;
                };
                if self.operator == Operator::Gt {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

/// The labels a node has when nothing but its name is known.
pub fn node_labels(node: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(HOSTNAME_LABEL.to_string(), node.to_string())])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn hostname_pins_one_node() {
        let s = NodeSelector::hostname("n1");
        assert!(s.matches_node("n1"));
        assert!(!s.matches_node("n2"));
        assert_eq!(s.pinned_nodes(), Some(vec!["n1".to_string()]));
        assert!(!NodeSelector::default().matches_node("n1"));
    }

    #[test]
    fn operators() {
        let mut v = Violations::new();
        let s = NodeSelector::parse(
            "affinity",
            [
                vec![
                    ("zone", "In", vec!["a".into(), "b".into()]),
                    ("disk", "Exists", vec![]),
                    ("gen", "Gt", vec!["3".into()]),
                ],
                vec![
                    ("spot", "DoesNotExist", vec![]),
                    ("zone", "NotIn", vec!["a".into()]),
                ],
            ],
            &mut v,
        );
        v.into_result().unwrap();
        assert!(s.matches(&labels(&[("zone", "a"), ("disk", "ssd"), ("gen", "4")])));
        assert!(!s.matches(&labels(&[
            ("zone", "a"),
            ("disk", "ssd"),
            ("gen", "3"),
            ("spot", "1")
        ])));
        assert!(s.matches(&labels(&[("zone", "c")])));
        assert_eq!(s.pinned_nodes(), None);
    }

    #[test]
    fn bad_requirements_are_named() {
        let mut v = Violations::new();
        NodeSelector::parse(
            "spec.nodeAffinity.required",
            [vec![
                ("zone", "Near", vec![]),
                ("disk", "Exists", vec!["x".into()]),
                ("gen", "Gt", vec!["x".into()]),
            ]],
            &mut v,
        );
        let text = v.into_result().unwrap_err().to_string();
        assert!(
            text.contains("matchExpressions[0].operator: must be In"),
            "{text}"
        );
        assert!(
            text.contains("matchExpressions[1].values: must be empty"),
            "{text}"
        );
        assert!(
            text.contains("matchExpressions[2].values: must be exactly one integer"),
            "{text}"
        );
    }
}
