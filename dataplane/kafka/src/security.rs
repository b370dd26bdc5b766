//! The Kafka listener's security settings: TLS (rustls with the ring
//! provider; certificate chain and key from PEM files, optional client
//! certificate verification against a CA file) and SASL (which mechanisms,
//! whether a connection must authenticate, the bootstrap users file).
//!
//! Built once at start, before any shard runs, and shared read-only by
//! every shard.

use crate::sasl::{FileUsers, Mechanism};
use ferrolog_transport::tls::pem_certs;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use std::path::PathBuf;
use std::sync::Arc;

/// Whether a TLS client must present a certificate signed by the CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    None,
    /// Asked for; a client without one is let in, a bad one is refused.
    Requested,
    /// A client without a valid certificate is refused.
    Required,
}

/// The files of a TLS listener.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates that client certificates are checked against.
    pub client_ca: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

#[derive(Clone, Default)]
pub struct SecurityConfig {
    /// `None`: plain TCP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Mechanisms offered by SaslHandshake; empty: SASL is off.
    pub sasl_mechanisms: Vec<Mechanism>,
    /// Before a connection authenticated, only ApiVersions, SaslHandshake
    /// and SaslAuthenticate are served; anything else closes it.
    pub require_auth: bool,
    pub users: FileUsers,
}

impl std::fmt::Debug for SecurityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityConfig")
            .field("tls", &self.tls.is_some())
            .field("sasl_mechanisms", &self.sasl_mechanisms)
            .field("require_auth", &self.require_auth)
            .field("users", &self.users.len())
            .finish()
    }
}

/// The rustls server configuration of `files`, or why the files are unusable.
pub fn server_tls(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = pem_certs(&files.cert)?;
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|e| format!("{}: {e}", files.key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match (&files.client_ca, files.client_auth) {
        (_, ClientAuth::None) => builder.with_no_client_auth(),
        (None, _) => return Err("client certificate verification needs a CA file".into()),
        (Some(ca), auth) => {
            let mut roots = RootCertStore::empty();
            for c in pem_certs(ca)? {
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = if auth == ClientAuth::Requested {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder.with_client_cert_verifier(v.build().map_err(|e| format!("{}: {e}", ca.display()))?)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("{} and {}: {e}", files.cert.display(), files.key.display()))?;
    Ok(Arc::new(config))
}
