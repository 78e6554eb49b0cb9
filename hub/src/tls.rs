//! The hub's TLS identity: a configured certificate, or a self-signed one made in the
//! data directory on first start (clients pin it; `hub tls cert` prints its path).

use crate::config::HubConfig;
use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::PathBuf;
use std::sync::Arc;

/// Paths of the certificate and key in use.
pub fn paths(config: &HubConfig) -> (PathBuf, PathBuf) {
    if config.tls.cert.is_empty() {
        let dir = config.data_dir.join("tls");
        (dir.join("cert.pem"), dir.join("key.pem"))
    } else {
        (
            PathBuf::from(&config.tls.cert),
            PathBuf::from(&config.tls.key),
        )
    }
}

/// Makes the self-signed certificate if it is configured to be used and missing.
pub fn ensure(config: &HubConfig) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = paths(config);
    if config.tls.cert.is_empty() && !cert.exists() {
        let names = vec![
            config.tls.hostname.clone(),
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        let certified = rcgen::generate_simple_self_signed(names)
            .context("making the self-signed certificate")?;
        if let Some(dir) = cert.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&key, certified.key_pair.serialize_pem())
            .with_context(|| format!("writing {}", key.display()))?;
        std::fs::write(&cert, certified.cert.pem())
            .with_context(|| format!("writing {}", cert.display()))?;
        tracing::info!(cert = %cert.display(), "made a self-signed TLS certificate; clients pin this file");
    }
    Ok((cert, key))
}

/// The rustls acceptor for TLS roles (ring provider).
pub fn acceptor(config: &HubConfig) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let (cert, key) = ensure(config)?;
    let certs = CertificateDer::pem_file_iter(&cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(&key).with_context(|| format!("reading {}", key.display()))?;
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("the TLS certificate and key do not match")?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}
