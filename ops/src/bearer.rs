//! Bearer tokens for the HTTP endpoints that are not for everyone (the allocator's admin API,
//! the edge's per-user reports): read from a file only the service and its operators can read,
//! and compared in constant time.

use std::path::Path;
use std::sync::Arc;

use axum::http::{HeaderMap, header};

/// Fewest bytes a token may have.
pub const MIN_TOKEN_LEN: usize = 16;

/// A bearer token as its file holds it (surrounding whitespace ignored). Its `Debug` does not
/// show it.
#[derive(Clone)]
pub struct BearerToken(Arc<str>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

impl BearerToken {
    /// The token in `file`, or why it cannot be used: the same check for `--check-config` and
    /// the start.
    pub fn read(file: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("reading {}: {e}", file.display()))?;
        Self::new(text.trim()).map_err(|why| format!("{}: {why}", file.display()))
    }

    /// `secret` as a token, unless it is too short to be one.
    pub fn new(secret: &str) -> Result<Self, String> {
        if secret.len() < MIN_TOKEN_LEN {
            return Err(format!("the token needs {MIN_TOKEN_LEN} bytes or more"));
        }
        Ok(Self(secret.into()))
    }

    /// True when `headers` carry `Authorization: Bearer <this token>`.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        self.is(given.trim())
    }

    /// True when `given` is this token (for a page that cannot send headers and passes it in
    /// its query).
    pub fn is(&self, given: &str) -> bool {
        same_secret(given.as_bytes(), self.0.as_bytes())
    }
}

/// Equal in time whatever the first difference: a wrong token's prefix is not measurable.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_read_trimmed_and_admits_only_itself() {
        let dir = std::env::temp_dir().join(format!("shake-bearer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "  0123456789abcdef\n").unwrap();
        let token = BearerToken::read(&file).unwrap();
        assert!(!format!("{token:?}").contains("0123"), "Debug shows the secret");
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            headers
        };
        assert!(token.admits(&with("Bearer 0123456789abcdef")));
        assert!(!token.admits(&with("Bearer 0123456789abcdeF")));
        assert!(!token.admits(&with("Bearer 0123456789abcde")));
        assert!(!token.admits(&with("Basic 0123456789abcdef")));
        assert!(!token.admits(&HeaderMap::new()));
        assert!(token.is("0123456789abcdef") && !token.is(""));

        std::fs::write(&file, "short\n").unwrap();
        assert!(BearerToken::read(&file).unwrap_err().contains("16 bytes or more"));
        assert!(BearerToken::read(&dir.join("missing")).unwrap_err().starts_with("reading "));
        let _ = std::fs::remove_dir_all(dir);
    }
}
