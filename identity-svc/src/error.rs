//! Why identity-svc could not start or keep serving.

/// A start-up or serving failure of the whole service.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A setting is wrong.
    #[error("invalid setting {setting}: {reason}")]
    Config {
        /// Which setting.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// etcd could not be reached.
    #[error("connecting to etcd")]
    Store(#[source] petset_core::Error),
    /// A listening socket could not be bound.
    #[error("binding {what} on {addr}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("serving gRPC")]
    Grpc(#[source] tonic::transport::Error),
}
