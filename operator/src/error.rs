//! The one error type of the reconcilers.

/// What can make a reconcile fail. Each is retried with backoff by `error_policy`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server answered 409: someone else wrote first. Re-read and retry.
    #[error("conflict writing {what}: {source}")]
    Conflict {
        what: String,
        #[source]
        source: Box<kube::Error>,
    },

    /// Any other failure talking to the API server.
    #[error("kubernetes API error while {action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: Box<kube::Error>,
    },

    /// An object the API server returned or stored lacks a field it always has.
    #[error("{kind} has no {field}")]
    MissingField {
        kind: &'static str,
        field: &'static str,
    },

    /// An object could not be turned into JSON (a bug, not a user error).
    #[error("cannot serialize {what}: {source}")]
    Serialize {
        what: String,
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// Wraps a client error, singling out 409 Conflict.
    pub fn kube(action: impl Into<String>, source: kube::Error) -> Self {
        let action = action.into();
        if is_conflict(&source) {
            Error::Conflict {
                what: action,
                source: Box::new(source),
            }
        } else {
            Error::Kube {
                action,
                source: Box::new(source),
            }
        }
    }

    /// A low-cardinality label for `trellis_operator_reconcile_errors_total{reason}`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Conflict { .. } => "conflict",
            Error::Kube { source, .. } => match source.as_ref() {
                kube::Error::Api(s) if s.code == 403 => "forbidden",
                kube::Error::Api(s) if s.code == 404 => "not_found",
                kube::Error::Api(s) if s.code == 422 => "invalid",
                kube::Error::Api(s) if s.code >= 500 => "server_error",
                kube::Error::Api(_) => "api_error",
                _ => "transport",
            },
            Error::MissingField { .. } => "missing_field",
            Error::Serialize { .. } => "serialize",
        }
    }

    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }
}

/// Whether the API server answered 409 Conflict.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Whether the API server answered 404 Not Found.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status {
                code,
                message: "x".into(),
                reason: "Conflict".into(),
                ..Default::default()
            }
            .boxed(),
        )
    }

    #[test]
    fn conflicts_are_singled_out() {
        let e = Error::kube("applying Deployment a", api(409));
        assert!(e.is_conflict());
        assert_eq!(e.metric_label(), "conflict");
        assert_eq!(Error::kube("x", api(403)).metric_label(), "forbidden");
        assert_eq!(Error::kube("x", api(503)).metric_label(), "server_error");
    }
}
