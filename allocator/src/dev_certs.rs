//! `shake-allocator dev-certs DIR`: a development PKI so mutual TLS works out of the box.
//!
//! Writes `ca.pem`/`ca.key` (a dev CA), `allocator.pem`/`.key` (server certificate for
//! `localhost` and 127.0.0.1), and `edge-N.pem`/`.key` for each edge id (client certificates
//! for the allocator link, also valid as the edge's server certificate for phones). All keys
//! are ECDSA P-256. Never use these in production: the CA key sits beside them.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use shake_ops::tls::edge_name;

/// Failure to create the dev certificates.
#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    /// Key or certificate generation failed.
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing a file failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The SAN every dev server certificate carries.
const LOCAL_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

fn write(dir: &Path, name: &str, contents: &str) -> Result<(), DevCertError> {
    let path = dir.join(name);
    std::fs::write(&path, contents).map_err(|source| DevCertError::Write { path, source })
}

/// Writes the CA, the allocator certificate and a certificate for each of `edge_ids` into `dir`.
/// Returns the files written.
pub fn generate(dir: &Path, edge_ids: &[u64]) -> Result<Vec<PathBuf>, DevCertError> {
    std::fs::create_dir_all(dir)
        .map_err(|source| DevCertError::Write { path: dir.to_owned(), source })?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, "Shake dev CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    write(dir, "ca.pem", &ca_cert.pem())?;
    write(dir, "ca.key", &ca_key.serialize_pem())?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut written = vec![dir.join("ca.pem"), dir.join("ca.key")];
    let mut leaf = |name: &str, extra_names: &[String]| -> Result<(), DevCertError> {
        let key = KeyPair::generate()?;
        let mut names: Vec<String> = extra_names.to_vec();
        names.extend(LOCAL_NAMES.iter().map(|n| n.to_string()));
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &issuer)?;
        write(dir, &format!("{name}.pem"), &cert.pem())?;
        write(dir, &format!("{name}.key"), &key.serialize_pem())?;
        written.push(dir.join(format!("{name}.pem")));
        written.push(dir.join(format!("{name}.key")));
        Ok(())
    };
    leaf("allocator", &[])?;
    for id in edge_ids {
        leaf(&edge_name(*id), &[edge_name(*id)])?;
    }
    Ok(written)
}
