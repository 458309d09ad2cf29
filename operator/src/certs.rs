//! The webhooks' serving certificate, managed by the operator itself.
//!
//! A self-signed CA lives in a Secret (created by the first replica that finds
//! none). Every replica signs its own short-lived leaf for the webhook
//! Service's DNS names (plus configured hosts and IPs), serves it through a
//! rustls resolver that can be swapped while running, and writes the CA
//! bundle into the webhook configurations' `caBundle`. A periodic check renews
//! the leaf, and the CA, before they expire; while a CA is replaced the bundle
//! carries both, so callers trust old and new leaves alike.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

use crate::error::{is_conflict, is_not_found};
use crate::metrics::Metrics;
use trellis_api::names::{FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL};

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const CA_NOT_AFTER: &str = "ca.notAfter";
const CA_PREVIOUS: &str = "ca-previous.crt";
const CA_PREVIOUS_NOT_AFTER: &str = "ca-previous.notAfter";
const CA_COMMON_NAME: &str = "trellis-operator-webhook-ca";

/// Why certificate management failed.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot build the TLS key: {0}")]
    Tls(#[from] rustls::Error),
    #[error("kubernetes API error while {action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("cannot serialize patch: {0}")]
    Serialize(#[from] serde_json::Error),
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> CertError {
    let action = action.into();
    move |source| CertError::Kube {
        action,
        source: Box::new(source),
    }
}

/// Where the CA is kept, what the leaf covers, and when things are renewed.
#[derive(Clone, Debug)]
pub struct CertConfig {
    /// The Secret holding the CA (in the operator's namespace).
    pub secret_name: String,
    pub secret_namespace: String,
    /// Subject alternative names of the leaf: DNS names and IP addresses.
    pub hosts: Vec<String>,
    /// MutatingWebhookConfiguration whose webhooks get the CA bundle.
    pub mutating_webhook: Option<String>,
    /// ValidatingWebhookConfiguration whose webhooks get the CA bundle.
    pub validating_webhook: Option<String>,
    pub ca_validity: Duration,
    pub cert_validity: Duration,
    /// How often expiry is checked and the bundle re-asserted.
    pub check_interval: Duration,
}

impl CertConfig {
    /// Renew the leaf when less than a third of its life is left.
    fn leaf_renew_at(&self, not_after: i64) -> i64 {
        not_after - (self.cert_validity.as_secs() / 3) as i64
    }

    /// Renew the CA when less than a third of its life, or one leaf lifetime, is left.
    fn ca_renew_at(&self, not_after: i64) -> i64 {
        let margin = (self.ca_validity.as_secs() / 3).max(self.cert_validity.as_secs());
        not_after - margin as i64
    }
}

/// A CA: its certificate, key and expiry (unix seconds).
#[derive(Clone, PartialEq, Eq)]
pub struct CaMaterial {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: i64,
}

impl fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaMaterial")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A serving certificate and its key.
pub struct Leaf {
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub key_der: Vec<u8>,
    pub not_after: i64,
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

fn at(unix: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "trellis");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn serial(seed: &[u8]) -> SerialNumber {
    let mut hasher = Sha256::new();
    hasher.update(seed);
    hasher.update(
        OffsetDateTime::now_utc()
            .unix_timestamp_nanos()
            .to_be_bytes(),
    );
    let mut bytes = hasher.finalize()[..16].to_vec();
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

/// A new self-signed CA valid for `validity`.
pub fn generate_ca(validity: Duration) -> Result<CaMaterial, CertError> {
    let key = KeyPair::generate()?;
    let mut params = ca_params();
    let start = now();
    let not_after = start + validity.as_secs() as i64;
    params.not_before = at(start - 300);
    params.not_after = at(not_after);
    params.serial_number = Some(serial(b"ca"));
    let cert = params.self_signed(&key)?;
    Ok(CaMaterial {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after,
    })
}

/// A leaf for `hosts`, signed by `ca`, valid for `validity` (never past the CA).
pub fn issue_leaf(
    ca: &CaMaterial,
    hosts: &[String],
    validity: Duration,
) -> Result<Leaf, CertError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(hosts.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        hosts
            .first()
            .cloned()
            .unwrap_or_else(|| "trellis-operator".into()),
    );
    params.distinguished_name = dn;
    let start = now();
    let not_after = (start + validity.as_secs() as i64).min(ca.not_after);
    params.not_before = at(start - 300);
    params.not_after = at(not_after);
    params.serial_number = Some(serial(hosts.join(",").as_bytes()));
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Leaf {
        cert_pem: cert.pem(),
        cert_der: cert.der().clone(),
        key_der: key.serialize_der(),
        not_after,
    })
}

/// The certificate the webhook server presents, swappable while serving.
#[derive(Default)]
pub struct CertStore {
    key: RwLock<Option<Arc<CertifiedKey>>>,
    state: RwLock<StoreState>,
}

#[derive(Default, Clone)]
struct StoreState {
    ca: Option<CaMaterial>,
    leaf_pem: Option<String>,
    leaf_not_after: i64,
    bundle: String,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("loaded", &self.is_loaded())
            .finish()
    }
}

impl CertStore {
    pub fn new() -> Arc<Self> {
        Arc::new(CertStore::default())
    }

    /// Whether a certificate is being served.
    pub fn is_loaded(&self) -> bool {
        self.key.read().map(|k| k.is_some()).unwrap_or(false)
    }

    /// The PEM CA bundle clients should trust (current CA, plus the previous one during a rotation).
    pub fn ca_bundle(&self) -> String {
        self.state
            .read()
            .map(|s| s.bundle.clone())
            .unwrap_or_default()
    }

    /// The serving certificate, PEM.
    pub fn leaf_pem(&self) -> Option<String> {
        self.state.read().ok().and_then(|s| s.leaf_pem.clone())
    }

    /// When the serving certificate expires (unix seconds), 0 if none.
    pub fn leaf_not_after(&self) -> i64 {
        self.state.read().map(|s| s.leaf_not_after).unwrap_or(0)
    }

    /// Starts serving `leaf` (new handshakes get it; open connections keep theirs).
    pub fn install(&self, ca: &CaMaterial, bundle: String, leaf: &Leaf) -> Result<(), CertError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone()));
        let signing = rustls::crypto::ring::sign::any_supported_type(&key)?;
        let certified = Arc::new(CertifiedKey::new(vec![leaf.cert_der.clone()], signing));
        if let Ok(mut k) = self.key.write() {
            *k = Some(certified);
        }
        if let Ok(mut s) = self.state.write() {
            *s = StoreState {
                ca: Some(ca.clone()),
                leaf_pem: Some(leaf.cert_pem.clone()),
                leaf_not_after: leaf.not_after,
                bundle,
            };
        }
        Ok(())
    }

    fn snapshot(&self) -> StoreState {
        self.state.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// A rustls server config that always presents the current certificate.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|e| panic!("ring supports the default TLS versions: {e}"));
        let mut config = builder
            .with_no_client_auth()
            .with_cert_resolver(self.clone() as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.key.read().ok().and_then(|k| k.clone())
    }
}

/// Keeps the CA Secret, the served leaf and the webhook `caBundle`s current.
pub struct CertManager {
    client: Client,
    config: CertConfig,
    store: Arc<CertStore>,
    metrics: Metrics,
    field_manager: String,
}

impl CertManager {
    pub fn new(
        client: Client,
        config: CertConfig,
        store: Arc<CertStore>,
        metrics: Metrics,
    ) -> Self {
        CertManager {
            client,
            config,
            store,
            metrics,
            field_manager: FIELD_MANAGER.into(),
        }
    }

    pub fn store(&self) -> Arc<CertStore> {
        self.store.clone()
    }

    /// One pass: CA present and fresh, leaf fresh, bundles written.
    pub async fn ensure(&self) -> Result<(), CertError> {
        let (ca, previous) = self.ensure_ca().await?;
        let mut bundle = ca.cert_pem.clone();
        if let Some(prev) = previous.as_ref().filter(|p| p.not_after > now()) {
            bundle.push_str(&prev.cert_pem);
        }
        let current = self.store.snapshot();
        let leaf_due = current.ca.as_ref() != Some(&ca)
            || current.leaf_pem.is_none()
            || now() >= self.config.leaf_renew_at(current.leaf_not_after);
        if leaf_due {
            let leaf = issue_leaf(&ca, &self.config.hosts, self.config.cert_validity)?;
            self.store.install(&ca, bundle.clone(), &leaf)?;
            self.metrics.cert_rotations.inc();
            self.metrics.cert_expiry.set(leaf.not_after);
            tracing::info!(not_after = leaf.not_after, hosts = ?self.config.hosts, "webhook serving certificate issued");
        } else if current.bundle != bundle
            && let Ok(mut s) = self.store.state.write()
        {
            s.bundle = bundle.clone();
        }
        self.patch_bundles(&bundle).await
    }

    /// Runs [`ensure`](Self::ensure) every `check_interval` (sooner after a failure) until `shutdown`.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let wait = match self.ensure().await {
                Ok(()) => self.config.check_interval,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook certificate check failed; retrying");
                    self.config.check_interval.min(Duration::from_secs(5))
                }
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// The CA from the Secret, created or renewed as needed; plus the previous CA, if any.
    async fn ensure_ca(&self) -> Result<(CaMaterial, Option<CaMaterial>), CertError> {
        let api = Api::<Secret>::namespaced(self.client.clone(), &self.config.secret_namespace);
        let name = &self.config.secret_name;
        for _ in 0..3 {
            let existing = api
                .get_opt(name)
                .await
                .map_err(kube_err(format!("reading Secret {name}")))?;
            let parsed = existing.as_ref().and_then(read_ca);
            if let Some((ca, prev)) = &parsed
                && now() < self.config.ca_renew_at(ca.not_after)
            {
                return Ok((ca.clone(), prev.clone()));
            }
            let fresh = generate_ca(self.config.ca_validity)?;
            let previous = parsed.map(|(ca, _)| ca).filter(|ca| ca.not_after > now());
            let mut secret = ca_secret(
                name,
                &self.config.secret_namespace,
                &fresh,
                previous.as_ref(),
            );
            let result = match existing {
                None => api.create(&PostParams::default(), &secret).await,
                Some(old) => {
                    // Replace only the version we read: another replica may have rotated it.
                    secret.metadata.resource_version = old.metadata.resource_version;
                    api.replace(name, &PostParams::default(), &secret).await
                }
            };
            match result {
                Ok(_) => {
                    tracing::info!(secret = %name, not_after = fresh.not_after, "webhook CA written");
                    return Ok((fresh, previous));
                }
                Err(e) if is_conflict(&e) => continue, // someone else won; read theirs
                Err(e) => return Err(kube_err(format!("writing Secret {name}"))(e)),
            }
        }
        Err(CertError::Kube {
            action: format!("writing Secret {name}: kept conflicting"),
            source: Box::new(kube::Error::Api(
                kube::core::Status::failure("conflict", "Conflict").boxed(),
            )),
        })
    }

    async fn patch_bundles(&self, bundle: &str) -> Result<(), CertError> {
        if let Some(name) = &self.config.mutating_webhook {
            let api = Api::<MutatingWebhookConfiguration>::all(self.client.clone());
            let bundles = |c: &MutatingWebhookConfiguration| {
                c.webhooks
                    .iter()
                    .flatten()
                    .map(|w| (w.name.clone(), w.client_config.ca_bundle.clone()))
                    .collect::<Vec<_>>()
            };
            self.patch_config(&api, name, bundle, bundles).await?;
        }
        if let Some(name) = &self.config.validating_webhook {
            let api = Api::<ValidatingWebhookConfiguration>::all(self.client.clone());
            let bundles = |c: &ValidatingWebhookConfiguration| {
                c.webhooks
                    .iter()
                    .flatten()
                    .map(|w| (w.name.clone(), w.client_config.ca_bundle.clone()))
                    .collect::<Vec<_>>()
            };
            self.patch_config(&api, name, bundle, bundles).await?;
        }
        Ok(())
    }

    /// Sets `caBundle` of every webhook in one configuration, if it differs.
    async fn patch_config<K>(
        &self,
        api: &Api<K>,
        name: &str,
        bundle: &str,
        bundles: impl Fn(&K) -> Vec<(String, Option<ByteString>)>,
    ) -> Result<(), CertError>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + fmt::Debug,
    {
        let kind = K::kind(&()).into_owned();
        let Some(config) = api
            .get_opt(name)
            .await
            .map_err(kube_err(format!("reading {kind} {name}")))?
        else {
            tracing::debug!(%kind, %name, "webhook configuration not found; caBundle not written");
            return Ok(());
        };
        let want = ByteString(bundle.as_bytes().to_vec());
        let mut ops = Vec::new();
        for (i, (webhook, current)) in bundles(&config).into_iter().enumerate() {
            if current.as_ref() == Some(&want) {
                continue;
            }
            ops.push(serde_json::json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": webhook}));
            ops.push(serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": want}));
        }
        if ops.is_empty() {
            return Ok(());
        }
        let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))?;
        let params = PatchParams {
            field_manager: Some(self.field_manager.clone()),
            ..Default::default()
        };
        match api.patch(name, &params, &Patch::<()>::Json(patch)).await {
            Ok(_) => {
                tracing::info!(%kind, %name, "caBundle written");
                Ok(())
            }
            // The list changed between read and patch (the `test` failed): next pass retries.
            Err(kube::Error::Api(s)) if s.code == 422 || s.code == 409 => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(kube_err(format!("patching {kind} {name}"))(e)),
        }
    }
}

fn read_ca(secret: &Secret) -> Option<(CaMaterial, Option<CaMaterial>)> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| {
        data.get(key)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    let cert_pem = text(CA_CERT)?;
    let key_pem = text(CA_KEY)?;
    let not_after = text(CA_NOT_AFTER)?.trim().parse().ok()?;
    // A key that does not parse means a corrupt Secret: treat it as absent.
    KeyPair::from_pem(&key_pem).ok()?;
    let previous = match (text(CA_PREVIOUS), text(CA_PREVIOUS_NOT_AFTER)) {
        (Some(cert_pem), Some(na)) => na.trim().parse().ok().map(|not_after| CaMaterial {
            cert_pem,
            key_pem: String::new(),
            not_after,
        }),
        _ => None,
    };
    Some((
        CaMaterial {
            cert_pem,
            key_pem,
            not_after,
        },
        previous,
    ))
}

fn ca_secret(
    name: &str,
    namespace: &str,
    ca: &CaMaterial,
    previous: Option<&CaMaterial>,
) -> Secret {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    let mut data = BTreeMap::from([
        (CA_CERT.to_string(), bytes(&ca.cert_pem)),
        (CA_KEY.to_string(), bytes(&ca.key_pem)),
        (CA_NOT_AFTER.to_string(), bytes(&ca.not_after.to_string())),
    ]);
    if let Some(p) = previous {
        data.insert(CA_PREVIOUS.into(), bytes(&p.cert_pem));
        data.insert(
            CA_PREVIOUS_NOT_AFTER.into(),
            bytes(&p.not_after.to_string()),
        );
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.into(),
                MANAGED_BY.into(),
            )])),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_chains_to_the_ca_and_covers_ips() {
        let ca = generate_ca(Duration::from_secs(3600)).unwrap();
        let hosts = vec!["svc.ns.svc".to_string(), "127.0.0.1".to_string()];
        let leaf = issue_leaf(&ca, &hosts, Duration::from_secs(600)).unwrap();
        assert!(leaf.not_after <= ca.not_after);
        assert!(leaf.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));

        let mut roots = rustls::RootCertStore::empty();
        let ca_der =
            rustls::pki_types::pem::PemObject::from_pem_slice(ca.cert_pem.as_bytes()).unwrap();
        roots.add(ca_der).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        use rustls::client::danger::ServerCertVerifier;
        let ip = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        verifier
            .verify_server_cert(
                &leaf.cert_der,
                &[],
                &ip,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .unwrap();
        let dns = rustls::pki_types::ServerName::try_from("svc.ns.svc").unwrap();
        verifier
            .verify_server_cert(
                &leaf.cert_der,
                &[],
                &dns,
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .unwrap();
        let other = rustls::pki_types::ServerName::try_from("evil.example").unwrap();
        assert!(
            verifier
                .verify_server_cert(
                    &leaf.cert_der,
                    &[],
                    &other,
                    &[],
                    rustls::pki_types::UnixTime::now()
                )
                .is_err()
        );
    }

    #[test]
    fn secret_round_trips() {
        let ca = generate_ca(Duration::from_secs(3600)).unwrap();
        let old = generate_ca(Duration::from_secs(60)).unwrap();
        let secret = ca_secret("s", "ns", &ca, Some(&old));
        let (read, prev) = read_ca(&secret).unwrap();
        assert_eq!(read, ca);
        assert_eq!(prev.unwrap().cert_pem, old.cert_pem);
    }

    #[test]
    fn store_swaps_certificates() {
        let store = CertStore::new();
        assert!(!store.is_loaded());
        let ca = generate_ca(Duration::from_secs(3600)).unwrap();
        let hosts = vec!["127.0.0.1".to_string()];
        let a = issue_leaf(&ca, &hosts, Duration::from_secs(600)).unwrap();
        store.install(&ca, ca.cert_pem.clone(), &a).unwrap();
        assert!(store.is_loaded());
        let b = issue_leaf(&ca, &hosts, Duration::from_secs(600)).unwrap();
        store.install(&ca, ca.cert_pem.clone(), &b).unwrap();
        assert_eq!(store.leaf_pem().as_deref(), Some(b.cert_pem.as_str()));
        assert_ne!(a.cert_pem, b.cert_pem);
    }
}
