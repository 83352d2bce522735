//! Choosing a node for a new pod: a pure function over the nodes and what
//! already runs on them.
//!
//! # Rules
//! - Only Ready nodes (their lease alive) with room: fewer pods than their
//!   pod capacity, and the pod's cpu and memory requests within what the
//!   requests of the pods already there leave free.
//! - A claim bound to a node-local volume pins the pod to that node; the
//!   template's `nodeSelector` must match the node's labels.
//! - A node that refused this pod a moment ago (the kubelet's admission:
//!   `OutOfpods`) is not chosen again while the refusal is fresh.
//! - The caller counts the pods it placed that its view of the store does
//!   not show yet (kube-scheduler's assume cache), so a burst spreads and
//!   no node is given more than its capacity.
//! - Among the nodes left, the one with the fewest pods of the same set (so
//!   a set spreads), then the fewest pods overall, then the name that sorts
//!   first: every replica of the scheduler decides the same.

use std::collections::BTreeMap;

use petset_core::selector::NodeSelector;

/// A node as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// Its name.
    pub name: String,
    /// Its lease is alive.
    pub ready: bool,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Pod capacity.
    pub pods: u32,
    /// Cpu capacity, millicores.
    pub cpu_milli: u64,
    /// Memory capacity, bytes.
    pub memory_bytes: u64,
}

/// What one pod asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// Millicores.
    pub cpu_milli: u64,
    /// Bytes.
    pub memory_bytes: u64,
    /// The template's node selector.
    pub node_selector: BTreeMap<String, String>,
    /// Node affinities of the pod's bound volumes: all must match.
    pub volume_affinity: Vec<NodeSelector>,
    /// Nodes that refused the pod lately, with their reason.
    pub refused_by: BTreeMap<String, String>,
}

/// A pod already bound to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// The node.
    pub node: String,
    /// Whether it belongs to the set being placed.
    pub same_set: bool,
    /// Its requests.
    pub cpu_milli: u64,
    /// Its requests.
    pub memory_bytes: u64,
}

/// What a node already holds, summed over its pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Pods.
    pub pods: u32,
    /// Pods of the set being placed.
    pub same_set: u32,
    /// Their cpu requests, millicores.
    pub cpu_milli: u64,
    /// Their memory requests, bytes.
    pub memory_bytes: u64,
}

/// Each node's [`Load`]: summed once, so that placing a pod costs one
/// look per node, not one per pod.
pub type Loads = BTreeMap<String, Load>;

/// Adds `bound` pods to `loads`.
pub fn add(loads: &mut Loads, bound: impl IntoIterator<Item = Bound>) {
    for b in bound {
        let load = loads.entry(b.node).or_default();
        load.pods += 1;
        load.same_set += u32::from(b.same_set);
        load.cpu_milli += b.cpu_milli;
        load.memory_bytes += b.memory_bytes;
    }
}

/// The chosen node, or why none fits.
pub fn choose(request: &Request, nodes: &[NodeView], loads: &Loads) -> Result<String, String> {
    let mut reasons: BTreeMap<String, u32> = BTreeMap::new();
    let mut best: Option<((u32, u32, &str), &NodeView)> = None;
    for node in nodes {
        let here = loads.get(&node.name).copied().unwrap_or_default();
        let (cpu, memory) = (here.cpu_milli, here.memory_bytes);
        let refusal = if !node.ready {
            Some("node not ready")
        } else if request.refused_by.contains_key(&node.name) {
            Some("node refused the pod")
        } else if !request
            .volume_affinity
            .iter()
            .all(|a| a.matches(&node.labels))
        {
            Some("volume node affinity conflict")
        } else if !request
            .node_selector
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v))
        {
            Some("node selector does not match")
        } else if here.pods >= node.pods {
            Some("too many pods")
        } else if cpu + request.cpu_milli > node.cpu_milli {
            Some("insufficient cpu")
        } else if memory + request.memory_bytes > node.memory_bytes {
            Some("insufficient memory")
        } else {
            None
        };
        if let Some(reason) = refusal {
            *reasons.entry(reason.to_string()).or_default() += 1;
            continue;
        }
        let score = (here.same_set, here.pods, node.name.as_str());
        if best.as_ref().is_none_or(|(s, _)| score < *s) {
            best = Some((score, node));
        }
    }
    match best {
        Some((_, node)) => Ok(node.name.clone()),
        None if nodes.is_empty() => Err("0 nodes are registered".into()),
        None => Err(format!(
            "0/{} nodes are available: {}",
            nodes.len(),
            reasons
                .iter()
                .map(|(reason, n)| format!("{n} {reason}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use petset_core::selector::node_labels;

    fn node(name: &str, pods: u32) -> NodeView {
        NodeView {
            name: name.into(),
            ready: true,
            labels: node_labels(name),
            pods,
            cpu_milli: 2000,
            memory_bytes: 1 << 30,
        }
    }

    fn bound(node: &str, same_set: bool) -> Bound {
        Bound {
            node: node.into(),
            same_set,
            cpu_milli: 500,
            memory_bytes: 1 << 28,
        }
    }

    fn loads<const N: usize>(bound: [Bound; N]) -> Loads {
        let mut loads = Loads::new();
        add(&mut loads, bound);
        loads
    }

    #[test]
    fn spreads_a_set_and_breaks_ties_by_name() {
        let nodes = [node("n2", 10), node("n1", 10), node("n3", 10)];
        assert_eq!(
            choose(&Request::default(), &nodes, &loads([])).unwrap(),
            "n1"
        );
        let placed = [bound("n1", true), bound("n2", false)];
        assert_eq!(
            choose(&Request::default(), &nodes, &loads(placed)).unwrap(),
            "n3"
        );
        let placed = [bound("n1", true), bound("n3", true), bound("n2", false)];
        assert_eq!(
            choose(&Request::default(), &nodes, &loads(placed)).unwrap(),
            "n2"
        );
    }

    #[test]
    fn pins_filters_and_says_why_nothing_fits() {
        let mut down = node("n1", 10);
        down.ready = false;
        let nodes = [down, node("n2", 1), node("n3", 10)];
        let request = Request {
            volume_affinity: vec![NodeSelector::hostname("n3")],
            ..Default::default()
        };
        assert_eq!(choose(&request, &nodes, &Loads::new()).unwrap(), "n3");
        let big = Request {
            cpu_milli: 1800,
            ..Default::default()
        };
        let err = choose(
            &big,
            &nodes,
            &loads([bound("n2", false), bound("n3", false)]),
        )
        .unwrap_err();
        assert_eq!(
            err,
            "0/3 nodes are available: 1 insufficient cpu, 1 node not ready, 1 too many pods"
        );
        let refused = Request {
            refused_by: [("n3".to_string(), "OutOfpods".to_string())].into(),
            ..Default::default()
        };
        assert_eq!(choose(&refused, &nodes, &Loads::new()).unwrap(), "n2");
        assert_eq!(
            choose(&refused, &nodes, &loads([bound("n2", false)])).unwrap_err(),
            "0/3 nodes are available: 1 node not ready, 1 node refused the pod, 1 too many pods"
        );
        let pinned_to_down = Request {
            volume_affinity: vec![NodeSelector::hostname("n1")],
            ..Default::default()
        };
        assert!(choose(&pinned_to_down, &nodes, &Loads::new()).is_err());
    }
}
