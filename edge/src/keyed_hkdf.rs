//! HKDF for the phone-facing TLS 1.3 suites: rustls's own HMAC-based HKDF
//! (`HkdfUsingHmac`) over ring's HMAC, whose key is set up once per secret.
//!
//! A TLS 1.3 handshake with QUIC expands each secret it derives several times (packet key,
//! IV, header-protection key, the next key phase's secret, the next secret of the schedule),
//! several dozen expansions a handshake. The aws-lc-rs suites expand through aws-lc's
//! `HKDF_expand`, which sets the HMAC key up again on every call (two SHA-256 blocks for the
//! pads, and an `EVP` context each time); here the pads are computed once per secret and each
//! expansion copies them. The output is the same HKDF (RFC 5869), checked against aws-lc's
//! below; only where its time goes differs (`scripts/bench.sh handshake`, docs/PERFORMANCE.md).

use rustls::crypto::hmac::{Hmac, Key, Tag};
use rustls::crypto::tls13::{Hkdf, HkdfUsingHmac};
use rustls::{SupportedCipherSuite, Tls13CipherSuite};

/// HMAC on ring, keyed once.
struct RingHmac(&'static ring::hmac::Algorithm);

/// A ring HMAC key: the inner and outer pads already hashed.
struct RingHmacKey(ring::hmac::Key);

impl Hmac for RingHmac {
    fn with_key(&self, key: &[u8]) -> Box<dyn Key> {
        Box::new(RingHmacKey(ring::hmac::Key::new(*self.0, key)))
    }

    fn hash_output_len(&self) -> usize {
        self.0.digest_algorithm().output_len()
    }
}

impl Key for RingHmacKey {
    fn sign_concat(&self, first: &[u8], middle: &[&[u8]], last: &[u8]) -> Tag {
        let mut context = ring::hmac::Context::with_key(&self.0);
        context.update(first);
        for part in middle {
            context.update(part);
        }
        context.update(last);
        Tag::new(context.sign().as_ref())
    }

    fn tag_len(&self) -> usize {
        self.0.algorithm().digest_algorithm().output_len()
    }
}

static HMAC_SHA256: RingHmac = RingHmac(&ring::hmac::HMAC_SHA256);
static HMAC_SHA384: RingHmac = RingHmac(&ring::hmac::HMAC_SHA384);
static HKDF_SHA256: HkdfUsingHmac<'static> = HkdfUsingHmac(&HMAC_SHA256);
static HKDF_SHA384: HkdfUsingHmac<'static> = HkdfUsingHmac(&HMAC_SHA384);

/// The keyed HKDF for a suite's hash (SHA-256 or SHA-384; `None` for another).
fn hkdf_for(suite: &Tls13CipherSuite) -> Option<&'static dyn Hkdf> {
    match suite.common.hash_provider.algorithm() {
        rustls::crypto::hash::HashAlgorithm::SHA256 => Some(&HKDF_SHA256),
        rustls::crypto::hash::HashAlgorithm::SHA384 => Some(&HKDF_SHA384),
        _ => None,
    }
}

/// `suites` with the keyed HKDF in every TLS 1.3 suite whose hash it has (the rest as they
/// are). Each call leaks the suite descriptions it makes (rustls wants them `'static`): call
/// it once per provider, not per connection.
pub fn keyed_hkdf_suites(suites: &[SupportedCipherSuite]) -> Vec<SupportedCipherSuite> {
    suites
        .iter()
        .map(|suite| match suite {
            SupportedCipherSuite::Tls13(inner) => match hkdf_for(inner) {
                Some(hkdf) => SupportedCipherSuite::Tls13(Box::leak(Box::new(Tls13CipherSuite {
                    common: rustls::CipherSuiteCommon {
                        suite: inner.common.suite,
                        hash_provider: inner.common.hash_provider,
                        confidentiality_limit: inner.common.confidentiality_limit,
                    },
                    hkdf_provider: hkdf,
                    aead_alg: inner.aead_alg,
                    quic: inner.quic,
                }))),
                None => *suite,
            },
            other => *other,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::aws_lc_rs::cipher_suite;

    fn tls13(suite: SupportedCipherSuite) -> &'static Tls13CipherSuite {
        match suite {
            SupportedCipherSuite::Tls13(inner) => inner,
            _ => unreachable!("a TLS 1.3 suite"),
        }
    }

    #[test]
    fn expansions_equal_aws_lcs_for_both_hashes_and_every_length() {
        for suite in
            [cipher_suite::TLS13_AES_128_GCM_SHA256, cipher_suite::TLS13_AES_256_GCM_SHA384]
        {
            let reference = tls13(suite).hkdf_provider;
            let keyed = tls13(keyed_hkdf_suites(&[suite])[0]).hkdf_provider;
            for (salt, secret) in
                [(None, &b"input keying material"[..]), (Some(&[7u8; 13][..]), &[])]
            {
                let a = reference.extract_from_secret(salt, secret);
                let b = keyed.extract_from_secret(salt, secret);
                // Lengths across block boundaries (32 and 48 bytes a block).
                for len in [1, 12, 16, 31, 32, 33, 48, 49, 96, 255] {
                    let info: &[&[u8]] = &[b"tls13 ", b"quic key", &[len as u8]];
                    let (mut x, mut y) = (vec![0; len], vec![0; len]);
                    a.expand_slice(info, &mut x).unwrap();
                    b.expand_slice(info, &mut y).unwrap();
                    assert_eq!(x, y, "{:?}, {len} bytes", suite.suite());
                }
                let (x, y) = (a.expand_block(&[b"derived"]), b.expand_block(&[b"derived"]));
                assert_eq!(x.as_ref(), y.as_ref());
                let (x, y) =
                    (reference.extract_from_zero_ikm(salt), keyed.extract_from_zero_ikm(salt));
                assert_eq!(
                    x.expand_block(&[b"c hs traffic"]).as_ref(),
                    y.expand_block(&[b"c hs traffic"]).as_ref()
                );
                let okm = a.expand_block(&[b"finished"]);
                assert_eq!(
                    reference.hmac_sign(&okm, b"transcript hash").as_ref(),
                    keyed.hmac_sign(&okm, b"transcript hash").as_ref()
                );
            }
        }
    }

    #[test]
    fn an_rfc_5869_test_vector_comes_out() {
        // RFC 5869, A.1 (SHA-256).
        let ikm = [0x0b; 22];
        let salt: Vec<u8> = (0x00..=0x0c).collect();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        let keyed = tls13(keyed_hkdf_suites(&[cipher_suite::TLS13_AES_128_GCM_SHA256])[0]);
        let mut okm = [0u8; 42];
        keyed
            .hkdf_provider
            .extract_from_secret(Some(&salt), &ikm)
            .expand_slice(&[&info], &mut okm)
            .unwrap();
        let hex: String = okm.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
    }

    #[test]
    fn other_suites_and_the_rest_of_a_suite_are_left_as_they_are() {
        let chacha = cipher_suite::TLS13_CHACHA20_POLY1305_SHA256;
        let keyed = tls13(keyed_hkdf_suites(&[chacha])[0]);
        assert_eq!(keyed.common.suite, chacha.suite());
        assert!(std::ptr::eq(keyed.aead_alg, tls13(chacha).aead_alg));
        assert!(keyed.quic.is_some());
    }
}
