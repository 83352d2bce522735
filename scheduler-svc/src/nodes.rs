//! Nodes: a node agent registers its node under an etcd lease and keeps it
//! alive; the node is Ready while the lease lives.
//!
//! # Guarantees
//! - Registration is one transaction: the node record (with the new lease
//!   id) and `nodeleases/<name>` on the lease.
//! - A node is Ready only while the lease of its *current* registration
//!   lives; an old registration's lease that is still alive does not count.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::SystemTime;

use petset_core::error::{Error, Result, Violations};
use petset_core::quantity::Quantity;
use petset_core::selector::HOSTNAME_LABEL;
use petset_core::store::{PutOptions, Store, Txn, TxnOp, Versioned, encode};
use petset_core::validate;

use crate::records::{Capacity, Keys, NodeRecord};
use crate::world::World;

/// Default node lease TTL, seconds.
pub const DEFAULT_TTL: i64 = 10;
/// Longest node lease TTL, seconds.
pub const MAX_TTL: i64 = 300;

/// A checked registration.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The node.
    pub name: String,
    /// Its address.
    pub address: IpAddr,
    /// What it offers.
    pub capacity: Capacity,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Lease TTL.
    pub ttl: i64,
    /// The agent's gRPC address.
    pub agent_endpoint: String,
}

/// Checks a registration; every broken rule is named.
pub fn parse(
    name: &str,
    address: &str,
    capacity: &HashMap<String, String>,
    labels: &HashMap<String, String>,
    ttl: i64,
    agent_endpoint: &str,
) -> Result<Registration> {
    let mut v = Violations::new();
    v.check("name", validate::dns1123_subdomain(name));
    let address = match address.parse::<IpAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            v.add(
                "address",
                format!("must be an IPv4 or IPv6 address, got {address:?}"),
            );
            None
        }
    };
    let mut cap = Capacity {
        cpu_milli: 4000,
        memory_bytes: 8 << 30,
        pods: 110,
    };
    for (key, value) in capacity {
        let field = format!("capacity.{key}");
        let parsed = Quantity::parse(value).map_err(|e| e.to_string());
        match (key.as_str(), parsed) {
            (_, Err(e)) => v.add(field, e),
            ("cpu", Ok(q)) => cap.cpu_milli = q.milli_value().unwrap_or(u64::MAX),
            ("memory", Ok(q)) => cap.memory_bytes = q.value().unwrap_or(u64::MAX),
            ("pods", Ok(q)) => match q.value().and_then(|n| u32::try_from(n).ok()) {
                Some(n) if n > 0 => cap.pods = n,
                _ => v.add(
                    field,
                    format!("must be a whole number of pods, 1 or more, got {value:?}"),
                ),
            },
            (other, Ok(_)) => v.add(
                field,
                format!("only cpu, memory and pods are understood, got {other:?}"),
            ),
        }
    }
    let mut labels: BTreeMap<String, String> = labels.clone().into_iter().collect();
    v.check("labels", validate::labels(&labels));
    labels.insert(HOSTNAME_LABEL.to_string(), name.to_string());
    let ttl = if ttl == 0 { DEFAULT_TTL } else { ttl };
    if !(2..=MAX_TTL).contains(&ttl) {
        v.add(
            "ttl_seconds",
            format!("must be between 2 and {MAX_TTL} seconds, got {ttl}"),
        );
    }
    if !agent_endpoint.is_empty() && agent_endpoint.parse::<std::net::SocketAddr>().is_err() {
        v.add(
            "agent_endpoint",
            format!("must be host:port with an IP address, got {agent_endpoint:?}"),
        );
    }
    v.into_result()?;
    Ok(Registration {
        name: name.to_string(),
        address: address.expect("checked"),
        capacity: cap,
        labels,
        ttl,
        agent_endpoint: agent_endpoint.to_string(),
    })
}

/// The registered nodes.
#[derive(Debug, Clone)]
pub struct Nodes {
    store: Store,
}

impl Nodes {
    /// Nodes kept in `store`.
    pub fn new(store: Store) -> Self {
        Nodes { store }
    }

    /// Registers a node under a new lease; answers the lease id.
    pub async fn register(&self, r: Registration) -> Result<i64> {
        let lease = self.store.grant_lease(r.ttl).await?;
        let keys = Keys(&self.store);
        let record = NodeRecord {
            name: r.name.clone(),
            address: r.address.to_string(),
            capacity: r.capacity,
            labels: r.labels,
            lease_id: lease,
            registered_at: SystemTime::now(),
            agent_endpoint: r.agent_endpoint,
        };
        let txn = Txn::new().and_then([
            TxnOp::put(keys.node(&r.name), encode(&record)?, None),
            TxnOp::put(
                keys.node_lease(&r.name),
                encode(&lease)?,
                Some(PutOptions::new().with_lease(lease)),
            ),
        ]);
        self.store.txn(txn).await?;
        tracing::info!(node = %r.name, address = %r.address, lease, ttl = r.ttl, "node registered");
        Ok(lease)
    }

    /// Renews a node's lease; `NotFound` when it expired or is not the
    /// node's current one.
    pub async fn keep_alive(&self, name: &str, lease: i64) -> Result<i64> {
        let keys = Keys(&self.store);
        let current: Versioned<NodeRecord> =
            self.store.fetch(&keys.node(name), "node", name).await?;
        if current.value.lease_id != lease {
            return Err(Error::NotFound {
                kind: "node lease",
                name: format!(
                    "{lease} of node {name} (the node registered again under {}); register again",
                    current.value.lease_id
                ),
            });
        }
        self.store.renew_lease(lease).await
    }

    /// Every node, with whether it is Ready and how many pods it has.
    pub async fn list(&self) -> Result<Vec<(NodeRecord, bool, u32)>> {
        let world = World::read(&self.store).await?;
        Ok(world
            .nodes
            .values()
            .map(|n| {
                let pods = world
                    .pods
                    .values()
                    .filter(|p| p.value.node == n.name)
                    .count() as u32;
                (n.clone(), world.node_ready(&n.name), pods)
            })
            .collect())
    }
}
