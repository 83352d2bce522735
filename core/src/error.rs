//! The one error type at petset's API edge, and its single mapping to
//! [`tonic::Status`].
//!
//! Handlers return [`Result<T>`] and use `?`; whatever goes wrong below them
//! (etcd, validation, a conflict) arrives here as one of these variants, and
//! leaves the service as the gRPC code a client can act on. Field violations
//! travel as `google.rpc.BadRequest` details, so a client can point at the
//! field that broke a rule.

use std::fmt;

use tonic_types::{ErrorDetails, StatusExt};

/// A result whose error is petset's API [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One broken rule: which field, and what the rule is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Dotted path of the field in the request, e.g. `service.spec.ports[0].port`.
    pub field: String,
    /// The rule it broke, said so that a person can fix it.
    pub reason: String,
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// What a petset API call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object asked for does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// What kind of object (`service`, `lease`, ...).
        kind: &'static str,
        /// Its name, namespaced where that applies (`default/kubia`).
        name: String,
    },
    /// An object of that name exists already.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// What kind of object.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The request broke one or more rules; nothing was changed.
    #[error("invalid argument: {}", join(.0))]
    InvalidArgument(Vec<FieldViolation>),
    /// The request is well formed but the system is not in a state to take it
    /// (someone else holds the identity, the incarnation is stale, ...).
    #[error("{0}")]
    FailedPrecondition(String),
    /// This replica's leadership term ended: its write was refused, and it
    /// must stop acting as the leader.
    #[error("{0}")]
    Deposed(String),
    /// A concurrent writer changed the object first; read it again and retry.
    #[error("conflict: {0}")]
    Conflict(String),
    /// There is no room for what was asked.
    #[error("insufficient capacity: {0}")]
    InsufficientCapacity(String),
    /// A dependency (etcd, another service) cannot be reached now; retry.
    #[error("unavailable: {message}")]
    Unavailable {
        /// What could not be reached.
        message: String,
        /// Why.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A bug or a broken invariant; the message says which.
    #[error("internal error: {message}")]
    Internal {
        /// What went wrong.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

fn join(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// One field broke one rule.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument(vec![FieldViolation {
            field: field.into(),
            reason: reason.into(),
        }])
    }

    /// A dependency could not be reached.
    pub fn unavailable(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Unavailable {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// A broken invariant.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal {
            message: message.into(),
            source: None,
        }
    }

    /// Whether the same call may succeed if simply made again later.
    pub fn retryable(&self) -> bool {
        matches!(self, Error::Conflict(_) | Error::Unavailable { .. })
    }

    /// Whether this is a deposed leader's refused write.
    pub fn is_deposed(&self) -> bool {
        matches!(self, Error::Deposed(_))
    }
}

/// Collects every broken rule of one request, so a client learns all of
/// them at once rather than one per round trip.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// No violations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` broke `reason`.
    pub fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            reason: reason.into(),
        });
    }

    /// Records the outcome of a check that answers `Err(reason)`.
    pub fn check(&mut self, field: impl Into<String>, outcome: std::result::Result<(), String>) {
        if let Err(reason) = outcome {
            self.add(field, reason);
        }
    }

    /// Takes in the outcome of a check that answers the API error (a
    /// parser of a nested part, say): its violations join these, so that
    /// one answer names every broken rule. `Ok(None)` when it had
    /// violations; any other error is passed on.
    pub fn merge<T>(&mut self, outcome: Result<T>) -> Result<Option<T>> {
        match outcome {
            Ok(value) => Ok(Some(value)),
            Err(Error::InvalidArgument(violations)) => {
                self.0.extend(violations);
                Ok(None)
            }
            Err(other) => Err(other),
        }
    }

    /// Whether nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` when nothing was recorded, otherwise [`Error::InvalidArgument`].
    pub fn into_result(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidArgument(self.0))
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        use tonic::Code;
        let message = error.to_string();
        match error {
            Error::InvalidArgument(violations) => {
                let details = ErrorDetails::with_bad_request(
                    violations
                        .into_iter()
                        .map(|v| tonic_types::FieldViolation::new(v.field, v.reason))
                        .collect::<Vec<_>>(),
                );
                tonic::Status::with_error_details(Code::InvalidArgument, message, details)
            }
            Error::NotFound { .. } => tonic::Status::new(Code::NotFound, message),
            Error::AlreadyExists { .. } => tonic::Status::new(Code::AlreadyExists, message),
            Error::FailedPrecondition(_) | Error::Deposed(_) => {
                tonic::Status::new(Code::FailedPrecondition, message)
            }
            Error::Conflict(_) => tonic::Status::new(Code::Aborted, message),
            Error::InsufficientCapacity(_) => tonic::Status::new(Code::ResourceExhausted, message),
            Error::Unavailable { .. } => {
                tracing::warn!(error = %error_chain(&error), "dependency unavailable");
                tonic::Status::new(Code::Unavailable, message)
            }
            Error::Internal { .. } => {
                tracing::error!(error = %error_chain(&error), "internal error");
                tonic::Status::new(Code::Internal, message)
            }
        }
    }
}

/// The error and all its sources, `: `-separated, for a log line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_the_field_in_message_and_details() {
        let status = tonic::Status::from(Error::invalid(
            "spec.ports[0].port",
            "must be 1-65535, got 0",
        ));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status
                .message()
                .contains("spec.ports[0].port: must be 1-65535, got 0")
        );
        let details = status.get_error_details();
        let bad = details.bad_request().expect("bad request details");
        assert_eq!(bad.field_violations[0].field, "spec.ports[0].port");
    }

    #[test]
    fn violations_collect_every_rule() {
        let mut v = Violations::new();
        v.check("a", Ok(()));
        v.check("b", Err("too long".into()));
        v.add("c", "missing");
        match v.into_result() {
            Err(Error::InvalidArgument(all)) => {
                assert_eq!(
                    all.iter().map(|v| v.field.as_str()).collect::<Vec<_>>(),
                    ["b", "c"]
                );
            }
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn only_transient_errors_are_retryable() {
        assert!(Error::Conflict("x".into()).retryable());
        assert!(!Error::FailedPrecondition("x".into()).retryable());
        assert!(!Error::invalid("f", "r").retryable());
    }
}
