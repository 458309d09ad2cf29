//! Adds the `trellis-proxy` sidecar to a pod. One function behind three doors:
//! the operator's Deployments, the admission webhook, and `trellis inject`.

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSpec, Probe, ResourceRequirements, SecurityContext,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::LogLevel;
use crate::proxy::{ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT};

/// Pod annotation (and namespace label) that asks for injection: `enabled` or `disabled`.
pub const INJECT_ANNOTATION: &str = "mesh.trellis.dev/inject";
/// Pod annotation naming the MeshService whose sidecar config an injected pod uses.
pub const SERVICE_ANNOTATION: &str = "mesh.trellis.dev/service";
pub const PROXY_CONTAINER: &str = "trellis-proxy";

/// The ConfigMap that holds a MeshService's rendered `proxy.yaml`.
pub fn config_map_name(service: &str) -> String {
    format!("{service}-proxy")
}
pub const CONFIG_VOLUME: &str = "trellis-proxy-config";
pub const CONFIG_DIR: &str = "/etc/trellis";
pub const CONFIG_FILE: &str = "proxy.yaml";
/// The proxy's user: not root, and not the app's usual uid.
pub const PROXY_UID: i64 = 2102;

/// How the sidecar is built.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxySettings {
    pub image: String,
    pub image_pull_policy: Option<String>,
    /// The ConfigMap holding `proxy.yaml`.
    pub config_map: String,
    pub log_level: LogLevel,
    pub resources: Option<ResourceRequirements>,
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            image: "trellis/proxy:dev".into(),
            image_pull_policy: None,
            config_map: "trellis-proxy-default".into(),
            log_level: LogLevel::Info,
            resources: None,
        }
    }
}

/// Why a pod cannot take the sidecar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error("container {0:?} is already in the pod and is not a Trellis sidecar")]
    ContainerNameConflict(String),
    #[error("container {container:?} uses port {port}, which the Trellis sidecar needs")]
    PortConflict { container: String, port: i32 },
    #[error("volume {0:?} is already in the pod and is not the sidecar's config")]
    VolumeConflict(String),
}

/// Whether the pod already carries our sidecar.
pub fn is_injected(pod: &PodSpec) -> bool {
    pod.init_containers.iter().flatten().any(is_our_sidecar)
}

fn is_our_sidecar(c: &Container) -> bool {
    c.name == PROXY_CONTAINER && c.restart_policy.as_deref() == Some("Always")
}

/// The variables that send an app's outbound calls through its sidecar's
/// outbound listener on 127.0.0.1:`outbound_port`: what the injector gives
/// each container and `trellis dev` gives each local process.
pub fn app_proxy_env(outbound_port: u16) -> Vec<(&'static str, String)> {
    let proxy_url = format!("http://127.0.0.1:{outbound_port}");
    let direct = "localhost,127.0.0.1,::1".to_string();
    vec![
        ("HTTP_PROXY", proxy_url.clone()),
        ("http_proxy", proxy_url),
        ("NO_PROXY", direct.clone()),
        ("no_proxy", direct),
        ("TRELLIS_OUTBOUND", format!("127.0.0.1:{outbound_port}")),
    ]
}

/// Adds (or refreshes) the sidecar. Injecting twice gives the same pod as once.
pub fn inject(mut pod: PodSpec, settings: &ProxySettings) -> Result<PodSpec, InjectError> {
    check_conflicts(&pod)?;

    let inits = pod.init_containers.get_or_insert_with(Vec::new);
    inits.retain(|c| !is_our_sidecar(c));
    // First, so it is running before any other init container or the app needs the network.
    inits.insert(0, sidecar(settings));

    let volumes = pod.volumes.get_or_insert_with(Vec::new);
    volumes.retain(|v| v.name != CONFIG_VOLUME);
    volumes.push(Volume {
        name: CONFIG_VOLUME.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: settings.config_map.clone(),
            ..Default::default()
        }),
        ..Default::default()
    });

    let app_env = app_proxy_env(OUTBOUND_PORT);
    for container in &mut pod.containers {
        let env = container.env.get_or_insert_with(Vec::new);
        for (name, value) in &app_env {
            // The app's own setting wins: it may know better (and this keeps injection idempotent).
            if !env.iter().any(|e| e.name == *name) {
                env.push(EnvVar {
                    name: name.to_string(),
                    value: Some(value.clone()),
                    ..Default::default()
                });
            }
        }
    }
    Ok(pod)
}

fn check_conflicts(pod: &PodSpec) -> Result<(), InjectError> {
    let proxy_ports = [
        i32::from(INBOUND_PORT),
        i32::from(OUTBOUND_PORT),
        i32::from(ADMIN_PORT),
    ];
    let inits = pod.init_containers.iter().flatten();
    for c in pod.containers.iter().chain(inits.clone()) {
        if is_our_sidecar(c) {
            continue;
        }
        if c.name == PROXY_CONTAINER {
            return Err(InjectError::ContainerNameConflict(c.name.clone()));
        }
        for p in c.ports.iter().flatten() {
            if proxy_ports.contains(&p.container_port) {
                return Err(InjectError::PortConflict {
                    container: c.name.clone(),
                    port: p.container_port,
                });
            }
        }
    }
    let our_volume = |v: &Volume| v.config_map.is_some();
    if let Some(v) = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == CONFIG_VOLUME && !our_volume(v))
    {
        return Err(InjectError::VolumeConflict(v.name.clone()));
    }
    Ok(())
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn admin_probe(path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(ADMIN_PORT)),
            ..Default::default()
        }),
        period_seconds: Some(5),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

fn sidecar(settings: &ProxySettings) -> Container {
    let port = |name: &str, port: u16| ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(port),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    Container {
        name: PROXY_CONTAINER.into(),
        image: Some(settings.image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        // A native sidecar: starts before the app, stops after it (Kubernetes >= 1.29).
        restart_policy: Some("Always".into()),
        args: Some(vec![
            "--config".into(),
            format!("{CONFIG_DIR}/{CONFIG_FILE}"),
        ]),
        env: Some(vec![
            EnvVar {
                name: "RUST_LOG".into(),
                value: Some(settings.log_level.as_str().into()),
                ..Default::default()
            },
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("POD_IP", "status.podIP"),
        ]),
        ports: Some(vec![
            port("trellis-inbound", INBOUND_PORT),
            port("trellis-admin", ADMIN_PORT),
        ]),
        readiness_probe: Some(admin_probe("/ready")),
        liveness_probe: Some(admin_probe("/live")),
        // Holds the app back until the proxy can route (native sidecars gate on startup).
        startup_probe: Some(Probe {
            failure_threshold: Some(30),
            period_seconds: Some(1),
            ..admin_probe("/ready")
        }),
        resources: settings.resources.clone(),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(PROXY_UID),
            run_as_group: Some(PROXY_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: CONFIG_VOLUME.into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app_pod() -> PodSpec {
        PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some("shop/orders:1".into()),
                ports: Some(vec![ContainerPort {
                    container_port: 8080,
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn injects_a_hardened_native_sidecar() {
        let pod = inject(app_pod(), &ProxySettings::default()).unwrap();
        assert!(is_injected(&pod));
        let inits = pod.init_containers.as_ref().unwrap();
        let proxy = &inits[0];
        assert_eq!(proxy.name, PROXY_CONTAINER);
        assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
        let sc = proxy.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let caps = sc.capabilities.as_ref().unwrap();
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert!(caps.add.is_none());
        let probe_port =
            |p: &Option<Probe>| p.as_ref().unwrap().http_get.as_ref().unwrap().port.clone();
        assert_eq!(probe_port(&proxy.readiness_probe), IntOrString::Int(4191));
        assert_eq!(probe_port(&proxy.liveness_probe), IntOrString::Int(4191));
        let env = pod.containers[0].env.as_ref().unwrap();
        let get = |n: &str| {
            env.iter()
                .find(|e| e.name == n)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(get("HTTP_PROXY").as_deref(), Some("http://127.0.0.1:4140"));
        assert_eq!(get("TRELLIS_OUTBOUND").as_deref(), Some("127.0.0.1:4140"));
        let vol = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == CONFIG_VOLUME)
            .unwrap();
        assert_eq!(
            vol.config_map.as_ref().unwrap().name,
            "trellis-proxy-default"
        );
    }

    #[test]
    fn injecting_twice_equals_injecting_once() {
        let settings = ProxySettings::default();
        let once = inject(app_pod(), &settings).unwrap();
        let twice = inject(once.clone(), &settings).unwrap();
        assert_eq!(once, twice);
    }

    #[test]
    fn reinjecting_with_new_settings_updates_the_sidecar_in_place() {
        let once = inject(app_pod(), &ProxySettings::default()).unwrap();
        let newer = ProxySettings {
            image: "trellis/proxy:2".into(),
            ..Default::default()
        };
        let again = inject(once, &newer).unwrap();
        let inits = again.init_containers.unwrap();
        assert_eq!(inits.len(), 1);
        assert_eq!(inits[0].image.as_deref(), Some("trellis/proxy:2"));
    }

    #[test]
    fn the_apps_own_http_proxy_setting_is_kept() {
        let mut pod = app_pod();
        pod.containers[0].env = Some(vec![EnvVar {
            name: "HTTP_PROXY".into(),
            value: Some("http://corp:3128".into()),
            ..Default::default()
        }]);
        let pod = inject(pod, &ProxySettings::default()).unwrap();
        let env = pod.containers[0].env.as_ref().unwrap();
        let values: Vec<_> = env.iter().filter(|e| e.name == "HTTP_PROXY").collect();
        assert_eq!(values.len(), 1);
        assert_eq!(values[0].value.as_deref(), Some("http://corp:3128"));
    }

    #[test]
    fn refuses_a_container_named_like_the_sidecar() {
        let mut pod = app_pod();
        pod.containers.push(Container {
            name: PROXY_CONTAINER.into(),
            ..Default::default()
        });
        assert_eq!(
            inject(pod, &ProxySettings::default()),
            Err(InjectError::ContainerNameConflict(PROXY_CONTAINER.into()))
        );
        // An init container of that name that is not a native sidecar is not ours either.
        let mut pod = app_pod();
        pod.init_containers = Some(vec![Container {
            name: PROXY_CONTAINER.into(),
            ..Default::default()
        }]);
        assert!(matches!(
            inject(pod, &ProxySettings::default()),
            Err(InjectError::ContainerNameConflict(_))
        ));
    }

    #[test]
    fn refuses_an_app_using_the_proxy_ports() {
        for port in [4140, 4143, 4191] {
            let mut pod = app_pod();
            pod.containers[0].ports = Some(vec![ContainerPort {
                container_port: port,
                ..Default::default()
            }]);
            assert_eq!(
                inject(pod, &ProxySettings::default()),
                Err(InjectError::PortConflict {
                    container: "app".into(),
                    port
                })
            );
        }
    }

    #[test]
    fn refuses_a_foreign_volume_with_the_config_volume_name() {
        let mut pod = app_pod();
        pod.volumes = Some(vec![Volume {
            name: CONFIG_VOLUME.into(),
            ..Default::default()
        }]);
        assert_eq!(
            inject(pod, &ProxySettings::default()),
            Err(InjectError::VolumeConflict(CONFIG_VOLUME.into()))
        );
    }
}
