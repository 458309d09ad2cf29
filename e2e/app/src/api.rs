//! The JSON of the echo's and the driver's HTTP APIs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Control paths of the echo; never faulted, never counted.
pub const FAULT_PATH: &str = "/admin/fault";
pub const HITS_PATH: &str = "/admin/hits";
pub const READY_PATH: &str = "/admin/ready";
/// Query parameter that makes one echo request take this long.
pub const SLEEP_PARAM: &str = "sleepMs";

/// What the echo answers to every request it serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Echo {
    pub pod: String,
    pub method: String,
    pub path: String,
    /// `VERSION` from the environment: a rolling update changes it.
    pub version: String,
}

/// How the echo misbehaves (`POST /admin/fault`; an empty object heals it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Fault {
    /// Answer every request with this status (e.g. 503) instead of echoing.
    pub status: Option<u16>,
    /// Wait this long before answering.
    pub delay_ms: u64,
}

impl Fault {
    /// Every request answered with `status`.
    pub fn failing(status: u16) -> Fault {
        Fault {
            status: Some(status),
            delay_ms: 0,
        }
    }

    /// Every request answered after `delay_ms`.
    pub fn slow(delay_ms: u64) -> Fault {
        Fault {
            status: None,
            delay_ms,
        }
    }
}

/// Whether the echo's readiness check passes (`POST /admin/ready`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
}

/// Requests the echo has seen (`GET /admin/hits`), faulted ones included.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hits {
    pub pod: String,
    pub total: u64,
}

/// `POST /call`: requests sent one after another through the outbound sidecar.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallSpec {
    /// The service called, as the app names it (`echo`, `echo.ns.svc`, ...).
    pub authority: String,
    #[serde(default = "root")]
    pub path: String,
    #[serde(default = "get")]
    pub method: String,
    #[serde(default = "one")]
    pub count: u32,
    #[serde(default)]
    pub body: String,
}

fn root() -> String {
    "/".into()
}
fn get() -> String {
    "GET".into()
}
fn one() -> u32 {
    1
}

/// One answer of a [`CallSpec`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallResult {
    /// 0 when no response came (the error says why).
    pub status: u16,
    pub body: String,
    /// The sidecar's `x-trellis-error`, when it made the answer.
    pub trellis_error: Option<String>,
    /// The answer is the policy's fallback (`x-trellis-fallback`).
    #[serde(default)]
    pub fallback: bool,
    pub error: Option<String>,
}

impl CallResult {
    /// The echo's answer, when the body is one.
    pub fn echo(&self) -> Option<Echo> {
        serde_json::from_str(&self.body).ok()
    }
}

/// `POST /load`: `total` requests at `rps` per second, not waiting for answers
/// (open loop, so a slow upstream does not slow the offered load).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadSpec {
    pub authority: String,
    #[serde(default = "root")]
    pub path: String,
    pub rps: u32,
    pub total: u64,
    /// Per request, end to end.
    #[serde(default = "ten_seconds")]
    pub timeout_ms: u64,
}

fn ten_seconds() -> u64 {
    10_000
}

/// `POST /load` answers where to read the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadStarted {
    pub id: u64,
}

/// `GET /load/{id}`: the run so far.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadReport {
    pub spec_total: u64,
    pub sent: u64,
    /// Answered or failed (sent - completed are still in flight).
    pub completed: u64,
    /// 2xx answers.
    pub ok: u64,
    pub statuses: BTreeMap<u16, u64>,
    /// Failures by kind: `status-503`, `trellis-circuit-open`, `timeout`, `connect`, ...
    pub failures: BTreeMap<String, u64>,
    /// Which pod served the 2xx answers.
    pub pods: BTreeMap<String, u64>,
    /// Versions that served 2xx answers.
    pub versions: BTreeMap<String, u64>,
    pub elapsed_ms: u64,
    pub done: bool,
}

impl LoadReport {
    pub fn success_rate(&self) -> f64 {
        if self.completed == 0 {
            return 0.0;
        }
        self.ok as f64 / self.completed as f64
    }

    pub fn failed(&self) -> u64 {
        self.completed - self.ok
    }
}

/// `POST /grpc`: gRPC calls to `authority` through the outbound sidecar.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcSpec {
    pub authority: String,
    pub call: GrpcCall,
    pub message: String,
    /// Replies a server-streaming call asks for.
    #[serde(default)]
    pub count: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum GrpcCall {
    Unary,
    ServerStream,
}

/// The replies of one [`GrpcSpec`], or the status it ended with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcResult {
    pub replies: Vec<GrpcReply>,
    /// `None`: OK.
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrpcReply {
    pub message: String,
    pub pod: String,
    pub index: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_spec_defaults() {
        let spec: CallSpec = serde_json::from_str(r#"{"authority": "echo"}"#).unwrap();
        assert_eq!(
            (spec.path.as_str(), spec.method.as_str(), spec.count),
            ("/", "GET", 1)
        );
    }

    #[test]
    fn an_empty_fault_heals() {
        let fault: Fault = serde_json::from_str("{}").unwrap();
        assert_eq!(fault, Fault::default());
    }

    #[test]
    fn success_rate_counts_completed_requests_only() {
        let report = LoadReport {
            sent: 12,
            completed: 10,
            ok: 9,
            ..Default::default()
        };
        assert_eq!(report.failed(), 1);
        assert!((report.success_rate() - 0.9).abs() < 1e-9);
        assert_eq!(LoadReport::default().success_rate(), 0.0);
    }
}
