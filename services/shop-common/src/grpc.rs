//! gRPC channels to other services. gRPC clients do not honour `HTTP_PROXY`,
//! so with a sidecar (`TRELLIS_OUTBOUND=127.0.0.1:4140`) the channel
//! connects to the sidecar's outbound port and names the target service in
//! `:authority`, which is how the sidecar routes; hosts in `NO_PROXY` are
//! dialled directly. Every call carries the caller's trace context.

use std::time::Duration;

use axum::http::Uri;
use hyper_util::client::proxy::matcher::Matcher;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::config::ProxySettings;
use crate::telemetry;

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("{target:?} is not a gRPC target URL (expected http://name[:port])")]
    BadTarget { target: String },
    #[error("gRPC endpoint: {0}")]
    Endpoint(#[from] tonic::transport::Error),
}

/// A channel that carries the trace context on every call.
pub type TracedChannel = InterceptedService<Channel, TraceContext>;

/// Where a channel to `target` actually connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The address dialled.
    pub connect_to: Uri,
    /// The `:authority` the calls name (the target), when it differs.
    pub origin: Option<Uri>,
}

/// Decides the route: through the sidecar's outbound port unless
/// `NO_PROXY` exempts the target's host.
pub fn route(target: &str, proxy: &ProxySettings) -> Result<Route, ChannelError> {
    let bad = || ChannelError::BadTarget {
        target: target.to_string(),
    };
    let uri: Uri = target.parse().map_err(|_| bad())?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(bad());
    }
    let Some(outbound) = &proxy.outbound else {
        return Ok(Route {
            connect_to: uri,
            origin: None,
        });
    };
    let outbound_uri: Uri = format!("http://{outbound}").parse().map_err(|_| bad())?;
    let matcher = Matcher::builder()
        .http(outbound_uri.to_string())
        .no(proxy.no_proxy.clone().unwrap_or_default())
        .build();
    if matcher.intercept(&uri).is_none() {
        return Ok(Route {
            connect_to: uri,
            origin: None,
        });
    }
    Ok(Route {
        connect_to: outbound_uri,
        origin: Some(uri),
    })
}

/// A lazily connected channel to `target` (e.g. `http://products`).
pub fn channel(target: &str, proxy: &ProxySettings) -> Result<TracedChannel, ChannelError> {
    let route = route(target, proxy)?;
    let mut endpoint = Endpoint::from(route.connect_to)
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    if let Some(origin) = route.origin {
        endpoint = endpoint.origin(origin);
    }
    Ok(InterceptedService::new(
        endpoint.connect_lazy(),
        TraceContext,
    ))
}

/// Adds `traceparent`/`tracestate` of the current span to each call.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContext;

impl Interceptor for TraceContext {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        for (name, value) in telemetry::current_context_fields() {
            if let (Ok(key), Ok(value)) = (
                MetadataKey::from_bytes(name.as_bytes()),
                MetadataValue::try_from(value.as_str()),
            ) {
                request.metadata_mut().insert(key, value);
            }
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(outbound: Option<&str>, no_proxy: Option<&str>) -> ProxySettings {
        ProxySettings {
            http_proxy: None,
            no_proxy: no_proxy.map(str::to_string),
            outbound: outbound.map(str::to_string),
        }
    }

    #[test]
    fn direct_without_a_sidecar() {
        let r = route("http://products:8082", &proxy(None, None)).unwrap();
        assert_eq!(r.connect_to, "http://products:8082");
        assert_eq!(r.origin, None);
    }

    #[test]
    fn through_the_outbound_port_naming_the_target() {
        let p = proxy(Some("127.0.0.1:4140"), Some("localhost,127.0.0.1,::1"));
        let r = route("http://products", &p).unwrap();
        assert_eq!(r.connect_to, "http://127.0.0.1:4140/");
        assert_eq!(r.origin, Some("http://products".parse().unwrap()));
        // Loopback is in NO_PROXY: direct.
        let r = route("http://127.0.0.1:9000", &p).unwrap();
        assert_eq!(r.connect_to, "http://127.0.0.1:9000/");
        assert_eq!(r.origin, None);
    }

    #[test]
    fn rejects_what_is_not_a_url() {
        assert!(route("products", &proxy(None, None)).is_err());
        assert!(route("https://products", &proxy(None, None)).is_err());
    }
}
