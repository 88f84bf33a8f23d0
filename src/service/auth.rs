//! Who may call the service. The API (and `/metrics`) takes a bearer token from the
//! environment; events take either that token or an HMAC-SHA256 signature over
//! `"{timestamp}.{body}"` with a shared secret from the environment, where the timestamp
//! must be recent and each signature is accepted once (no replays). Comparisons are
//! constant-time. Secrets are never logged or echoed.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Header carrying the signing time, in Unix seconds.
pub const TIMESTAMP_HEADER: &str = "x-dwflow-timestamp";
/// Header carrying `sha256=<hex HMAC-SHA256 of "{timestamp}.{body}">`.
pub const SIGNATURE_HEADER: &str = "x-dwflow-signature";
/// How far a signed timestamp may be from the service's clock.
pub const TOLERANCE_SECS: i64 = 300;

#[derive(Clone, Default)]
pub struct AuthConfig {
    /// Bearer token for the API; `None`: the API is open (loopback only).
    pub api_token: Option<String>,
    /// Shared secret for signed events; `None`: events need the bearer token.
    pub webhook_secret: Option<String>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("api_token", &self.api_token.as_ref().map(|_| "***"))
            .field(
                "webhook_secret",
                &self.webhook_secret.as_ref().map(|_| "***"),
            )
            .finish()
    }
}

/// Why a request was refused (the text is safe to return to the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("missing credentials: send `Authorization: Bearer <token>`")]
    MissingToken,
    #[error("invalid bearer token")]
    BadToken,
    #[error(
        "events must be authenticated: sign the body (headers {TIMESTAMP_HEADER} and {SIGNATURE_HEADER}) or send the API bearer token"
    )]
    Unauthenticated,
    #[error("the service has no webhook secret and no API token: it accepts no events")]
    NoEventCredentials,
    #[error("malformed {0} header")]
    Malformed(&'static str),
    #[error("timestamp outside the accepted window of {TOLERANCE_SECS} s")]
    Stale,
    #[error("signature does not match the body")]
    BadSignature,
    #[error("this signed event was already delivered (replay)")]
    Replay,
}

fn bearer(authorization: Option<&str>) -> Option<&str> {
    let value = authorization?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Constant-time equality that does not reveal the expected length either: compares
/// digests of fixed size.
fn same(a: &str, b: &str) -> bool {
    use sha2::Digest as _;
    Sha256::digest(a.as_bytes())
        .ct_eq(&Sha256::digest(b.as_bytes()))
        .into()
}

impl AuthConfig {
    /// Checks an API call's `Authorization` header.
    pub fn check_api(&self, authorization: Option<&str>) -> Result<(), Refusal> {
        let Some(expected) = &self.api_token else {
            return Ok(());
        };
        match bearer(authorization) {
            None => Err(Refusal::MissingToken),
            Some(t) if same(t, expected) => Ok(()),
            Some(_) => Err(Refusal::BadToken),
        }
    }

    /// Checks an event delivery. On success returns the signature to remember against
    /// replays (`None` for bearer-authenticated events, which carry no signature).
    pub fn check_event(
        &self,
        authorization: Option<&str>,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now_secs: i64,
    ) -> Result<Option<String>, Refusal> {
        if self.api_token.is_none() && self.webhook_secret.is_none() {
            return Err(Refusal::NoEventCredentials);
        }
        if let (Some(secret), Some(sig)) = (&self.webhook_secret, signature) {
            let ts = timestamp.ok_or(Refusal::Malformed("x-dwflow-timestamp"))?;
            let ts_secs: i64 = ts
                .trim()
                .parse()
                .map_err(|_| Refusal::Malformed("x-dwflow-timestamp"))?;
            if now_secs.abs_diff(ts_secs) > TOLERANCE_SECS.unsigned_abs() {
                return Err(Refusal::Stale);
            }
            let hex = sig
                .trim()
                .strip_prefix("sha256=")
                .ok_or(Refusal::Malformed("x-dwflow-signature"))?;
            let given = decode_hex(hex).ok_or(Refusal::Malformed("x-dwflow-signature"))?;
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
                .map_err(|_| Refusal::BadSignature)?;
            mac.update(ts.trim().as_bytes());
            mac.update(b".");
            mac.update(body);
            mac.verify_slice(&given)
                .map_err(|_| Refusal::BadSignature)?;
            return Ok(Some(hex.to_ascii_lowercase()));
        }
        if bearer(authorization).is_some() && self.api_token.is_some() {
            self.check_api(authorization)?;
            return Ok(None);
        }
        Err(Refusal::Unauthenticated)
    }
}

/// `sha256=<hex>` for a body signed at `timestamp` (used by clients, tests, benches).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        // HMAC accepts keys of any length.
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + bytes.len() * 2);
    out.push_str("sha256=");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AuthConfig {
        AuthConfig {
            api_token: Some("tok".into()),
            webhook_secret: Some("s3cret".into()),
        }
    }

    #[test]
    fn bearer_tokens() {
        let c = cfg();
        assert_eq!(c.check_api(Some("Bearer tok")), Ok(()));
        assert_eq!(c.check_api(Some("bearer  tok ")), Ok(()));
        assert_eq!(c.check_api(Some("Bearer nope")), Err(Refusal::BadToken));
        assert_eq!(c.check_api(None), Err(Refusal::MissingToken));
        assert_eq!(AuthConfig::default().check_api(None), Ok(()));
    }

    #[test]
    fn signed_events() {
        let c = cfg();
        let body = br#"{"type":"x"}"#;
        let sig = sign("s3cret", 1000, body);
        assert!(
            c.check_event(None, Some("1000"), Some(&sig), body, 1010)
                .is_ok()
        );
        // Tampered body, wrong secret, stale or missing timestamp.
        assert_eq!(
            c.check_event(None, Some("1000"), Some(&sig), b"{}", 1010),
            Err(Refusal::BadSignature)
        );
        let other = sign("other", 1000, body);
        assert_eq!(
            c.check_event(None, Some("1000"), Some(&other), body, 1010),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            c.check_event(None, Some("1000"), Some(&sig), body, 2000),
            Err(Refusal::Stale)
        );
        // Timestamps far outside i64 arithmetic are refused, not a panic.
        assert_eq!(
            c.check_event(None, Some("-9223372036854775808"), Some(&sig), body, 1000),
            Err(Refusal::Stale)
        );
        assert_eq!(
            c.check_event(None, None, Some(&sig), body, 1000),
            Err(Refusal::Malformed("x-dwflow-timestamp"))
        );
        // The timestamp is part of what is signed.
        assert_eq!(
            c.check_event(None, Some("1001"), Some(&sig), body, 1001),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            c.check_event(None, None, None, body, 1000),
            Err(Refusal::Unauthenticated)
        );
        assert!(
            c.check_event(Some("Bearer tok"), None, None, body, 0)
                .is_ok()
        );
        assert_eq!(
            AuthConfig::default().check_event(None, None, None, body, 0),
            Err(Refusal::NoEventCredentials)
        );
    }
}
