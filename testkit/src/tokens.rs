//! Session tokens as a phone gets them: the dev key ring the test edges trust, and tokens
//! minted with it.

use bytes::Bytes;
use shake_proto::{Claims, KeyRing};

use crate::now_ms;

/// The dev token secret (key id 1) of the test edges' configuration.
pub const DEV_SECRET_HEX: &str = "7368616b652d6465762d746f6b656e2d7365637265742d6e6f742d666f722d70";

/// A key ring holding `secret_hex` as key 1.
pub fn key_ring(secret_hex: &str) -> KeyRing {
    let secret: Vec<u8> = (0..secret_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&secret_hex[i..i + 2], 16).expect("a hex secret"))
        .collect();
    let mut ring = KeyRing::new();
    ring.insert(1, &secret).expect("a usable secret");
    ring
}

/// A token of the dev key for `user_id` (on device `user_id`), issued an hour ago and
/// expiring `expires_in_s` from now (negative: expired).
pub fn token(user_id: u64, expires_in_s: i64) -> Bytes {
    let now = now_ms() / 1000;
    let claims = Claims {
        key_id: 1,
        user_id,
        device_id: user_id,
        issued_at_s: now.saturating_sub(3600),
        expires_at_s: (now as i64 + expires_in_s) as u64,
    };
    Bytes::copy_from_slice(&key_ring(DEV_SECRET_HEX).mint(&claims).expect("minting a token"))
}
