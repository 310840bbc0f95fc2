//! Session tokens: minted by the login service, checked by the edge with a shared key and no
//! central lookup.
//!
//! A token is exactly [`TOKEN_LEN`] bytes, all integers big-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | version, [`TOKEN_VERSION`] |
//! | 1 | 4 | key id |
//! | 5 | 8 | user id (at most 2^62 - 1) |
//! | 13 | 8 | device id |
//! | 21 | 8 | issued at, Unix seconds |
//! | 29 | 8 | expires at, Unix seconds |
//! | 37 | 32 | HMAC-SHA256 of bytes 0..37 under the key named by key id |
//!
//! Keys rotate by key id: a [`KeyRing`] holds every key still accepted. The MAC is checked in
//! constant time (`ring::hmac::verify`) before any claim is trusted.

use ring::hmac;

use crate::varint;

/// Length of every session token.
pub const TOKEN_LEN: usize = 69;

/// The token layout version this crate mints and accepts.
pub const TOKEN_VERSION: u8 = 1;
/// Shortest accepted HMAC secret, bytes.
pub const MIN_SECRET_LEN: usize = 32;
/// How far in the future `issued_at` may be before a token is refused (clock skew between the
/// login service and the edge), seconds.
pub const MAX_CLOCK_SKEW_S: u64 = 300;

const SIGNED_LEN: usize = 37;

/// What a token says about its holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Claims {
    /// Key that signs (or signed) the token.
    pub key_id: u32,
    /// The user; at most 2^62 - 1 so it fits a batch entry.
    pub user_id: u64,
    /// The device the session was issued to.
    pub device_id: u64,
    /// Issue time, Unix seconds.
    pub issued_at_s: u64,
    /// Expiry, Unix seconds: the token is refused from this second on.
    pub expires_at_s: u64,
}

/// Why a token was refused (or could not be minted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not [`TOKEN_LEN`] bytes, or an unknown version.
    #[error("malformed token")]
    Malformed,
    /// No key with this id is in the ring (never issued, or rotated out).
    #[error("unknown key id {0}")]
    UnknownKey(u32),
    /// The MAC does not match: forged or corrupted.
    #[error("bad token signature")]
    BadSignature,
    /// Past its expiry.
    #[error("token expired")]
    Expired,
    /// Issued further in the future than the allowed clock skew.
    #[error("token not yet valid")]
    NotYetValid,
    /// A claim is out of range (a user id over 2^62 - 1, expiry before issue).
    #[error("token claims out of range")]
    InvalidClaims,
    /// A secret shorter than [`MIN_SECRET_LEN`] bytes.
    #[error("HMAC secret shorter than {MIN_SECRET_LEN} bytes")]
    SecretTooShort,
}

impl TokenError {
    /// A short, fixed name for metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::UnknownKey(_) => "unknown_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::InvalidClaims => "invalid_claims",
            TokenError::SecretTooShort => "secret_too_short",
        }
    }
}

/// The HMAC keys in force, by key id.
#[derive(Clone, Default)]
pub struct KeyRing {
    // A handful of keys at most (current and previous): a scan beats a map.
    keys: Vec<(u32, hmac::Key)>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<u32> = self.keys.iter().map(|(id, _)| *id).collect();
        f.debug_struct("KeyRing").field("key_ids", &ids).finish()
    }
}

impl KeyRing {
    /// An empty ring: every token is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the key with id `key_id`.
    pub fn insert(&mut self, key_id: u32, secret: &[u8]) -> Result<(), TokenError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(TokenError::SecretTooShort);
        }
        self.keys.retain(|(id, _)| *id != key_id);
        self.keys.push((key_id, hmac::Key::new(hmac::HMAC_SHA256, secret)));
        Ok(())
    }

    /// Key ids in the ring.
    pub fn key_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.keys.iter().map(|(id, _)| *id)
    }

    fn key(&self, key_id: u32) -> Result<&hmac::Key, TokenError> {
        self.keys
            .iter()
            .find(|(id, _)| *id == key_id)
            .map(|(_, key)| key)
            .ok_or(TokenError::UnknownKey(key_id))
    }

    /// Signs `claims` with the key named by `claims.key_id`.
    pub fn mint(&self, claims: &Claims) -> Result<[u8; TOKEN_LEN], TokenError> {
        if claims.user_id > varint::MAX || claims.expires_at_s < claims.issued_at_s {
            return Err(TokenError::InvalidClaims);
        }
        let key = self.key(claims.key_id)?;
        let mut token = [0u8; TOKEN_LEN];
        token[0] = TOKEN_VERSION;
        token[1..5].copy_from_slice(&claims.key_id.to_be_bytes());
        token[5..13].copy_from_slice(&claims.user_id.to_be_bytes());
        token[13..21].copy_from_slice(&claims.device_id.to_be_bytes());
        token[21..29].copy_from_slice(&claims.issued_at_s.to_be_bytes());
        token[29..37].copy_from_slice(&claims.expires_at_s.to_be_bytes());
        let tag = hmac::sign(key, &token[..SIGNED_LEN]);
        token[SIGNED_LEN..].copy_from_slice(tag.as_ref());
        Ok(token)
    }

    /// Checks a token at time `now_s` (Unix seconds) and returns its claims.
    ///
    /// Order: shape, key, MAC (constant time), then the claims. No claim is looked at before
    /// the MAC has been checked.
    pub fn verify(&self, token: &[u8], now_s: u64) -> Result<Claims, TokenError> {
        let token: &[u8; TOKEN_LEN] = token.try_into().map_err(|_| TokenError::Malformed)?;
        if token[0] != TOKEN_VERSION {
            return Err(TokenError::Malformed);
        }
        let key_id = u32::from_be_bytes(field(token, 1));
        let key = self.key(key_id)?;
        hmac::verify(key, &token[..SIGNED_LEN], &token[SIGNED_LEN..])
            .map_err(|_| TokenError::BadSignature)?;
        let claims = Claims {
            key_id,
            user_id: u64::from_be_bytes(field(token, 5)),
            device_id: u64::from_be_bytes(field(token, 13)),
            issued_at_s: u64::from_be_bytes(field(token, 21)),
            expires_at_s: u64::from_be_bytes(field(token, 29)),
        };
        if claims.user_id > varint::MAX || claims.expires_at_s < claims.issued_at_s {
            return Err(TokenError::InvalidClaims);
        }
        if claims.issued_at_s > now_s.saturating_add(MAX_CLOCK_SKEW_S) {
            return Err(TokenError::NotYetValid);
        }
        if now_s >= claims.expires_at_s {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// The user id a token claims, read without checking the MAC: for the phone's own use (its
/// place in a round's start spread), never for trusting the claim. `None` if `token` is not
/// a token of this layout.
pub fn user_id_of(token: &[u8]) -> Option<u64> {
    unchecked_claim(token, 5)
}

/// The expiry a token claims, Unix seconds, read without checking the MAC: for the phone's
/// own use (whether an edge's `TOKEN_EXPIRED` agrees with its own clock), never for trusting
/// the claim. `None` if `token` is not a token of this layout.
pub fn expires_at_of(token: &[u8]) -> Option<u64> {
    unchecked_claim(token, 29)
}

/// The 8-byte claim at `at` of a token of this layout, its MAC unchecked.
fn unchecked_claim(token: &[u8], at: usize) -> Option<u64> {
    let token: &[u8; TOKEN_LEN] = token.try_into().ok()?;
    (token[0] == TOKEN_VERSION).then(|| u64::from_be_bytes(field(token, at)))
}

fn field<const N: usize>(token: &[u8; TOKEN_LEN], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&token[at..at + N]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET_A: &[u8] = b"0123456789abcdef0123456789abcdef";
    const SECRET_B: &[u8] = b"fedcba9876543210fedcba9876543210";

    fn ring() -> KeyRing {
        let mut ring = KeyRing::new();
        ring.insert(1, SECRET_A).unwrap();
        ring.insert(2, SECRET_B).unwrap();
        ring
    }

    fn claims(key_id: u32) -> Claims {
        Claims { key_id, user_id: 42, device_id: 7, issued_at_s: 1_000, expires_at_s: 2_000 }
    }

    #[test]
    fn the_user_id_and_expiry_are_read_without_the_key_and_only_from_a_token() {
        let token = ring().mint(&claims(1)).unwrap();
        assert_eq!(user_id_of(&token), Some(42));
        assert_eq!(expires_at_of(&token), Some(2_000));
        assert_eq!(user_id_of(&token[..TOKEN_LEN - 1]), None);
        assert_eq!(expires_at_of(&token[..TOKEN_LEN - 1]), None);
        let mut other_version = token;
        other_version[0] = TOKEN_VERSION + 1;
        assert_eq!(user_id_of(&other_version), None);
        assert_eq!(expires_at_of(&other_version), None);
    }

    /// A token signed by a valid key whose claims are out of range (a user id past what a
    /// varint holds, an expiry before its issue) is refused after its MAC: `mint` refuses to
    /// make one, so it is signed here by hand, as a login service with another bug would.
    /// (A user id of 2^62 or more would otherwise reach the batch writer's varint assert.)
    #[test]
    fn a_signed_token_with_claims_out_of_range_is_refused() {
        let ring = ring();
        let signed = |wanted: Claims| {
            let mut token = ring.mint(&Claims { user_id: 1, ..claims(1) }).unwrap();
            token[5..13].copy_from_slice(&wanted.user_id.to_be_bytes());
            token[21..29].copy_from_slice(&wanted.issued_at_s.to_be_bytes());
            token[29..37].copy_from_slice(&wanted.expires_at_s.to_be_bytes());
            let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET_A);
            let tag = hmac::sign(&key, &token[..SIGNED_LEN]);
            token[SIGNED_LEN..].copy_from_slice(tag.as_ref());
            token
        };
        for user_id in [varint::MAX + 1, u64::MAX] {
            let token = signed(Claims { user_id, ..claims(1) });
            assert_eq!(ring.verify(&token, 1_500), Err(TokenError::InvalidClaims), "{user_id}");
        }
        let backwards = signed(Claims { issued_at_s: 1_800, expires_at_s: 1_700, ..claims(1) });
        assert_eq!(ring.verify(&backwards, 1_750), Err(TokenError::InvalidClaims));
        // The same hand signing with claims in range verifies: the test signs as `mint` does.
        let fine = signed(Claims { user_id: varint::MAX, ..claims(1) });
        assert_eq!(ring.verify(&fine, 1_500).map(|c| c.user_id), Ok(varint::MAX));
    }

    #[test]
    fn valid_tokens_verify_under_each_key() {
        let ring = ring();
        for key_id in [1, 2] {
            let token = ring.mint(&claims(key_id)).unwrap();
            assert_eq!(ring.verify(&token, 1_500), Ok(claims(key_id)));
        }
    }

    #[test]
    fn expiry_and_skew_are_enforced() {
        let ring = ring();
        let token = ring.mint(&claims(1)).unwrap();
        assert_eq!(ring.verify(&token, 1_999).map(|c| c.user_id), Ok(42));
        assert_eq!(ring.verify(&token, 2_000), Err(TokenError::Expired));
        assert_eq!(ring.verify(&token, 1_000 - MAX_CLOCK_SKEW_S).map(|c| c.user_id), Ok(42));
        assert_eq!(ring.verify(&token, 1_000 - MAX_CLOCK_SKEW_S - 1), Err(TokenError::NotYetValid));
    }

    #[test]
    fn rotated_out_key_is_unknown() {
        let token = ring().mint(&claims(2)).unwrap();
        let mut only_a = KeyRing::new();
        only_a.insert(1, SECRET_A).unwrap();
        assert_eq!(only_a.verify(&token, 1_500), Err(TokenError::UnknownKey(2)));
    }

    #[test]
    fn a_token_signed_with_another_secret_is_forged() {
        let mut other = KeyRing::new();
        other.insert(1, SECRET_B).unwrap();
        let forged = other.mint(&claims(1)).unwrap();
        assert_eq!(ring().verify(&forged, 1_500), Err(TokenError::BadSignature));
    }

    #[test]
    fn wrong_shapes_are_malformed() {
        let ring = ring();
        let mut token = ring.mint(&claims(1)).unwrap();
        assert_eq!(ring.verify(&token[..68], 1_500), Err(TokenError::Malformed));
        assert_eq!(ring.verify(&[], 1_500), Err(TokenError::Malformed));
        token[0] = 2;
        assert_eq!(ring.verify(&token, 1_500), Err(TokenError::Malformed));
    }

    #[test]
    fn short_secrets_and_bad_claims_are_refused() {
        assert_eq!(KeyRing::new().insert(1, b"short"), Err(TokenError::SecretTooShort));
        let mut c = claims(1);
        c.user_id = varint::MAX + 1;
        assert_eq!(ring().mint(&c), Err(TokenError::InvalidClaims));
    }

    proptest! {
        #[test]
        fn any_flipped_bit_is_refused(byte in 0..TOKEN_LEN, bit in 0..8u8) {
            let ring = ring();
            let mut token = ring.mint(&claims(1)).unwrap();
            token[byte] ^= 1 << bit;
            prop_assert!(ring.verify(&token, 1_500).is_err());
        }
    }
}
