//! `retryOn` conditions: `connect-failure`, `reset`, `refused-stream`,
//! HTTP statuses (`"503"`) or ranges (`"500-504"`), and gRPC codes (`grpc-unavailable`).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// gRPC status codes that may be named in `retryOn`, as `grpc-<name>`.
pub const GRPC_CODES: [(&str, u16); 16] = [
    ("cancelled", 1),
    ("unknown", 2),
    ("invalid-argument", 3),
    ("deadline-exceeded", 4),
    ("not-found", 5),
    ("already-exists", 6),
    ("permission-denied", 7),
    ("resource-exhausted", 8),
    ("failed-precondition", 9),
    ("aborted", 10),
    ("out-of-range", 11),
    ("unimplemented", 12),
    ("internal", 13),
    ("unavailable", 14),
    ("data-loss", 15),
    ("unauthenticated", 16),
];

const PATTERN: &str = "^(connect-failure|reset|refused-stream|[1-5][0-9][0-9](-[1-5][0-9][0-9])?|grpc-(cancelled|unknown|invalid-argument|deadline-exceeded|not-found|already-exists|permission-denied|resource-exhausted|failed-precondition|aborted|out-of-range|unimplemented|internal|unavailable|data-loss|unauthenticated))$";

/// One condition under which a failed attempt is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RetryOn {
    /// The connection to the endpoint could not be made.
    ConnectFailure,
    /// The connection or stream was reset before a response arrived.
    Reset,
    /// HTTP/2 REFUSED_STREAM: the server did not process the request.
    RefusedStream,
    /// An HTTP status in `from..=to`.
    Status { from: u16, to: u16 },
    /// A gRPC status code, read from headers or trailers.
    Grpc(u16),
}

impl RetryOn {
    /// Whether an HTTP status matches this condition.
    pub fn matches_status(self, status: u16) -> bool {
        matches!(self, RetryOn::Status { from, to } if (from..=to).contains(&status))
    }

    /// Whether a gRPC status code matches this condition.
    pub fn matches_grpc(self, code: u16) -> bool {
        self == RetryOn::Grpc(code)
    }
}

/// Why a string is not a `retryOn` condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a retry condition (connect-failure, reset, refused-stream, a status like \"503\" or \"500-504\", or grpc-<code>)"
)]
pub struct RetryOnError(pub String);

impl FromStr for RetryOn {
    type Err = RetryOnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || RetryOnError(s.to_string());
        let status = |t: &str| -> Result<u16, RetryOnError> {
            match t.parse::<u16>() {
                Ok(code) if t.len() == 3 && (100..=599).contains(&code) => Ok(code),
                _ => Err(err()),
            }
        };
        match s {
            "connect-failure" => Ok(RetryOn::ConnectFailure),
            "reset" => Ok(RetryOn::Reset),
            "refused-stream" => Ok(RetryOn::RefusedStream),
            _ if s.starts_with("grpc-") => GRPC_CODES
                .iter()
                .find(|(name, _)| *name == &s[5..])
                .map(|(_, code)| RetryOn::Grpc(*code))
                .ok_or_else(err),
            _ => {
                let (from, to) = match s.split_once('-') {
                    Some((a, b)) => (status(a)?, status(b)?),
                    None => (status(s)?, status(s)?),
                };
                if from > to {
                    return Err(err());
                }
                Ok(RetryOn::Status { from, to })
            }
        }
    }
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryOn::ConnectFailure => f.write_str("connect-failure"),
            RetryOn::Reset => f.write_str("reset"),
            RetryOn::RefusedStream => f.write_str("refused-stream"),
            RetryOn::Status { from, to } if from == to => write!(f, "{from}"),
            RetryOn::Status { from, to } => write!(f, "{from}-{to}"),
            RetryOn::Grpc(code) => {
                let name = GRPC_CODES.iter().find(|(_, c)| c == code).map(|(n, _)| *n);
                write!(f, "grpc-{}", name.unwrap_or("unknown"))
            }
        }
    }
}

impl Serialize for RetryOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = serde_yaml::Value::deserialize(d)?;
        let text = match &raw {
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Number(n) => n.to_string(),
            other => format!("{other:?}"),
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for RetryOn {
    fn schema_name() -> Cow<'static, str> {
        "RetryOn".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "pattern": PATTERN, "maxLength": 32 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form_and_round_trips() {
        for s in [
            "connect-failure",
            "reset",
            "refused-stream",
            "503",
            "500-504",
            "grpc-unavailable",
        ] {
            let parsed: RetryOn = s.parse().unwrap();
            assert_eq!(parsed.to_string(), s);
        }
        assert_eq!("grpc-unavailable".parse(), Ok(RetryOn::Grpc(14)));
        assert!(RetryOn::Status { from: 500, to: 504 }.matches_status(502));
        assert!(!RetryOn::Status { from: 500, to: 504 }.matches_status(505));
    }

    #[test]
    fn rejects_unknown_conditions() {
        for bad in [
            "5xx",
            "600",
            "504-500",
            "grpc-nope",
            "timeout",
            "50",
            "5030",
        ] {
            assert!(bad.parse::<RetryOn>().is_err(), "{bad}");
        }
    }

    #[test]
    fn unquoted_yaml_status_is_accepted() {
        let v: Vec<RetryOn> = serde_yaml::from_str("[503, \"502\"]").unwrap();
        assert_eq!(
            v,
            vec![
                RetryOn::Status { from: 503, to: 503 },
                RetryOn::Status { from: 502, to: 502 }
            ]
        );
    }
}
