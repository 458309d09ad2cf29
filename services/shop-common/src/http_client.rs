//! The HTTP client for calls to other services. They are addressed by
//! service name (`http://orders/api/v1/…`); with a sidecar, `HTTP_PROXY`
//! sends them through it (it resolves the name, balances, retries, breaks
//! circuits), and `NO_PROXY` hosts are called directly. Every request
//! carries the caller's trace context.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use reqwest::{NoProxy, Proxy, RequestBuilder};

use crate::config::ProxySettings;
use crate::problem::Problem;
use crate::telemetry;

#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
}

impl HttpClient {
    /// `timeout` bounds each whole request; connecting alone gets at most 2 s.
    pub fn new(proxy: &ProxySettings, timeout: Duration) -> Result<Self, reqwest::Error> {
        // Only the settings given: the process environment was read once, into them.
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .pool_idle_timeout(Duration::from_secs(30));
        if let Some(url) = &proxy.http_proxy {
            let no_proxy = proxy.no_proxy.as_deref().and_then(NoProxy::from_string);
            builder = builder.proxy(Proxy::http(url.as_str())?.no_proxy(no_proxy));
        }
        Ok(HttpClient {
            inner: builder.build()?,
        })
    }

    /// A request carrying the current trace context.
    pub fn request(&self, method: Method, url: &str) -> RequestBuilder {
        let mut headers = axum::http::HeaderMap::new();
        telemetry::inject_context(&mut headers);
        self.inner.request(method, url).headers(headers)
    }

    pub fn get(&self, url: &str) -> RequestBuilder {
        self.request(Method::GET, url)
    }
}

/// Why a call to another service produced no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Nothing accepted the connection.
    Unreachable,
    /// No complete answer in time.
    Timeout,
    /// The connection broke, or the answer was not HTTP we understand.
    Broken,
}

impl Failure {
    pub fn of(e: &reqwest::Error) -> Failure {
        if e.is_timeout() {
            Failure::Timeout
        } else if e.is_connect() {
            Failure::Unreachable
        } else {
            Failure::Broken
        }
    }

    /// The problem a gateway answers with: 503, 504 or 502.
    pub fn problem(self, service: &str) -> Problem {
        match self {
            Failure::Unreachable => {
                Problem::unavailable(format!("the {service} service is unavailable"))
            }
            Failure::Timeout => Problem::new(StatusCode::GATEWAY_TIMEOUT)
                .with_type("urn:shop:problem:timeout")
                .with_detail(format!("the {service} service did not answer in time")),
            Failure::Broken => Problem::new(StatusCode::BAD_GATEWAY)
                .with_type("urn:shop:problem:bad-gateway")
                .with_detail(format!("the {service} service gave no usable answer")),
        }
    }
}
