//! The `petset.v1` gRPC API, compiled from `proto/petset/v1/*.proto`.
//!
//! # Layout
//! - [`v1`]: messages, clients (`*_client`) and servers (`*_server`).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for server reflection.
//! - [`serde_k8s`]: how Kubernetes' YAML shapes map onto these messages.

/// Messages and services of `petset.v1`.
#[allow(missing_docs, clippy::all, missing_debug_implementations)]
pub mod v1 {
    tonic::include_proto!("petset.v1");
}

pub mod serde_k8s;

/// The encoded `FileDescriptorSet` of every `petset.v1` file.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("petset_descriptor");
