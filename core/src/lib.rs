//! What every petset service shares: the one API error type, the etcd store
//! layer, the gRPC host (health, reflection, metrics, tracing), settings,
//! telemetry and graceful shutdown.
//!
//! # Layout
//! - [`error`]: the API error and its single mapping to `tonic::Status`.
//! - [`validate`]: Kubernetes' naming and number rules.
//! - [`meta`]: object metadata (uid, generation, resourceVersion).
//! - [`quantity`]: Kubernetes quantities (`1Mi`, `250m`), exactly.
//! - [`selector`]: node selectors (volume node affinity).
//! - [`identity`]: the identity fence (holder, incarnation) every service checks.
//! - [`names`]: pod and claim names, label keys.
//! - [`claim`]: what a claim asks for (access modes, size), checked.
//! - [`store`]: typed etcd access, transactions, leases, watch-fed mirrors.
//! - [`lease_service`]: `petset.v1.Leases`, etcd leases over gRPC.
//! - [`serve`]: the gRPC host every service runs.
//! - [`config`]: flags and environment variables shared by the binaries.
//! - [`telemetry`]: logs, OTLP traces, Prometheus metrics.
//! - [`shutdown`]: SIGTERM/SIGINT handling.
//! - `testing` (feature `testing`): a real etcd for integration tests.

pub mod claim;
pub mod config;
pub mod downward;
pub mod error;
pub mod identity;
pub mod lease_service;
pub mod meta;
pub mod names;
pub mod quantity;
pub mod security;
pub mod selector;
pub mod serve;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod validate;

#[cfg(feature = "testing")]
pub mod testing;

pub use error::{Error, Result};
