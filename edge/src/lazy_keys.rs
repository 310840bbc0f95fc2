//! The phone-facing TLS 1.3 suites with their keys built on first use, to save memory per
//! phone.
//!
//! rustls builds, for every QUIC connection, two keys it never uses (its TLS record layer's
//! encrypter and decrypter: QUIC protects packets, not records) and quinn asks at once for the
//! next 1-RTT keys, which a key update (rare, and never on a phone's short session) would use.
//! Each is an aws-lc AEAD context of about 600 bytes: 2.4 KB of the edge's 19.8 KiB per idle
//! phone (heaptrack, 10,000 phones; docs/PERFORMANCE.md). The suites here hand out keys that
//! hold their material (tens of bytes) and build the real key the first time one is used, so
//! the four that are never used are never built. The suites' algorithms are otherwise the
//! provider's own (aws-lc-rs): nothing in rustls or quinn is patched.
//!
//! Built keys are behind a `OnceLock`: one atomic load a packet, no lock.

use std::sync::{Mutex, OnceLock, PoisonError};

use rustls::crypto::cipher::{
    AeadKey, InboundOpaqueMessage, InboundPlainMessage, Iv, MessageDecrypter, MessageEncrypter,
    OutboundOpaqueMessage, OutboundPlainMessage, Tls13AeadAlgorithm,
};
use rustls::quic::{self, HeaderProtectionKey, PacketKey, Tag};
use rustls::{ConnectionTrafficSecrets, Error, SupportedCipherSuite, Tls13CipherSuite};

/// `suites` with the keys of every TLS 1.3 suite built on first use (other suites as they
/// are). Each call leaks the few small suite descriptions it makes (rustls wants them
/// `'static`): call it once per provider, not per connection.
pub fn lazy_suites(suites: &[SupportedCipherSuite]) -> Vec<SupportedCipherSuite> {
    suites
        .iter()
        .map(|suite| match suite {
            SupportedCipherSuite::Tls13(inner) => SupportedCipherSuite::Tls13(lazy_suite(inner)),
            other => *other,
        })
        .collect()
}

fn lazy_suite(inner: &'static Tls13CipherSuite) -> &'static Tls13CipherSuite {
    let quic = inner.quic.map(|algorithm| -> &'static dyn quic::Algorithm {
        Box::leak(Box::new(LazyQuicKeys { inner: algorithm, limits: limits_of(inner, algorithm) }))
    });
    Box::leak(Box::new(Tls13CipherSuite {
        common: rustls::CipherSuiteCommon {
            suite: inner.common.suite,
            hash_provider: inner.common.hash_provider,
            confidentiality_limit: inner.common.confidentiality_limit,
        },
        hkdf_provider: inner.hkdf_provider,
        aead_alg: Box::leak(Box::new(LazyRecordKeys(inner.aead_alg))),
        quic,
    }))
}

/// What a packet key of `algorithm` says of itself before it is built (rustls's constants for
/// the suite, read from a real key: the initial keys of a made-up connection).
fn limits_of(suite: &'static Tls13CipherSuite, algorithm: &'static dyn quic::Algorithm) -> Limits {
    let probe =
        quic::Keys::initial(quic::Version::V1, suite, algorithm, &[0; 8], rustls::Side::Server);
    let key = &probe.local.packet;
    Limits {
        tag_len: key.tag_len(),
        confidentiality_limit: key.confidentiality_limit(),
        integrity_limit: key.integrity_limit(),
    }
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    tag_len: usize,
    confidentiality_limit: u64,
    integrity_limit: u64,
}

/// Key material, taken once to build the key.
struct Material(Mutex<Option<(AeadKey, Iv)>>);

impl Material {
    fn new(key: AeadKey, iv: Iv) -> Self {
        Self(Mutex::new(Some((key, iv))))
    }

    /// The material; called once, by the `OnceLock` that builds the key (or by a `&mut` owner).
    fn take(&self) -> (AeadKey, Iv) {
        let taken = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        // Invariant: the one caller that takes it builds the key and keeps it; nothing asks
        // again once a key is built.
        taken.expect("key material is taken only to build the key, once")
    }
}

struct LazyQuicKeys {
    inner: &'static dyn quic::Algorithm,
    limits: Limits,
}

impl quic::Algorithm for LazyQuicKeys {
    fn packet_key(&self, key: AeadKey, iv: Iv) -> Box<dyn PacketKey> {
        Box::new(LazyPacketKey {
            algorithm: self.inner,
            limits: self.limits,
            material: Material::new(key, iv),
            key: OnceLock::new(),
        })
    }

    fn header_protection_key(&self, key: AeadKey) -> Box<dyn HeaderProtectionKey> {
        // Used on every packet from the first: nothing to save.
        self.inner.header_protection_key(key)
    }

    fn aead_key_len(&self) -> usize {
        self.inner.aead_key_len()
    }

    fn fips(&self) -> bool {
        self.inner.fips()
    }
}

struct LazyPacketKey {
    algorithm: &'static dyn quic::Algorithm,
    limits: Limits,
    material: Material,
    key: OnceLock<Box<dyn PacketKey>>,
}

impl LazyPacketKey {
    fn key(&self) -> &dyn PacketKey {
        self.key
            .get_or_init(|| {
                let (key, iv) = self.material.take();
                self.algorithm.packet_key(key, iv)
            })
            .as_ref()
    }
}

impl PacketKey for LazyPacketKey {
    fn encrypt_in_place(
        &self,
        packet_number: u64,
        header: &[u8],
        payload: &mut [u8],
    ) -> Result<Tag, Error> {
        self.key().encrypt_in_place(packet_number, header, payload)
    }

    fn decrypt_in_place<'a>(
        &self,
        packet_number: u64,
        header: &[u8],
        payload: &'a mut [u8],
    ) -> Result<&'a [u8], Error> {
        self.key().decrypt_in_place(packet_number, header, payload)
    }

    fn tag_len(&self) -> usize {
        self.limits.tag_len
    }

    fn confidentiality_limit(&self) -> u64 {
        self.limits.confidentiality_limit
    }

    fn integrity_limit(&self) -> u64 {
        self.limits.integrity_limit
    }
}

/// The record layer's keys: built only if a record is ever protected (never, over QUIC).
struct LazyRecordKeys(&'static dyn Tls13AeadAlgorithm);

impl Tls13AeadAlgorithm for LazyRecordKeys {
    fn encrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        Box::new(LazyEncrypter { algorithm: self.0, state: Lazy::Material(key, iv) })
    }

    fn decrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        Box::new(LazyDecrypter { algorithm: self.0, state: Lazy::Material(key, iv) })
    }

    fn key_len(&self) -> usize {
        self.0.key_len()
    }

    fn extract_keys(
        &self,
        key: AeadKey,
        iv: Iv,
    ) -> Result<ConnectionTrafficSecrets, rustls::crypto::cipher::UnsupportedOperationError> {
        self.0.extract_keys(key, iv)
    }

    fn fips(&self) -> bool {
        self.0.fips()
    }
}

/// A key not built yet, or built.
enum Lazy<K> {
    Material(AeadKey, Iv),
    Built(K),
    /// Only while being built.
    Building,
}

impl<K> Lazy<K> {
    fn get(&mut self, build: impl FnOnce(AeadKey, Iv) -> K) -> &mut K {
        if let Lazy::Material(..) = self {
            let Lazy::Material(key, iv) = std::mem::replace(self, Lazy::Building) else {
                unreachable!("matched just above")
            };
            *self = Lazy::Built(build(key, iv));
        }
        match self {
            Lazy::Built(key) => key,
            Lazy::Material(..) | Lazy::Building => unreachable!("built just above"),
        }
    }
}

/// TLS 1.3 records add the content type byte and the tag.
const RECORD_TAG_LEN: usize = 16;

struct LazyEncrypter {
    algorithm: &'static dyn Tls13AeadAlgorithm,
    state: Lazy<Box<dyn MessageEncrypter>>,
}

impl MessageEncrypter for LazyEncrypter {
    fn encrypt(
        &mut self,
        msg: OutboundPlainMessage<'_>,
        seq: u64,
    ) -> Result<OutboundOpaqueMessage, Error> {
        let algorithm = self.algorithm;
        self.state.get(|key, iv| algorithm.encrypter(key, iv)).encrypt(msg, seq)
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        match &self.state {
            Lazy::Built(key) => key.encrypted_payload_len(payload_len),
            // Every TLS 1.3 AEAD suite has a 16-byte tag.
            _ => payload_len + 1 + RECORD_TAG_LEN,
        }
    }
}

struct LazyDecrypter {
    algorithm: &'static dyn Tls13AeadAlgorithm,
    state: Lazy<Box<dyn MessageDecrypter>>,
}

impl MessageDecrypter for LazyDecrypter {
    fn decrypt<'a>(
        &mut self,
        msg: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, Error> {
        let algorithm = self.algorithm;
        self.state.get(|key, iv| algorithm.decrypter(key, iv)).decrypt(msg, seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::aws_lc_rs::cipher_suite;

    fn suites() -> Vec<(SupportedCipherSuite, SupportedCipherSuite)> {
        let plain = [
            cipher_suite::TLS13_AES_128_GCM_SHA256,
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ];
        plain.iter().copied().zip(lazy_suites(&plain)).collect()
    }

    fn tls13(suite: SupportedCipherSuite) -> &'static Tls13CipherSuite {
        match suite {
            SupportedCipherSuite::Tls13(suite) => suite,
            SupportedCipherSuite::Tls12(_) => panic!("a TLS 1.3 suite"),
        }
    }

    #[test]
    fn lazy_packet_keys_seal_and_open_exactly_as_the_providers_own() {
        for (plain, lazy) in suites() {
            let (plain, lazy) = (tls13(plain), tls13(lazy));
            assert_eq!(plain.common.suite, lazy.common.suite);
            let cid = [7u8; 8];
            let keys = |suite: &'static Tls13CipherSuite, side| {
                let quic = suite.quic.expect("a QUIC suite");
                quic::Keys::initial(quic::Version::V1, suite, quic, &cid, side)
            };
            let server_plain = keys(plain, rustls::Side::Server);
            let server_lazy = keys(lazy, rustls::Side::Server);
            let client_lazy = keys(lazy, rustls::Side::Client);
            let (a, b) = (&server_plain.local.packet, &server_lazy.local.packet);
            assert_eq!(a.tag_len(), b.tag_len());
            assert_eq!(a.confidentiality_limit(), b.confidentiality_limit());
            assert_eq!(a.integrity_limit(), b.integrity_limit());
            let header = [0x40, 1, 2, 3];
            let mut sealed_plain = *b"a shake, sealed";
            let mut sealed_lazy = sealed_plain;
            let tag_plain = a.encrypt_in_place(9, &header, &mut sealed_plain).unwrap();
            let tag_lazy = b.encrypt_in_place(9, &header, &mut sealed_lazy).unwrap();
            assert_eq!(sealed_plain, sealed_lazy, "{:?}", lazy.common.suite);
            assert_eq!(tag_plain.as_ref(), tag_lazy.as_ref());
            // The peer opens it; a wrong packet number does not.
            let mut packet = sealed_lazy.to_vec();
            packet.extend_from_slice(tag_lazy.as_ref());
            let mut wrong = packet.clone();
            let opened =
                client_lazy.remote.packet.decrypt_in_place(9, &header, &mut packet).unwrap();
            assert_eq!(opened, b"a shake, sealed");
            assert!(client_lazy.remote.packet.decrypt_in_place(10, &header, &mut wrong).is_err());
        }
    }

    #[test]
    fn a_lazy_key_that_is_never_used_is_never_built() {
        let (_, lazy) = suites().remove(0);
        let lazy = tls13(lazy);
        let quic = lazy.quic.expect("a QUIC suite");
        let key = quic.packet_key(AeadKey::from([1; 32]), Iv::new([2; 12]));
        // Asking what it is does not build it: a 32-byte key for AES-128 does not build, as
        // using it shows.
        assert_eq!(key.tag_len(), 16);
        assert_eq!(key.confidentiality_limit(), 1 << 23);
        assert_eq!(key.integrity_limit(), 1 << 52);
        let used = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            key.encrypt_in_place(1, &[0x40], &mut [0; 4]).map(|_| ())
        }));
        assert!(!matches!(used, Ok(Ok(()))), "a 32-byte AES-128 key sealed something");
        let encrypter = lazy.aead_alg.encrypter(AeadKey::from([1; 32]), Iv::new([2; 12]));
        assert_eq!(encrypter.encrypted_payload_len(100), 117);
    }
}
