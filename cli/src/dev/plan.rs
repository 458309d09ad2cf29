//! What `trellis dev` runs, worked out from the manifests: which services,
//! on which loopback ports, with which environment and which proxy config.
//! Pure, so the config a local sidecar gets is the one `api`'s renderer
//! gives a cluster, with static discovery and loopback listeners.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use trellis_api::bounded::Port;
use trellis_api::crd::{MeshService, ResiliencePolicy};
use trellis_api::inject::app_proxy_env;
use trellis_api::parse::from_yaml;
use trellis_api::proxy::{Listeners, ProxyConfig, Tracing};
use trellis_api::render::{DiscoveryMode, Settings, proxy_config};

/// The documents `trellis dev` reads; other kinds are ignored.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    pub services: Vec<MeshService>,
    pub policies: Vec<ResiliencePolicy>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{file}: document {index}: {reason}")]
    Document {
        file: String,
        index: usize,
        reason: String,
    },
    #[error("MeshService {0:?} appears twice")]
    Duplicate(String),
    #[error("a MeshService has no metadata.name")]
    MissingName,
}

impl Manifests {
    /// Adds the MeshServices and ResiliencePolicies of one file's text.
    pub fn add(&mut self, file: &str, text: &str) -> Result<(), PlanError> {
        use serde::Deserialize;
        for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let at = |reason: String| PlanError::Document {
                file: file.to_string(),
                index,
                reason,
            };
            let value = serde_yaml::Value::deserialize(doc).map_err(|e| at(e.to_string()))?;
            let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
            if kind != "MeshService" && kind != "ResiliencePolicy" {
                continue;
            }
            let one = serde_yaml::to_string(&value).map_err(|e| at(e.to_string()))?;
            if kind == "MeshService" {
                let svc = from_yaml::<MeshService>(&one).map_err(|e| at(e.to_string()))?;
                let name = svc.metadata.name.clone().ok_or(PlanError::MissingName)?;
                if self.service(&name).is_some() {
                    return Err(PlanError::Duplicate(name));
                }
                self.services.push(svc);
            } else {
                self.policies
                    .push(from_yaml::<ResiliencePolicy>(&one).map_err(|e| at(e.to_string()))?);
            }
        }
        Ok(())
    }

    pub fn service(&self, name: &str) -> Option<&MeshService> {
        self.services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
    }

    /// Service names, sorted (all start at once; callers wait out a
    /// starting upstream the way they would in a cluster).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .services
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        names.sort();
        names
    }
}

/// The loopback ports of one service: its app and its sidecar's three listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Ports {
    pub app: u16,
    pub inbound: u16,
    pub outbound: u16,
    pub admin: u16,
}

impl Ports {
    /// Four ports from `next`, in a fixed order.
    pub fn take(next: &mut impl FnMut() -> u16) -> Ports {
        Ports {
            app: next(),
            inbound: next(),
            outbound: next(),
            admin: next(),
        }
    }
}

/// What every app gets from `trellis dev`, whatever its spec says: the
/// local broker and the secret the users service and the gateway share.
#[derive(Clone, Debug, Default)]
pub struct LocalEnv {
    pub amqp_url: Option<String>,
    pub jwt_secret: String,
    /// OTLP/gRPC collector the apps and their sidecars export spans to.
    pub otlp_endpoint: Option<String>,
}

/// One service as `trellis dev` runs it.
#[derive(Clone, Debug)]
pub struct ServicePlan {
    pub name: String,
    pub ports: Ports,
    pub proxy_config: ProxyConfig,
    pub env: Vec<(String, String)>,
    /// Variables of the spec whose values come from Secrets or ConfigMaps
    /// that `trellis dev` does not have: left out, and said so at start.
    pub unset: Vec<String>,
    /// Readiness is checked through the sidecar's inbound port, as a kubelet does.
    pub readiness_path: String,
}

const LOOPBACK: [u8; 4] = [127, 0, 0, 1];

/// The proxy config of every service, rendered by `api` with static
/// discovery: each upstream is the one local sidecar of that name.
pub fn proxy_configs(
    manifests: &Manifests,
    ports: &BTreeMap<String, Ports>,
    otlp_endpoint: Option<&str>,
) -> BTreeMap<String, ProxyConfig> {
    let addresses: BTreeMap<String, Vec<String>> = ports
        .iter()
        .map(|(name, p)| (name.clone(), vec![format!("127.0.0.1:{}", p.inbound)]))
        .collect();
    let mut out = BTreeMap::new();
    for svc in &manifests.services {
        let Some(name) = svc.metadata.name.clone() else {
            continue;
        };
        let Some(p) = ports.get(&name) else { continue };
        let namespace = svc
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let settings = Settings {
            discovery: DiscoveryMode::Static(addresses.clone()),
            listeners: Some(Listeners {
                inbound: SocketAddr::from((LOOPBACK, p.inbound)),
                outbound: SocketAddr::from((LOOPBACK, p.outbound)),
                admin: SocketAddr::from((LOOPBACK, p.admin)),
            }),
            tracing: Tracing {
                otlp_endpoint: otlp_endpoint.map(str::to_string),
                ..Tracing::default()
            },
            ..Settings::default()
        };
        // The app listens on its local port instead of the spec's.
        let mut local = svc.clone();
        local.spec.port = Port::new_const(u32::from(p.app));
        out.insert(
            name.clone(),
            proxy_config(&local, &name, &namespace, &manifests.policies, &settings),
        );
    }
    out
}

/// Every service's plan, in [`Manifests::names`] order.
pub fn plan(
    manifests: &Manifests,
    ports: &BTreeMap<String, Ports>,
    local: &LocalEnv,
) -> Vec<ServicePlan> {
    let mut configs = proxy_configs(manifests, ports, local.otlp_endpoint.as_deref());
    manifests
        .names()
        .into_iter()
        .filter_map(|name| {
            let svc = manifests.service(&name)?;
            let p = *ports.get(&name)?;
            let proxy_config = configs.remove(&name)?;
            let (env, unset) = app_env(svc, p, local);
            let readiness_path = svc
                .spec
                .health
                .as_ref()
                .and_then(|h| h.readiness_path.clone())
                .unwrap_or_else(|| "/".into());
            Some(ServicePlan {
                name,
                ports: p,
                proxy_config,
                env,
                unset,
                readiness_path,
            })
        })
        .collect()
}

/// The app's environment: the spec's literal values, then what `trellis
/// dev` supplies (where to listen, the sidecar as HTTP proxy, the local
/// broker, the shared secret), which wins over the spec's cluster values.
fn app_env(svc: &MeshService, p: Ports, local: &LocalEnv) -> (Vec<(String, String)>, Vec<String>) {
    let mut supplied: Vec<(String, String)> = vec![
        ("HOST".into(), "127.0.0.1".into()),
        ("PORT".into(), p.app.to_string()),
        ("JWT_SECRET".into(), local.jwt_secret.clone()),
    ];
    supplied.extend(
        app_proxy_env(p.outbound)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v)),
    );
    if let Some(url) = &local.amqp_url {
        supplied.push(("AMQP_URL".into(), url.clone()));
    }
    if let Some(endpoint) = &local.otlp_endpoint {
        supplied.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone()));
    }
    let is_supplied = |name: &str| supplied.iter().any(|(k, _)| k == name);
    let mut env = Vec::new();
    let mut unset = Vec::new();
    for var in &svc.spec.env {
        if is_supplied(&var.name) {
            continue;
        }
        match (&var.value, &var.value_from) {
            (Some(v), _) => env.push((var.name.clone(), v.clone())),
            (None, Some(_)) => unset.push(var.name.clone()),
            (None, None) => env.push((var.name.clone(), String::new())),
        }
    }
    env.extend(supplied);
    (env, unset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_api::proxy::Discovery;

    const SHOP: &str = r#"
apiVersion: mesh.trellis.dev/v1alpha1
kind: MeshService
metadata: {name: orders, namespace: shop}
spec:
  image: trellis/orders:dev
  port: 8083
  upstreams: [payments]
  health: {readinessPath: /health/ready}
  env:
  - {name: AMQP_URL, value: "amqp://shop:shop@rabbitmq.shop:5672/%2f"}
  - {name: DATABASE_URL, valueFrom: {secretKeyRef: {name: orders-db, key: url}}}
  - {name: ORDERS_PAGE, value: "20"}
---
apiVersion: mesh.trellis.dev/v1alpha1
kind: MeshService
metadata: {name: payments, namespace: shop}
spec: {image: trellis/payments:dev, port: 8084}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: mesh.trellis.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: payments, namespace: shop}
spec:
  targetRef: {kind: MeshService, name: payments}
  circuitBreaker: {consecutiveFailures: 5}
"#;

    fn ports() -> BTreeMap<String, Ports> {
        let mut n = 20000;
        let mut next = || {
            n += 1;
            n
        };
        ["orders", "payments"]
            .iter()
            .map(|s| (s.to_string(), Ports::take(&mut next)))
            .collect()
    }

    fn shop() -> Manifests {
        let mut m = Manifests::default();
        m.add("shop.yaml", SHOP).unwrap();
        m
    }

    #[test]
    fn reads_services_and_policies_and_skips_other_kinds() {
        let m = shop();
        assert_eq!(m.names(), ["orders", "payments"]);
        assert_eq!(m.policies.len(), 1);
    }

    #[test]
    fn a_bad_document_names_its_file_and_field() {
        let mut m = Manifests::default();
        let err = m
            .add(
                "bad.yaml",
                "kind: MeshService\napiVersion: mesh.trellis.dev/v1alpha1\nmetadata: {name: x}\nspec: {image: i, port: nope}\n",
            )
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("bad.yaml: document 0: spec.port"), "{err}");
    }

    #[test]
    fn a_service_named_twice_is_an_error() {
        let mut m = shop();
        let err = m.add("again.yaml", SHOP).unwrap_err();
        assert!(matches!(err, PlanError::Duplicate(n) if n == "orders"));
    }

    #[test]
    fn sidecars_listen_on_loopback_and_find_upstreams_statically() {
        let ports = ports();
        let configs = proxy_configs(&shop(), &ports, None);
        let orders = &configs["orders"];
        assert_eq!(orders.listeners.inbound.to_string(), "127.0.0.1:20002");
        assert_eq!(orders.listeners.outbound.to_string(), "127.0.0.1:20003");
        assert_eq!(orders.listeners.admin.to_string(), "127.0.0.1:20004");
        assert_eq!(orders.app.address.to_string(), "127.0.0.1:20001");
        let payments = &orders.upstreams[0];
        assert_eq!(payments.name, "payments");
        assert_eq!(
            payments.discovery,
            Discovery::Static {
                addresses: vec!["127.0.0.1:20006".into()]
            }
        );
        // The policy is resolved as in a cluster.
        assert_eq!(payments.sources, ["payments"]);
        assert!(payments.policy.circuit_breaker.is_some());
    }

    #[test]
    fn app_env_keeps_literals_and_replaces_what_dev_supplies() {
        let local = LocalEnv {
            amqp_url: Some("amqp://guest:guest@127.0.0.1:5999/%2f".into()),
            jwt_secret: "s".repeat(32),
            otlp_endpoint: None,
        };
        let plans = plan(&shop(), &ports(), &local);
        let orders = &plans[0];
        let get = |k: &str| {
            let all: Vec<_> = orders.env.iter().filter(|(n, _)| n == k).collect();
            assert!(all.len() <= 1, "{k} set twice");
            all.first().map(|(_, v)| v.clone())
        };
        assert_eq!(get("PORT").as_deref(), Some("20001"));
        assert_eq!(get("HTTP_PROXY").as_deref(), Some("http://127.0.0.1:20003"));
        assert_eq!(get("TRELLIS_OUTBOUND").as_deref(), Some("127.0.0.1:20003"));
        assert_eq!(get("AMQP_URL"), local.amqp_url);
        assert_eq!(get("ORDERS_PAGE").as_deref(), Some("20"));
        assert_eq!(get("DATABASE_URL"), None);
        assert_eq!(orders.unset, ["DATABASE_URL"]);
        assert_eq!(orders.readiness_path, "/health/ready");
        assert_eq!(get("OTEL_EXPORTER_OTLP_ENDPOINT"), None);
        assert_eq!(orders.proxy_config.tracing.otlp_endpoint, None);
    }

    #[test]
    fn an_otlp_endpoint_reaches_every_app_and_sidecar() {
        let local = LocalEnv {
            otlp_endpoint: Some("http://127.0.0.1:4317".into()),
            ..LocalEnv::default()
        };
        for p in plan(&shop(), &ports(), &local) {
            let endpoint: Vec<_> = p
                .env
                .iter()
                .filter(|(k, _)| k == "OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|(_, v)| v.as_str())
                .collect();
            assert_eq!(endpoint, ["http://127.0.0.1:4317"], "{}", p.name);
            assert_eq!(
                p.proxy_config.tracing.otlp_endpoint.as_deref(),
                Some("http://127.0.0.1:4317"),
                "{}",
                p.name
            );
        }
    }
}
