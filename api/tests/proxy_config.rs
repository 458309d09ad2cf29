//! The sidecar's config file: what it accepts, and how it says what is wrong.

use trellis_api::proxy::{Discovery, ProxyConfig};

const BASE: &str = r#"
apiVersion: proxy.trellis.dev/v1
kind: ProxyConfig
identity: {service: orders, namespace: shop}
app: {address: "127.0.0.1:8083"}
upstreams:
- name: payments
  authorities: [payments]
  discovery: DISCOVERY
  policy: {}
"#;

fn with(discovery: &str) -> String {
    BASE.replace("DISCOVERY", discovery)
}

#[test]
fn discovery_is_a_singleton_map_and_a_yaml_tag_is_accepted_too() {
    for form in [
        r#"{static: {addresses: ["127.0.0.1:9000"]}}"#,
        r#"!static {addresses: ["127.0.0.1:9000"]}"#,
    ] {
        let config = ProxyConfig::from_yaml(&with(form)).unwrap_or_else(|e| panic!("{form}: {e}"));
        assert_eq!(
            config.upstreams[0].discovery,
            Discovery::Static {
                addresses: vec!["127.0.0.1:9000".into()]
            }
        );
        // Written back as a map, never as a tag.
        let yaml = config.to_yaml();
        assert!(
            yaml.contains("static:") && !yaml.contains("!static"),
            "{yaml}"
        );
        assert_eq!(ProxyConfig::from_yaml(&yaml).unwrap(), config);
    }
}

#[test]
fn errors_name_the_field() {
    let err = ProxyConfig::from_yaml(&with(r#"{static: {addresses: ["nowhere"]}}"#)).unwrap_err();
    assert_eq!(err.path, "upstreams[0].discovery.static.addresses[0]");
    let err =
        ProxyConfig::from_yaml(&BASE.replace("kind: ProxyConfig", "kind: Proxy")).unwrap_err();
    assert_eq!(err.path, "kind");
    let typo = with(r#"{static: {addresses: []}}"#).replace("policy: {}", "polcy: {}");
    let err = ProxyConfig::from_yaml(&typo).unwrap_err();
    assert!(err.reason.contains("unknown field `polcy`"), "{err}");
    let twice = with(r#"{static: {addresses: []}}"#)
        + "- name: payments\n  authorities: [p]\n  discovery: {static: {addresses: []}}\n  policy: {}\n";
    let err = ProxyConfig::from_yaml(&twice).unwrap_err();
    assert_eq!(err.path, "upstreams[1].name");
}

#[test]
fn defaults_fill_listeners_and_limits() {
    let config = ProxyConfig::from_yaml(&with(r#"{static: {addresses: []}}"#)).unwrap();
    assert_eq!(config.listeners.inbound.port(), 4143);
    assert_eq!(config.listeners.outbound.to_string(), "127.0.0.1:4140");
    assert_eq!(config.listeners.admin.port(), 4191);
    assert_eq!(config.http.max_headers, 100);
}

#[test]
fn http2_bounds_default_when_absent_and_are_checked() {
    let base = with(r#"{static: {addresses: []}}"#);
    let config = ProxyConfig::from_yaml(&base).unwrap();
    let h2 = config.http.http2;
    assert_eq!(h2.max_concurrent_streams.get(), 100);
    assert_eq!(h2.initial_stream_window_size.get(), 64 * 1024);
    assert_eq!(h2.initial_connection_window_size.get(), 1024 * 1024);
    assert_eq!(h2.max_send_buffer_size.get(), 64 * 1024);
    // One field given, the others keep their defaults.
    let http = "http: {headerReadTimeout: 1s, maxHeaders: 50, maxHeaderBytes: 16384, \
                shutdownGrace: 5s, http2: {maxConcurrentStreams: 8}}\n";
    let config = ProxyConfig::from_yaml(&(base.clone() + http)).unwrap();
    assert_eq!(config.http.http2.max_concurrent_streams.get(), 8);
    assert_eq!(
        config.http.http2.initial_stream_window_size.get(),
        64 * 1024
    );
    for (bad, path) in [
        ("maxConcurrentStreams: 0", "http.http2.maxConcurrentStreams"),
        (
            "initialConnectionWindowSize: 1024",
            "http.http2.initialConnectionWindowSize",
        ),
        (
            "initialStreamWindowSize: 4294967295",
            "http.http2.initialStreamWindowSize",
        ),
        ("keepAliveTimeout: 0s", "http.http2.keepAliveTimeout"),
    ] {
        let yaml = base.clone() + &http.replace("maxConcurrentStreams: 8", bad);
        let err = ProxyConfig::from_yaml(&yaml).unwrap_err();
        assert_eq!(err.path, path, "{bad}: {err}");
    }
}
