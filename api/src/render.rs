//! MeshService + ResiliencePolicies -> the Kubernetes objects that run it.
//! Pure: the same inputs always give the same objects, byte for byte.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, HTTPGetAction, PodSpec, PodTemplateSpec, Probe, Service, ServiceAccount,
    ServicePort, ServiceSpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use sha2::{Digest, Sha256};

use crate::bounded::Port;
use crate::crd::{MeshService, Protocol, ResiliencePolicy};
use crate::inject::{CONFIG_FILE, InjectError, ProxySettings, config_map_name, inject};
use crate::names::{MANAGED_BY, MANAGED_BY_LABEL, service_hosts};
use crate::proxy::{
    self, ADMIN_PORT, App, Discovery, INBOUND_PORT, Identity, Listeners, OUTBOUND_PORT,
    ProxyConfig, Tracing, Upstream,
};
use crate::resolve::{Conflict, resolve};

/// Pod-template annotation carrying the hash of the proxy settings a running
/// sidecar cannot reload (see [`restart_hash`]): only a change to those rolls
/// the pods. Policies and upstreams reach running sidecars through the
/// mounted ConfigMap, which the sidecar reloads.
pub const CONFIG_HASH_ANNOTATION: &str = "mesh.trellis.dev/config-hash";
/// Selector label of a MeshService's pods.
pub const SERVICE_LABEL: &str = "mesh.trellis.dev/service";
/// The port callers use on the Service; it forwards to the sidecar's inbound port.
pub const SERVICE_PORT: i32 = 80;

/// How endpoints of upstreams are found by the rendered sidecars.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum DiscoveryMode {
    /// Watch EndpointSlices (in a cluster).
    #[default]
    Kubernetes,
    /// Fixed addresses per upstream name (`trellis dev`).
    Static(BTreeMap<String, Vec<String>>),
}

/// Cluster-wide rendering choices (the operator's flags).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub proxy: ProxySettings,
    pub cluster_domain: String,
    pub discovery: DiscoveryMode,
    pub tracing: Tracing,
    /// Override of the sidecar listeners (local mode runs many sidecars on one host).
    pub listeners: Option<Listeners>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            proxy: ProxySettings::default(),
            cluster_domain: "cluster.local".into(),
            discovery: DiscoveryMode::Kubernetes,
            tracing: Tracing::default(),
            listeners: None,
        }
    }
}

/// Everything a MeshService becomes.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    pub deployment: Deployment,
    pub service: Service,
    pub service_account: ServiceAccount,
    pub config_map: ConfigMap,
    pub role: Role,
    pub role_binding: RoleBinding,
    /// Only with more than one replica.
    pub pdb: Option<PodDisruptionBudget>,
    pub proxy_config: ProxyConfig,
    /// Hash of the whole proxy config (the ConfigMap's content).
    pub config_hash: String,
    /// Hash of what only a restart applies; the pod template carries it.
    pub restart_hash: String,
    /// Policies in effect for calls into this service.
    pub policies: Vec<String>,
    /// Conflicts among the policies this service's config was resolved from.
    pub conflicts: Vec<Conflict>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("metadata.name is missing")]
    MissingName,
    #[error("spec.image is empty: set the application's image")]
    EmptyImage,
    #[error("spec.port {0} is one of the sidecar's ports (4140, 4143, 4191): pick another")]
    PortConflict(u32),
    #[error("cannot inject the sidecar: {0}")]
    Inject(#[from] InjectError),
}

/// Renders one MeshService. `policies` are the ResiliencePolicies of its namespace.
pub fn render(
    svc: &MeshService,
    policies: &[ResiliencePolicy],
    settings: &Settings,
) -> Result<Rendered, RenderError> {
    let name = svc.metadata.name.clone().ok_or(RenderError::MissingName)?;
    let namespace = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    if svc.spec.image.trim().is_empty() {
        return Err(RenderError::EmptyImage);
    }
    let port = svc.spec.port.get();
    if [INBOUND_PORT, OUTBOUND_PORT, ADMIN_PORT]
        .iter()
        .any(|p| u32::from(*p) == port)
    {
        return Err(RenderError::PortConflict(port));
    }

    let proxy_config = proxy_config(svc, &name, &namespace, policies, settings);
    let config_yaml = proxy_config.to_yaml();
    let config_hash = short_hash(config_yaml.as_bytes());
    let restart_hash = restart_hash(&proxy_config);

    let resolution = resolve(policies);
    let relevant = |c: &&Conflict| {
        c.namespace == namespace && (c.target == name || svc.spec.upstreams.contains(&c.target))
    };
    let conflicts = resolution
        .conflicts()
        .iter()
        .filter(relevant)
        .cloned()
        .collect();

    let owner = svc.controller_owner_ref(&());
    let meta = |object_name: &str| ObjectMeta {
        name: Some(object_name.to_string()),
        namespace: Some(namespace.clone()),
        labels: Some(labels(&name)),
        owner_references: owner.clone().map(|o: OwnerReference| vec![o]),
        ..Default::default()
    };
    let config_map_name = config_map_name(&name);
    let proxy_role_name = format!("{name}-trellis-proxy");

    let mut proxy_settings = settings.proxy.clone();
    proxy_settings.config_map = config_map_name.clone();
    if let Some(o) = &svc.spec.proxy {
        if let Some(image) = o.image.as_ref().filter(|i| !i.is_empty()) {
            proxy_settings.image = image.clone();
        }
        if let Some(level) = o.log_level {
            proxy_settings.log_level = level;
        }
        if o.resources.is_some() {
            proxy_settings.resources = o.resources.clone();
        }
    }
    let pod = inject(app_pod(svc, &name), &proxy_settings)?;

    let mut template_labels = labels(&name);
    template_labels.insert(SERVICE_LABEL.into(), name.clone());
    let deployment = Deployment {
        metadata: meta(&name),
        spec: Some(DeploymentSpec {
            replicas: Some(svc.spec.replicas),
            selector: selector(&name),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(template_labels),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_string(),
                        restart_hash.clone(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        ..Default::default()
    };

    let (port_name, app_protocol) = match svc.spec.protocol {
        Protocol::Http => ("http", "http"),
        Protocol::Grpc => ("grpc", "kubernetes.io/h2c"),
    };
    let service = Service {
        metadata: meta(&name),
        spec: Some(ServiceSpec {
            selector: Some(BTreeMap::from([(SERVICE_LABEL.to_string(), name.clone())])),
            ports: Some(vec![ServicePort {
                name: Some(port_name.into()),
                port: SERVICE_PORT,
                target_port: Some(IntOrString::String("trellis-inbound".into())),
                app_protocol: Some(app_protocol.into()),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };

    let config_map = ConfigMap {
        metadata: meta(&config_map_name),
        data: Some(BTreeMap::from([(CONFIG_FILE.to_string(), config_yaml)])),
        ..Default::default()
    };

    // The sidecar's discovery reads EndpointSlices, and nothing else.
    let role = Role {
        metadata: meta(&proxy_role_name),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["discovery.k8s.io".into()]),
            resources: Some(vec!["endpointslices".into()]),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..Default::default()
        }]),
    };
    let role_binding = RoleBinding {
        metadata: meta(&proxy_role_name),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: proxy_role_name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: name.clone(),
            namespace: Some(namespace.clone()),
            ..Default::default()
        }]),
    };

    let pdb = (svc.spec.replicas > 1).then(|| PodDisruptionBudget {
        metadata: meta(&name),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector(&name)),
            ..Default::default()
        }),
        ..Default::default()
    });

    Ok(Rendered {
        deployment,
        service,
        service_account: ServiceAccount {
            metadata: meta(&name),
            ..Default::default()
        },
        config_map,
        role,
        role_binding,
        pdb,
        policies: resolution.policies_for(&namespace, &name),
        proxy_config,
        config_hash,
        restart_hash,
        conflicts,
    })
}

fn short_hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}

/// Hash of the parts of a proxy config that a running sidecar applies only
/// at start: who it is, where it listens, its tracing and its logging.
/// Everything else (upstreams, policies, inbound limits, HTTP settings) is
/// hot-reloaded from the mounted file, so changing it need not restart pods.
pub fn restart_hash(config: &ProxyConfig) -> String {
    let fixed = (
        &config.identity,
        &config.listeners,
        &config.tracing,
        &config.log,
    );
    let text =
        serde_json::to_string(&fixed).unwrap_or_else(|e| panic!("proxy config serializes: {e}"));
    short_hash(text.as_bytes())
}

/// The sidecar config of one MeshService.
pub fn proxy_config(
    svc: &MeshService,
    name: &str,
    namespace: &str,
    policies: &[ResiliencePolicy],
    settings: &Settings,
) -> ProxyConfig {
    let resolution = resolve(policies);
    let mut upstream_names: Vec<&String> = svc.spec.upstreams.iter().collect();
    upstream_names.sort();
    upstream_names.dedup();
    let upstreams = upstream_names
        .into_iter()
        .map(|up| {
            let (policy, routes) = resolution.effective(namespace, up);
            let discovery = match &settings.discovery {
                DiscoveryMode::Kubernetes => Discovery::Kubernetes {
                    service: up.clone(),
                    namespace: namespace.to_string(),
                    port: Port::new_const(INBOUND_PORT as u32),
                },
                DiscoveryMode::Static(addresses) => Discovery::Static {
                    addresses: addresses.get(up.as_str()).cloned().unwrap_or_default(),
                },
            };
            Upstream {
                name: up.clone(),
                authorities: service_hosts(up, namespace, &settings.cluster_domain),
                discovery,
                policy,
                routes,
                sources: resolution.policies_for(namespace, up),
            }
        })
        .collect();
    let log_level = svc
        .spec
        .proxy
        .as_ref()
        .and_then(|p| p.log_level)
        .unwrap_or(settings.proxy.log_level);
    ProxyConfig {
        api_version: proxy::ApiVersion,
        kind: proxy::Kind,
        identity: Identity {
            service: name.to_string(),
            namespace: namespace.to_string(),
        },
        listeners: settings.listeners.clone().unwrap_or_default(),
        app: App {
            address: std::net::SocketAddr::from(([127, 0, 0, 1], svc.spec.port.get() as u16)),
            protocol: svc.spec.protocol,
        },
        inbound: resolution.inbound(namespace, name),
        upstreams,
        http: Default::default(),
        tracing: settings.tracing.clone(),
        log: proxy::Log {
            level: log_level,
            json: false,
        },
    }
}

fn labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), name.to_string()),
        (
            "app.kubernetes.io/part-of".to_string(),
            "trellis".to_string(),
        ),
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
    ])
}

fn selector(name: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(
            SERVICE_LABEL.to_string(),
            name.to_string(),
        )])),
        ..Default::default()
    }
}

fn app_pod(svc: &MeshService, name: &str) -> PodSpec {
    // Probes go through the sidecar's inbound port, as callers' requests do.
    let probe = |path: &Option<String>| {
        path.as_ref().map(|p| Probe {
            http_get: Some(HTTPGetAction {
                path: Some(p.clone()),
                port: IntOrString::Int(i32::from(INBOUND_PORT)),
                ..Default::default()
            }),
            period_seconds: Some(5),
            ..Default::default()
        })
    };
    let health = svc.spec.health.clone().unwrap_or_default();
    PodSpec {
        service_account_name: Some(name.to_string()),
        containers: vec![Container {
            name: name.to_string(),
            image: Some(svc.spec.image.clone()),
            env: (!svc.spec.env.is_empty()).then(|| svc.spec.env.clone()),
            resources: svc.spec.resources.clone(),
            readiness_probe: probe(&health.readiness_path),
            liveness_probe: probe(&health.liveness_path),
            ..Default::default()
        }],
        ..Default::default()
    }
}
