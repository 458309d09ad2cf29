//! The file `trellis-proxy` reads (`apiVersion: proxy.trellis.dev/v1`).

use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::policy::{EffectivePolicy, InboundPolicy};
use crate::bounded::{Bounded, Port, Positive, Ratio};
use crate::crd::{LogLevel, Protocol, RouteMatch};
use crate::duration::Duration;
use crate::parse::{ParseError, from_yaml};

pub const PROXY_API_VERSION: &str = "proxy.trellis.dev/v1";
pub const PROXY_KIND: &str = "ProxyConfig";

/// Ports of the sidecar (docs/architecture.md, "The sidecar").
pub const INBOUND_PORT: u16 = 4143;
pub const OUTBOUND_PORT: u16 = 4140;
pub const ADMIN_PORT: u16 = 4191;

/// Bodies up to this size are buffered so a failed attempt can be replayed.
pub const MAX_REPLAY_BODY_BYTES: usize = 64 * 1024;

/// One sidecar's whole configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    /// Always `proxy.trellis.dev/v1`.
    pub api_version: ApiVersion,
    /// Always `ProxyConfig`.
    pub kind: Kind,
    /// The service this sidecar fronts.
    pub identity: Identity,
    #[serde(default)]
    pub listeners: Listeners,
    /// The application behind the inbound listener.
    pub app: App,
    #[serde(default)]
    pub inbound: InboundPolicy,
    /// The services the app may call through the outbound listener, sorted by name.
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
    #[serde(default)]
    pub http: HttpSettings,
    #[serde(default)]
    pub tracing: Tracing,
    #[serde(default)]
    pub log: Log,
}

impl ProxyConfig {
    /// Parses and checks a config file; the error names the field.
    pub fn from_yaml(text: &str) -> Result<Self, ParseError> {
        let config: ProxyConfig = from_yaml(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Rules the types cannot express.
    pub fn validate(&self) -> Result<(), ParseError> {
        let err = |path: String, reason: String| Err(ParseError { path, reason });
        let mut names = std::collections::BTreeSet::new();
        for (i, up) in self.upstreams.iter().enumerate() {
            if !names.insert(up.name.as_str()) {
                return err(
                    format!("upstreams[{i}].name"),
                    format!("{:?} is listed twice", up.name),
                );
            }
            if up.authorities.is_empty() {
                return err(
                    format!("upstreams[{i}].authorities"),
                    "needs at least one host name".into(),
                );
            }
            if let Discovery::Static { addresses } = &up.discovery {
                for (j, a) in addresses.iter().enumerate() {
                    if a.parse::<SocketAddr>().is_err() {
                        return err(
                            format!("upstreams[{i}].discovery.static.addresses[{j}]"),
                            format!("{a:?} is not an ip:port address"),
                        );
                    }
                }
            }
        }
        let http2 = &self.http.http2;
        for (field, value) in [
            ("keepAliveInterval", http2.keep_alive_interval),
            ("keepAliveTimeout", http2.keep_alive_timeout),
        ] {
            if value.as_std().is_zero() {
                return err(
                    format!("http.http2.{field}"),
                    "must be longer than 0".into(),
                );
            }
        }
        Ok(())
    }

    /// YAML as written into the ConfigMap. Deterministic: same input, same bytes.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_else(|e| panic!("proxy config serializes: {e}"))
    }

    /// The JSON Schema of this file, generated from the types.
    pub fn json_schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(ProxyConfig))
            .unwrap_or_else(|e| panic!("schema serializes: {e}"))
    }
}

macro_rules! constant_string {
    ($name:ident, $value:expr) => {
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name;

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str($value)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let got = String::deserialize(d)?;
                if got == $value {
                    Ok($name)
                } else {
                    Err(serde::de::Error::custom(format!("expected {:?}, got {got:?}", $value)))
                }
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string", "const": $value })
            }
        }
    };
}

constant_string!(ApiVersion, PROXY_API_VERSION);
constant_string!(Kind, PROXY_KIND);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Identity {
    pub service: String,
    pub namespace: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listeners {
    /// Where callers' sidecars connect (the Service targets it).
    pub inbound: SocketAddr,
    /// The app's HTTP proxy (`HTTP_PROXY`); loopback only.
    pub outbound: SocketAddr,
    /// `/metrics`, `/live`, `/ready`, `/config`, `/endpoints`.
    pub admin: SocketAddr,
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            inbound: SocketAddr::from(([0, 0, 0, 0], INBOUND_PORT)),
            outbound: SocketAddr::from(([127, 0, 0, 1], OUTBOUND_PORT)),
            admin: SocketAddr::from(([0, 0, 0, 0], ADMIN_PORT)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct App {
    /// Where the app listens; the inbound listener forwards here.
    pub address: SocketAddr,
    #[serde(default)]
    pub protocol: Protocol,
}

/// A service the app calls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Upstream {
    pub name: String,
    /// Host names (without port) that route to this upstream:
    /// `orders`, `orders.shop`, `orders.shop.svc`, `orders.shop.svc.cluster.local`.
    pub authorities: Vec<String>,
    /// Written `{static: {...}}`, not as a YAML tag, so people can write it too.
    #[serde(with = "discovery_form")]
    #[schemars(with = "Discovery")]
    pub discovery: Discovery,
    /// The service-level policy.
    pub policy: EffectivePolicy,
    /// Per-route policies, most specific first; the first match wins, else `policy`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// The ResiliencePolicies this was resolved from, for `/config` readers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
}

/// How the endpoints of an upstream are found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Discovery {
    /// Fixed `ip:port` addresses (local mode, tests).
    Static { addresses: Vec<String> },
    /// Ready endpoints of the Service's EndpointSlices, on `port` (the peer sidecar's inbound port).
    #[serde(rename_all = "camelCase")]
    Kubernetes {
        service: String,
        namespace: String,
        port: Port,
    },
    /// A and AAAA records of `host`, re-resolved every `refresh`.
    #[serde(rename_all = "camelCase")]
    Dns {
        host: String,
        port: Port,
        refresh: Duration,
    },
}

/// `{static: {...}}` is written; the YAML-tag form `!static {...}` is read too.
mod discovery_form {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::Discovery;

    pub fn serialize<S: Serializer>(d: &Discovery, s: S) -> Result<S::Ok, S::Error> {
        serde_yaml::with::singleton_map::serialize(d, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Discovery, D::Error> {
        let value = serde_yaml::Value::deserialize(d)?;
        let parsed = match value {
            serde_yaml::Value::Tagged(_) => Discovery::deserialize(value),
            other => serde_yaml::with::singleton_map::deserialize(other),
        };
        parsed.map_err(serde::de::Error::custom)
    }
}

/// A route override of an upstream's policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    #[serde(rename = "match")]
    pub route_match: RouteMatch,
    pub policy: EffectivePolicy,
}

/// Protocol limits of both listeners.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpSettings {
    /// A client must send its whole request head within this (slowloris).
    pub header_read_timeout: Duration,
    /// More headers than this: 431.
    pub max_headers: u32,
    /// A larger request head (HTTP/1) or header list (HTTP/2): 431.
    pub max_header_bytes: u32,
    /// On SIGTERM, in-flight requests get this long to finish.
    pub shutdown_grace: Duration,
    /// A request or response body that sends nothing for this long is cut
    /// (a stalled upstream or caller). Long-lived streams that may be
    /// quiet for longer (gRPC server streaming) need a larger value.
    #[serde(default = "default_body_idle_timeout")]
    pub body_idle_timeout: Duration,
    /// Bounds of every HTTP/2 connection the proxy serves or opens.
    #[serde(default)]
    pub http2: Http2Settings,
}

fn default_body_idle_timeout() -> Duration {
    Duration::from_secs(300)
}

/// An HTTP/2 flow-control window: at least the protocol's initial 65,535
/// bytes, at most 2^31 − 1 (RFC 9113 §6.9).
pub type FlowWindow = Bounded<65_535, 2_147_483_647>;

/// What one HTTP/2 connection may hold, on both listeners (callers'
/// connections) and on the connections to upstreams and the app. A
/// connection's memory is bounded by about `maxConcurrentStreams` × (a
/// request's state + `maxSendBufferSize`) + `initialConnectionWindowSize`,
/// so an overloaded proxy queues or refuses streams instead of growing.
/// The header list limit is `maxHeaderBytes`, the same as HTTP/1's head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Http2Settings {
    /// Streams a caller may have open at once on one connection
    /// (SETTINGS_MAX_CONCURRENT_STREAMS). A client waits for a free one; a
    /// stream opened beyond it is refused with REFUSED_STREAM, which a
    /// client may retry safely. Upstreams set their own limit for the
    /// proxy's connections to them.
    pub max_concurrent_streams: Positive,
    /// Bytes a peer may send on one stream before the proxy reads them.
    pub initial_stream_window_size: FlowWindow,
    /// Bytes a peer may send on one connection, all streams together,
    /// before the proxy reads them.
    pub initial_connection_window_size: FlowWindow,
    /// Bytes of one stream's outgoing data buffered while the peer is not
    /// reading; the body's source is not read further until it drains.
    pub max_send_buffer_size: Positive,
    /// Streams a peer may open and reset before the proxy took them up; one
    /// more closes the connection (the "rapid reset" flood).
    pub max_pending_accept_reset_streams: u32,
    /// A connection is pinged this often, and closed when a ping is not
    /// answered within `keepAliveTimeout`; it finds peers that vanished
    /// without closing their connections.
    pub keep_alive_interval: Duration,
    pub keep_alive_timeout: Duration,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Http2Settings {
            // The least RFC 9113 §6.5.2 recommends: a sidecar's peer is
            // another sidecar or one app, not a browser with many tabs.
            max_concurrent_streams: Positive::new_const(100),
            initial_stream_window_size: FlowWindow::new_const(64 * 1024),
            initial_connection_window_size: FlowWindow::new_const(1024 * 1024),
            max_send_buffer_size: Positive::new_const(64 * 1024),
            // h2's own default.
            max_pending_accept_reset_streams: 20,
            keep_alive_interval: Duration::from_secs(20),
            keep_alive_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            header_read_timeout: Duration::from_secs(10),
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            shutdown_grace: Duration::from_secs(30),
            body_idle_timeout: default_body_idle_timeout(),
            http2: Http2Settings::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    /// OTLP/gRPC collector, e.g. `http://jaeger-collector:4317`; unset: no export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// Share of new traces sampled; a caller's sampled flag always wins.
    pub sampling_ratio: Ratio,
}

impl Default for Tracing {
    fn default() -> Self {
        Tracing {
            otlp_endpoint: None,
            sampling_ratio: Ratio::ONE,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Log {
    #[serde(default)]
    pub level: LogLevel,
    /// One JSON object per line instead of text.
    #[serde(default)]
    pub json: bool,
}
