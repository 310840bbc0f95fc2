//! TLS files and configurations: PEM loading, the ring provider, mutual TLS between edges and
//! the allocator (edges present certificates from a trusted CA, named `edge-<id>`). TLS 1.3.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is missing, unreadable or holds nothing usable.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the assembled configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built (an empty or unusable CA file).
    #[error("edge CA: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.display().to_string(), message: message.to_string() }
}

/// Every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no certificate in file"));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

/// The ring crypto provider, shared by every TLS configuration here.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls server configuration for `alpn` that requires a client certificate from `client_ca`.
pub fn mutual_tls_server(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
    alpn: &[u8],
) -> Result<rustls::ServerConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in load_certs(client_ca)? {
        roots.add(ca)?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert)?, load_key(key)?)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    config.max_early_data_size = 0;
    Ok(config)
}

/// The first step of every client configuration here: TLS 1.3, trusting `server_ca`.
fn client_builder(
    server_ca: &Path,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, TlsError>
{
    let mut roots = RootCertStore::empty();
    for ca in load_certs(server_ca)? {
        roots.add(ca)?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots))
}

/// A rustls client configuration for `alpn` that trusts `server_ca` and presents `cert`/`key`.
pub fn mutual_tls_client(
    server_ca: &Path,
    cert: &Path,
    key: &Path,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    let mut config =
        client_builder(server_ca)?.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// A rustls client configuration for `alpn` that trusts `server_ca` and presents no certificate
/// (what phones use).
pub fn client(server_ca: &Path, alpn: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = client_builder(server_ca)?.with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// The DNS name in edge `id`'s certificate (`edge-<id>`).
pub fn edge_name(id: u64) -> String {
    format!("edge-{id}")
}

/// Whether the certificate is valid for edge `edge_id`'s name ([`edge_name`]): an edge may
/// only speak for the id its certificate names.
pub fn certificate_names_edge(cert: &CertificateDer<'_>, edge_id: u64) -> bool {
    let Ok(name) = rustls_pki_types::ServerName::try_from(edge_name(edge_id)) else {
        return false;
    };
    webpki::EndEntityCert::try_from(cert)
        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
}
