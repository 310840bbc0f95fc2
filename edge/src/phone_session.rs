//! The phone-facing QUIC crypto session: rustls's server connection for the handshake, then
//! only what an established connection needs, to save memory per phone.
//!
//! quinn's own session (`quinn_proto::crypto::rustls`) keeps rustls's whole server connection
//! for the life of the QUIC connection: about 2.5 KB per idle phone (heaptrack; handshake
//! state, buffers, the connection itself). Once the handshake is over and its last flight (the
//! session ticket) is written, a server needs from it only the secrets of the next key phase
//! (for key updates), the peer's transport parameters and the ALPN and server name (asked for
//! once, cached here). So this session drops the rustls connection then. Everything else is
//! quinn's and rustls's public API (`quinn_proto::crypto::{ServerConfig, Session}`): the
//! initial keys and Retry tags come from quinn's own `QuicServerConfig` for the same TLS
//! configuration.
//!
//! After the handshake the session refuses more handshake data with `PROTOCOL_VIOLATION` (in
//! QUIC a client sends no TLS message after its Finished) and exports no keying material.

use std::any::Any;
use std::sync::Arc;

use quinn::crypto::rustls::{HandshakeData, QuicServerConfig};
use quinn_proto::crypto::{self, ExportKeyingMaterialError, KeyPair, Keys, UnsupportedVersion};
use quinn_proto::transport_parameters::TransportParameters;
use quinn_proto::{ConnectionId, Side, TransportError, TransportErrorCode};
use rustls::quic::{Connection, KeyChange, Secrets, ServerConnection, Version};

/// The phone-facing server crypto configuration (see the module's doc).
pub struct PhoneCrypto {
    tls: Arc<rustls::ServerConfig>,
    quinn: QuicServerConfig,
}

impl std::fmt::Debug for PhoneCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhoneCrypto").finish_non_exhaustive()
    }
}

impl PhoneCrypto {
    /// For `tls`, a TLS 1.3 server configuration with a QUIC initial suite (AES-128-GCM).
    pub fn new(tls: Arc<rustls::ServerConfig>) -> Result<Self, String> {
        let quinn = QuicServerConfig::try_from(tls.clone()).map_err(|e| e.to_string())?;
        Ok(Self { tls, quinn })
    }
}

/// QUIC versions rustls knows (quinn's endpoint offers no others).
fn tls_version(version: u32) -> Option<Version> {
    match version {
        0x0000_0001 => Some(Version::V1),
        0xff00_001d..=0xff00_0020 => Some(Version::V1Draft),
        _ => None,
    }
}

impl crypto::ServerConfig for PhoneCrypto {
    fn initial_keys(
        &self,
        version: u32,
        dst_cid: &ConnectionId,
    ) -> Result<Keys, UnsupportedVersion> {
        self.quinn.initial_keys(version, dst_cid)
    }

    fn retry_tag(&self, version: u32, orig_dst_cid: &ConnectionId, packet: &[u8]) -> [u8; 16] {
        self.quinn.retry_tag(version, orig_dst_cid, packet)
    }

    fn start_session(
        self: Arc<Self>,
        version: u32,
        params: &TransportParameters,
    ) -> Box<dyn crypto::Session> {
        Box::new(PhoneSession::start(self, version, params))
    }
}

struct PhoneSession {
    config: Arc<PhoneCrypto>,
    version: u32,
    /// rustls's connection, until the handshake is over and written (boxed: once dropped,
    /// the session holds a null pointer, not the connection's inline size).
    connection: Option<Box<Connection>>,
    /// The next 1-RTT key phase's secrets (from the handshake's last key change).
    next_secrets: Option<Secrets>,
    /// ALPN and server name, once known.
    handshake_data: Option<(Option<Vec<u8>>, Option<String>)>,
    /// The client's transport parameters, once received.
    params: Option<Result<TransportParameters, TransportError>>,
}

impl PhoneSession {
    fn start(config: Arc<PhoneCrypto>, version: u32, params: &TransportParameters) -> Self {
        let mut encoded = Vec::new();
        params.write(&mut encoded);
        // quinn starts a session only for a version `initial_keys` accepted, which are the
        // versions `tls_version` knows; and rustls accepts a TLS 1.3 QUIC configuration, which
        // `PhoneCrypto::new` checked.
        let tls_version = tls_version(version).unwrap_or(Version::V1);
        let connection = ServerConnection::new(config.tls.clone(), tls_version, encoded)
            .expect("a QUIC-capable TLS 1.3 configuration, checked when it was made");
        Self {
            config,
            version,
            connection: Some(Box::new(Connection::Server(connection))),
            next_secrets: None,
            handshake_data: None,
            params: None,
        }
    }

    /// Drops rustls's connection once nothing more can come of it: the handshake complete,
    /// its output written, the next key phase's secrets taken.
    fn settle(&mut self) {
        let done =
            self.connection.as_ref().is_some_and(|c| !c.is_handshaking() && !c.wants_write());
        if done && self.next_secrets.is_some() && self.params.is_some() {
            self.connection = None;
        }
    }
}

impl crypto::Session for PhoneSession {
    fn initial_keys(&self, dst_cid: &ConnectionId, side: Side) -> Keys {
        // The server's side of the initial keys is what quinn asks a server session for.
        debug_assert_eq!(side, Side::Server);
        crypto::ServerConfig::initial_keys(&self.config.quinn, self.version, dst_cid)
            .expect("a version this session was started with")
    }

    fn handshake_data(&self) -> Option<Box<dyn Any>> {
        let (protocol, server_name) = self.handshake_data.clone()?;
        Some(Box::new(HandshakeData { protocol, server_name }))
    }

    fn peer_identity(&self) -> Option<Box<dyn Any>> {
        // Phones present no certificate (no client authentication is configured).
        let certificates = self.connection.as_ref()?.peer_certificates()?;
        let owned: Vec<rustls::pki_types::CertificateDer<'static>> =
            certificates.iter().map(|c| c.clone().into_owned()).collect();
        Some(Box::new(owned))
    }

    fn early_crypto(&self) -> Option<(Box<dyn crypto::HeaderKey>, Box<dyn crypto::PacketKey>)> {
        let keys = self.connection.as_ref()?.zero_rtt_keys()?;
        Some((Box::new(keys.header), Box::new(keys.packet)))
    }

    fn early_data_accepted(&self) -> Option<bool> {
        None
    }

    fn is_handshaking(&self) -> bool {
        self.connection.as_ref().is_some_and(|c| c.is_handshaking())
    }

    fn read_handshake(&mut self, buf: &[u8]) -> Result<bool, TransportError> {
        let Some(connection) = self.connection.as_mut() else {
            return Err(TransportError {
                code: TransportErrorCode::PROTOCOL_VIOLATION,
                frame: None,
                reason: "TLS data after the handshake".into(),
            });
        };
        if let Err(e) = connection.read_hs(buf) {
            let code = match connection.alert() {
                Some(alert) => TransportErrorCode::crypto(alert.into()),
                None => TransportErrorCode::PROTOCOL_VIOLATION,
            };
            return Err(TransportError { code, frame: None, reason: format!("TLS error: {e}") });
        }
        if self.params.is_none()
            && let Some(mut encoded) = connection.quic_transport_parameters()
        {
            let params = TransportParameters::read(Side::Server, &mut encoded);
            self.params = Some(params.map_err(Into::into));
        }
        if self.handshake_data.is_none() {
            let protocol = connection.alpn_protocol().map(<[u8]>::to_vec);
            let server_name = match &**connection {
                Connection::Server(server) => server.server_name().map(str::to_owned),
                Connection::Client(_) => None,
            };
            if protocol.is_some() || server_name.is_some() || !connection.is_handshaking() {
                self.handshake_data = Some((protocol, server_name));
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn transport_parameters(&self) -> Result<Option<TransportParameters>, TransportError> {
        self.params.clone().transpose()
    }

    fn write_handshake(&mut self, buf: &mut Vec<u8>) -> Option<Keys> {
        let change = self.connection.as_mut()?.write_hs(buf);
        let keys = match change {
            Some(KeyChange::Handshake { keys }) => keys,
            Some(KeyChange::OneRtt { keys, next }) => {
                self.next_secrets = Some(next);
                keys
            }
            None => {
                self.settle();
                return None;
            }
        };
        Some(Keys {
            header: KeyPair {
                local: Box::new(keys.local.header),
                remote: Box::new(keys.remote.header),
            },
            packet: KeyPair {
                local: Box::new(keys.local.packet),
                remote: Box::new(keys.remote.packet),
            },
        })
    }

    fn next_1rtt_keys(&mut self) -> Option<KeyPair<Box<dyn crypto::PacketKey>>> {
        let keys = self.next_secrets.as_mut()?.next_packet_keys();
        Some(KeyPair { local: Box::new(keys.local), remote: Box::new(keys.remote) })
    }

    fn is_valid_retry(
        &self,
        _orig_dst_cid: &ConnectionId,
        _header: &[u8],
        _payload: &[u8],
    ) -> bool {
        // Only a client receives Retry packets.
        false
    }

    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), ExportKeyingMaterialError> {
        let connection = self.connection.as_ref().ok_or(ExportKeyingMaterialError)?;
        connection
            .export_keying_material(output, label, Some(context))
            .map(|_| ())
            .map_err(|_| ExportKeyingMaterialError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crypto::Session as _;
    use rustls::quic::ClientConnection;

    /// The edge's phone TLS (its provider, ALPN) on the dev certificates, and a phone's client
    /// configuration that trusts them.
    fn configs(dir: &std::path::Path) -> (Arc<PhoneCrypto>, Arc<rustls::ClientConfig>) {
        let certs = dir.join("certs");
        shake_testkit::scratch::dev_certs(&certs);
        let chain = shake_ops::tls::load_certs(&certs.join("edge-1.pem")).unwrap();
        let key = shake_ops::tls::load_key(&certs.join("edge-1.key")).unwrap();
        let mut server =
            rustls::ServerConfig::builder_with_provider(crate::service::phone_tls_provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
        server.alpn_protocols = vec![shake_proto::PHONE_ALPN.to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        for ca in shake_ops::tls::load_certs(&certs.join("ca.pem")).unwrap() {
            roots.add(ca).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![shake_proto::PHONE_ALPN.to_vec()];
        (Arc::new(PhoneCrypto::new(Arc::new(server)).unwrap()), Arc::new(client))
    }

    #[test]
    fn after_the_handshake_the_session_keeps_only_what_an_established_connection_needs() {
        let dir = std::env::temp_dir().join(format!("shake-phone-session-{}", std::process::id()));
        let (server_config, client_config) = configs(&dir);
        // Transport parameters as a client sends them (all defaults: nothing encoded).
        let params = TransportParameters::read(Side::Server, &mut &[][..]).unwrap();
        let mut encoded = Vec::new();
        params.write(&mut encoded);
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = ClientConnection::new(client_config, Version::V1, name, encoded).unwrap();
        let mut server = PhoneSession::start(server_config, 1, &params);
        assert!(server.is_handshaking() && server.connection.is_some());

        // The handshake, as quinn carries it in CRYPTO frames: each side's bytes of one key
        // epoch delivered before the next epoch's.
        let mut server_keys = 0;
        let mut client_next = None;
        for _ in 0..4 {
            loop {
                let mut chunk = Vec::new();
                let change = client.write_hs(&mut chunk);
                if !chunk.is_empty() {
                    server.read_handshake(&chunk).unwrap();
                }
                match change {
                    Some(KeyChange::OneRtt { next, .. }) => client_next = Some(next),
                    Some(KeyChange::Handshake { .. }) => {}
                    None => break,
                }
            }
            loop {
                let mut chunk = Vec::new();
                let keys = server.write_handshake(&mut chunk);
                if !chunk.is_empty() {
                    client.read_hs(&chunk).unwrap();
                }
                if keys.is_none() {
                    break;
                }
                server_keys += 1;
            }
        }
        assert!(!client.is_handshaking(), "the client finished");
        assert_eq!(server_keys, 2, "handshake keys, then 1-RTT keys");
        assert!(!server.is_handshaking());
        // Once over, rustls's connection is gone; what an established connection asks for
        // stays.
        assert!(server.connection.is_none(), "rustls's connection kept after the handshake");
        assert!(server.transport_parameters().unwrap().is_some());
        let data = server.handshake_data().unwrap().downcast::<HandshakeData>().unwrap();
        assert_eq!(data.protocol.as_deref(), Some(shake_proto::PHONE_ALPN));
        assert_eq!(data.server_name.as_deref(), Some("localhost"));
        // Key updates still work, phase after phase, in step with the client's: what the
        // server seals with its next phase's key, the client opens with its own.
        let mut client_next = client_next.expect("the client's next key phase");
        for phase in 0..3u64 {
            let server_keys = server.next_1rtt_keys().expect("a next key phase");
            let client_keys = client_next.next_packet_keys();
            let header = [0x40, 0xaa, 0xbb];
            let mut packet = header.to_vec();
            packet.extend_from_slice(b"a shake");
            packet.resize(packet.len() + server_keys.local.tag_len(), 0);
            server_keys.local.encrypt(phase, &mut packet, header.len());
            let (_, payload) = packet.split_at_mut(header.len());
            let opened = client_keys.remote.decrypt_in_place(phase, &header, payload).unwrap();
            assert_eq!(opened, b"a shake", "key phase {phase}");
        }
        // More TLS data is a protocol violation, not a panic.
        let late = server.read_handshake(b"late").unwrap_err();
        assert_eq!(late.code, TransportErrorCode::PROTOCOL_VIOLATION);
        let mut out = [0u8; 8];
        assert!(server.export_keying_material(&mut out, b"label", b"").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
