//! Flags of `trellis-operator` (every flag also reads an environment variable).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};
use trellis_api::crd::LogLevel;
use trellis_api::inject::ProxySettings;
use trellis_api::render::Settings;

use crate::certs::CertConfig;
use crate::leader::LeaderElectionConfig;
use crate::{OperatorConfig, WebhookConfig};

#[derive(Debug, Parser)]
#[command(
    name = "trellis-operator",
    version,
    about = "The Trellis service mesh operator",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of `run`, the default command.
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator (the default).
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions as YAML.
    Crdgen,
}

fn duration(s: &str) -> Result<Duration, String> {
    s.parse::<trellis_api::Duration>()
        .map(Duration::from)
        .map_err(|e| e.to_string())
}

fn log_level(s: &str) -> Result<LogLevel, String> {
    match s {
        "error" => Ok(LogLevel::Error),
        "warn" => Ok(LogLevel::Warn),
        "info" => Ok(LogLevel::Info),
        "debug" => Ok(LogLevel::Debug),
        "trace" => Ok(LogLevel::Trace),
        other => Err(format!(
            "{other:?} is not one of error, warn, info, debug, trace"
        )),
    }
}

#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "TRELLIS_WATCH_NAMESPACE")]
    pub namespace: Option<String>,

    /// The operator's own namespace (Secret, Lease, webhook Service).
    #[arg(long, env = "POD_NAMESPACE")]
    pub operator_namespace: Option<String>,

    /// This replica's name (lease holder, events).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// The sidecar image injected into pods.
    #[arg(long, env = "TRELLIS_PROXY_IMAGE", default_value = "trellis/proxy:dev")]
    pub proxy_image: String,

    /// The sidecar's imagePullPolicy (default: Kubernetes' default).
    #[arg(long, env = "TRELLIS_PROXY_IMAGE_PULL_POLICY")]
    pub proxy_image_pull_policy: Option<String>,

    /// The sidecar's default log level.
    #[arg(long, env = "TRELLIS_PROXY_LOG_LEVEL", default_value = "info", value_parser = log_level)]
    pub proxy_log_level: LogLevel,

    /// OTLP endpoint written into sidecar configs (e.g. http://jaeger-collector:4317).
    #[arg(long, env = "TRELLIS_PROXY_OTLP_ENDPOINT")]
    pub proxy_otlp_endpoint: Option<String>,

    #[arg(long, env = "TRELLIS_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,

    /// Serve the admission webhooks.
    #[arg(long, env = "TRELLIS_WEBHOOK", default_value_t = true, action = ArgAction::Set)]
    pub webhook: bool,

    /// HTTPS address of the webhooks.
    #[arg(long, env = "TRELLIS_WEBHOOK_BIND", default_value = "0.0.0.0:9443")]
    pub webhook_bind: SocketAddr,

    /// The Service in front of the webhooks (its DNS names go into the certificate).
    #[arg(
        long,
        env = "TRELLIS_WEBHOOK_SERVICE",
        default_value = "trellis-operator-webhook"
    )]
    pub webhook_service: String,

    /// More certificate names: DNS names or IP addresses (repeat or comma-separate).
    #[arg(long = "cert-host", env = "TRELLIS_CERT_HOSTS", value_delimiter = ',')]
    pub cert_hosts: Vec<String>,

    /// The Secret holding the webhook CA.
    #[arg(
        long,
        env = "TRELLIS_CERT_SECRET",
        default_value = "trellis-operator-webhook-ca"
    )]
    pub cert_secret: String,

    /// MutatingWebhookConfiguration to write the caBundle into ("" for none).
    #[arg(
        long,
        env = "TRELLIS_MUTATING_WEBHOOK",
        default_value = "trellis-injector"
    )]
    pub mutating_webhook: String,

    /// ValidatingWebhookConfiguration to write the caBundle into ("" for none).
    #[arg(
        long,
        env = "TRELLIS_VALIDATING_WEBHOOK",
        default_value = "trellis-validator"
    )]
    pub validating_webhook: String,

    /// Lifetime of the serving certificate (renewed with a third left).
    #[arg(long, env = "TRELLIS_CERT_VALIDITY", default_value = "720h", value_parser = duration)]
    pub cert_validity: Duration,

    /// Lifetime of the CA.
    #[arg(long, env = "TRELLIS_CA_VALIDITY", default_value = "8760h", value_parser = duration)]
    pub ca_validity: Duration,

    /// How often certificate expiry is checked.
    #[arg(long, env = "TRELLIS_CERT_CHECK_INTERVAL", default_value = "10m", value_parser = duration)]
    pub cert_check_interval: Duration,

    /// Elect a leader among replicas (off: this replica always runs the controllers).
    #[arg(long, env = "TRELLIS_LEADER_ELECTION", default_value_t = true, action = ArgAction::Set)]
    pub leader_election: bool,

    #[arg(long, env = "TRELLIS_LEASE_NAME", default_value = "trellis-operator")]
    pub lease_name: String,

    /// Namespace of the Lease (default: the operator's namespace).
    #[arg(long, env = "TRELLIS_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    #[arg(long, env = "TRELLIS_LEASE_DURATION", default_value = "15s", value_parser = duration)]
    pub lease_duration: Duration,

    /// Address of /metrics, /healthz and /readyz (plain HTTP).
    #[arg(long, env = "TRELLIS_METRICS_BIND", default_value = "0.0.0.0:8080")]
    pub metrics_bind: SocketAddr,

    /// Reconciles at once, per controller.
    #[arg(long, env = "TRELLIS_CONCURRENCY", default_value_t = 4)]
    pub concurrency: u16,

    /// Log one JSON object per line.
    #[arg(long, env = "TRELLIS_LOG_JSON", default_value_t = false, action = ArgAction::Set)]
    pub log_json: bool,
}

const SA_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

impl RunArgs {
    /// The operator's namespace: the flag, else the service account's, else `trellis-system`.
    pub fn operator_namespace(&self) -> String {
        self.operator_namespace
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| {
                std::fs::read_to_string(Path::new(SA_NAMESPACE_FILE))
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| "trellis-system".into())
    }

    pub fn to_config(&self) -> OperatorConfig {
        let own_ns = self.operator_namespace();
        let identity = self
            .identity
            .clone()
            .filter(|i| !i.is_empty())
            .unwrap_or_else(crate::default_identity);
        let settings = Settings {
            proxy: ProxySettings {
                image: self.proxy_image.clone(),
                image_pull_policy: self.proxy_image_pull_policy.clone(),
                log_level: self.proxy_log_level,
                ..ProxySettings::default()
            },
            cluster_domain: self.cluster_domain.clone(),
            tracing: trellis_api::proxy::Tracing {
                otlp_endpoint: self.proxy_otlp_endpoint.clone(),
                ..Default::default()
            },
            ..Settings::default()
        };
        let webhook = self.webhook.then(|| {
            let mut hosts = trellis_api::names::service_hosts(
                &self.webhook_service,
                &own_ns,
                &self.cluster_domain,
            );
            hosts.extend(self.cert_hosts.iter().filter(|h| !h.is_empty()).cloned());
            WebhookConfig {
                addr: self.webhook_bind,
                certs: CertConfig {
                    secret_name: self.cert_secret.clone(),
                    secret_namespace: own_ns.clone(),
                    hosts,
                    mutating_webhook: Some(self.mutating_webhook.clone()).filter(|s| !s.is_empty()),
                    validating_webhook: Some(self.validating_webhook.clone())
                        .filter(|s| !s.is_empty()),
                    ca_validity: self.ca_validity,
                    cert_validity: self.cert_validity,
                    check_interval: self.cert_check_interval,
                },
            }
        });
        let leader_election = self.leader_election.then(|| LeaderElectionConfig {
            lease_name: self.lease_name.clone(),
            lease_namespace: self
                .lease_namespace
                .clone()
                .unwrap_or_else(|| own_ns.clone()),
            identity: identity.clone(),
            lease_duration: self.lease_duration,
            renew_grace: (self.lease_duration / 3).max(Duration::from_secs(1)),
        });
        OperatorConfig {
            namespace: self.namespace.clone().filter(|n| !n.is_empty()),
            settings,
            concurrency: self.concurrency,
            identity,
            leader_election,
            webhook,
            ops_addr: Some(self.metrics_bind),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_make_a_full_config() {
        let cli =
            Cli::try_parse_from(["trellis-operator", "--operator-namespace", "mesh"]).unwrap();
        assert!(cli.command.is_none());
        let c = cli.run.to_config();
        assert_eq!(c.namespace, None);
        let wh = c.webhook.unwrap();
        assert!(
            wh.certs
                .hosts
                .contains(&"trellis-operator-webhook.mesh.svc".to_string())
        );
        assert_eq!(
            wh.certs.mutating_webhook.as_deref(),
            Some("trellis-injector")
        );
        assert_eq!(c.leader_election.unwrap().lease_namespace, "mesh");
        assert_eq!(wh.certs.cert_validity, Duration::from_secs(720 * 3600));
    }

    #[test]
    fn run_subcommand_and_flags() {
        let cli = Cli::try_parse_from([
            "trellis-operator",
            "run",
            "--namespace",
            "shop",
            "--proxy-image",
            "reg/proxy:1",
            "--cert-host",
            "127.0.0.1,localhost",
            "--leader-election",
            "false",
            "--webhook-bind",
            "127.0.0.1:0",
            "--operator-namespace",
            "t",
        ])
        .unwrap();
        let Some(Command::Run(args)) = cli.command else {
            panic!("run expected");
        };
        let c = args.to_config();
        assert_eq!(c.namespace.as_deref(), Some("shop"));
        assert_eq!(c.settings.proxy.image, "reg/proxy:1");
        assert!(c.leader_election.is_none());
        let hosts = c.webhook.unwrap().certs.hosts;
        assert!(
            hosts.contains(&"127.0.0.1".to_string()) && hosts.contains(&"localhost".to_string())
        );
    }

    #[test]
    fn crdgen_subcommand() {
        let cli = Cli::try_parse_from(["trellis-operator", "crdgen"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Crdgen)));
    }
}
