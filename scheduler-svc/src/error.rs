//! What can stop scheduler-svc from starting or serving.

use std::net::SocketAddr;

/// scheduler-svc failed to start or serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listening socket could not be bound.
    #[error("cannot bind the {what} address {addr}")]
    Bind {
        /// Which socket.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A setting is wrong.
    #[error("setting {setting}: {reason}")]
    Config {
        /// Which setting.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// etcd could not be reached.
    #[error("cannot reach the store")]
    Store(#[source] petset_core::Error),
    /// The gRPC server failed.
    #[error("gRPC server failed")]
    Grpc(#[source] tonic::transport::Error),
}
