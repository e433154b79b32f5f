//! Who is calling. Internal services send a bearer service token (`VTX_SERVICE_TOKEN`). Apps
//! never hold it: an internal service mints a short-lived *grant* token for an app
//! (`POST /v1/upload-tokens`); the app opens an upload session with it and gets back an
//! *upload* token bound to that one session.
//!
//! Signed tokens are `vtx1.<payload>.<mac>`: base64url JSON claims and their HMAC-SHA256 under
//! the gateway's signing key. This small format is ours rather than JWT's: it has one
//! algorithm, so there is no `alg` header to get wrong, and it needs only the `hmac` crate.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;
use vtx_domain::{UploadId, VideoId};

use crate::{ApiError, AppState};

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "vtx1";
/// Longest lifetime a grant may ask for.
pub const MAX_GRANT_TTL_SECS: u64 = 24 * 3600;

/// What a signed token allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// May open upload sessions (and use the sessions it opened).
    Grant,
    /// May use one upload session.
    Upload,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub kind: TokenKind,
    /// The grant's own id, or the upload session's id.
    pub id: Uuid,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Who the app acts for (the internal service's user id), for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// A grant's: the uploader's follower count as the service that minted it vouches for it
    /// (an app cannot claim one of its own: a large one buys extreme encodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub followers: Option<u64>,
}

/// Service tokens and the signing key. Cheap to clone.
#[derive(Clone)]
pub struct Auth(Arc<Keys>);

struct Keys {
    service_tokens: Vec<Vec<u8>>,
    /// (key id, key), newest first: the first signs, every one verifies what it signed.
    signing: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    BadSignature,
    Expired,
}

impl Auth {
    /// `service_tokens` must not be empty. `signing_keys` are (key id, key), newest first:
    /// tokens are signed with the first and carry its id; a token signed with any of them
    /// verifies, so a new key is listed first and the old one kept until its tokens expired.
    /// None: one key derived from the first service token, so every gateway sharing the token
    /// verifies the same upload tokens.
    pub fn new(service_tokens: &[String], signing_keys: &[(String, String)]) -> Self {
        assert!(!service_tokens.is_empty(), "at least one service token");
        let signing = if signing_keys.is_empty() {
            let mut mac = HmacSha256::new_from_slice(service_tokens[0].as_bytes())
                .expect("HMAC takes any key length");
            mac.update(b"vtx upload token signing key v1");
            vec![("d".to_string(), mac.finalize().into_bytes().to_vec())]
        } else {
            signing_keys
                .iter()
                .map(|(id, k)| (id.clone(), k.as_bytes().to_vec()))
                .collect()
        };
        Self(Arc::new(Keys {
            service_tokens: service_tokens
                .iter()
                .map(|t| t.as_bytes().to_vec())
                .collect(),
            signing,
        }))
    }

    fn mac(&self) -> HmacSha256 {
        self.mac_with(&self.0.signing[0].1)
    }

    fn mac_with(&self, key: &[u8]) -> HmacSha256 {
        HmacSha256::new_from_slice(key).expect("HMAC takes any key length")
    }

    /// `vtx1.<key id>.<base64url claims>.<base64url HMAC-SHA256 of what precedes it>`.
    pub fn sign(&self, claims: &Claims) -> String {
        let payload = B64.encode(serde_json::to_vec(claims).expect("claims serialise"));
        let (kid, key) = &self.0.signing[0];
        let signed = format!("{PREFIX}.{kid}.{payload}");
        let mut mac = self.mac_with(key);
        mac.update(signed.as_bytes());
        let sig = B64.encode(mac.finalize().into_bytes());
        format!("{signed}.{sig}")
    }

    /// A playback token for one video until `exp` (Unix seconds): `<key id>.<exp>.<base64url
    /// HMAC-SHA256 of "playback", the video and exp>`. Put in the path of the video's object
    /// URLs (`/v1/media/s/<token>/videos/<video>/...`) so that the relative URLs in its
    /// playlists carry it too.
    pub fn playback_token(&self, video: VideoId, exp: i64) -> String {
        let (kid, key) = &self.0.signing[0];
        let sig = self.playback_mac(key, video, exp).finalize().into_bytes();
        format!("{kid}.{exp}.{}", B64.encode(sig))
    }

    fn playback_mac(&self, key: &[u8], video: VideoId, exp: i64) -> HmacSha256 {
        let mut mac = self.mac_with(key);
        mac.update(format!("vtx playback v1:{video}:{exp}").as_bytes());
        mac
    }

    /// Whether `token` lets `video` be played at `now`.
    pub fn verify_playback(&self, token: &str, video: VideoId, now: i64) -> Result<(), TokenError> {
        let mut parts = token.splitn(3, '.');
        let (Some(kid), Some(exp), Some(sig)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed);
        };
        let exp: i64 = exp.parse().map_err(|_| TokenError::Malformed)?;
        let sig = B64.decode(sig).map_err(|_| TokenError::Malformed)?;
        let (_, key) = self
            .0
            .signing
            .iter()
            .find(|(id, _)| id == kid)
            .ok_or(TokenError::BadSignature)?;
        // Constant-time comparison.
        self.playback_mac(key, video, exp)
            .verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        if exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(())
    }

    /// The token of one upload session, expiring with it.
    pub fn upload_token(
        &self,
        upload: UploadId,
        expires_at: chrono::DateTime<chrono::Utc>,
    ) -> String {
        self.sign(&Claims {
            kind: TokenKind::Upload,
            id: upload.as_uuid(),
            exp: expires_at.timestamp(),
            sub: None,
            followers: None,
        })
    }

    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(PREFIX), Some(kid), Some(payload), Some(sig), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TokenError::Malformed);
        };
        let sig = B64.decode(sig).map_err(|_| TokenError::Malformed)?;
        // The key the token names; a key no longer configured makes it invalid.
        let key = self
            .0
            .signing
            .iter()
            .find(|(id, _)| id == kid)
            .map(|(_, k)| k)
            .ok_or(TokenError::BadSignature)?;
        let mut mac = self.mac_with(key);
        mac.update(PREFIX.as_bytes());
        mac.update(b".");
        mac.update(kid.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = B64
            .decode(payload)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    fn is_service_token(&self, token: &str) -> bool {
        // Compare MACs of both sides so the comparison takes the same time whatever matches.
        let digest = |b: &[u8]| {
            let mut m = self.mac();
            m.update(b);
            m.finalize().into_bytes()
        };
        let given = digest(token.as_bytes());
        self.0
            .service_tokens
            .iter()
            .fold(false, |hit, t| hit | (digest(t) == given))
    }

    /// Identifies the caller from a bearer token.
    pub fn caller(&self, token: &str) -> Result<Caller, ApiError> {
        if self.is_service_token(token) {
            return Ok(Caller::Service);
        }
        match self.verify(token, chrono::Utc::now().timestamp()) {
            Ok(Claims {
                kind: TokenKind::Grant,
                id,
                sub,
                followers,
                ..
            }) => Ok(Caller::Grant { id, sub, followers }),
            Ok(Claims {
                kind: TokenKind::Upload,
                id,
                ..
            }) => Ok(Caller::Upload(UploadId::from_uuid(id))),
            Err(TokenError::Expired) => Err(unauthorized(
                "auth-expired",
                "the token has expired; ask for a new one",
            )),
            Err(TokenError::Malformed | TokenError::BadSignature) => Err(unauthorized(
                "auth-invalid",
                "the bearer token is not valid",
            )),
        }
    }
}

fn unauthorized(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
}

/// The authenticated caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// An internal service: may do anything.
    Service,
    /// An app holding a grant: may open upload sessions.
    Grant {
        id: Uuid,
        sub: Option<String>,
        /// The follower count signed into the grant.
        followers: Option<u64>,
    },
    /// An app holding one session's upload token.
    Upload(UploadId),
}

impl Caller {
    pub fn require_service(&self) -> Result<(), ApiError> {
        match self {
            Caller::Service => Ok(()),
            _ => Err(forbidden("this endpoint needs a service token")),
        }
    }

    /// Who may open upload sessions; returns the grant to bind the session to and the follower
    /// count to record: a service's as it says, a grant's as signed into it (an app that claims
    /// another one is refused).
    pub fn may_create_upload(
        &self,
        claimed_followers: Option<u64>,
    ) -> Result<(Option<Uuid>, Option<u64>), ApiError> {
        match self {
            Caller::Service => Ok((None, claimed_followers)),
            Caller::Grant { id, followers, .. } => {
                if claimed_followers.is_some() && claimed_followers != *followers {
                    return Err(forbidden(
                        "a follower count is taken from the grant the service signed, not from \
                         the app",
                    ));
                }
                Ok((Some(*id), *followers))
            }
            Caller::Upload(_) => Err(forbidden(
                "an upload token is bound to its session; opening another needs a grant",
            )),
        }
    }

    /// A session is used by a service, by its own upload token, or by the grant that opened it.
    pub fn may_use_upload(&self, upload: UploadId, grant: Option<Uuid>) -> Result<(), ApiError> {
        let ok = match self {
            Caller::Service => true,
            Caller::Upload(id) => *id == upload,
            Caller::Grant { id, .. } => grant == Some(*id),
        };
        if ok {
            Ok(())
        } else {
            Err(forbidden("the token is not valid for this upload"))
        }
    }
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "auth-scope", message)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| {
                unauthorized(
                    "auth-missing",
                    "send `Authorization: Bearer <token>` (a service, grant or upload token)",
                )
            })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                unauthorized(
                    "auth-invalid",
                    "the Authorization header must be `Bearer <token>`",
                )
            })?;
        state.auth.caller(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(&["svc-secret".to_string()], &[])
    }

    fn claims(kind: TokenKind, exp: i64) -> Claims {
        Claims {
            kind,
            id: Uuid::new_v4(),
            exp,
            sub: Some("user-1".into()),
            followers: None,
        }
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let a = auth();
        let c = claims(TokenKind::Upload, 1_000);
        let t = a.sign(&c);
        assert_eq!(a.verify(&t, 999), Ok(c));
        assert_eq!(a.verify(&t, 1_000), Err(TokenError::Expired));
    }

    #[test]
    fn tampered_or_foreign_tokens_are_refused() {
        let a = auth();
        let t = a.sign(&claims(TokenKind::Grant, i64::MAX));
        // Swap the payload for one claiming an upload token.
        let forged_payload = B64
            .encode(serde_json::to_vec(&claims(TokenKind::Upload, i64::MAX)).expect("serialise"));
        let sig = t.rsplit('.').next().expect("sig");
        let kid = t.split('.').nth(1).expect("key id");
        let forged = format!("{PREFIX}.{kid}.{forged_payload}.{sig}");
        assert_eq!(a.verify(&forged, 0), Err(TokenError::BadSignature));
        let other = Auth::new(&["another".to_string()], &[]);
        assert_eq!(other.verify(&t, 0), Err(TokenError::BadSignature));
        assert_eq!(a.verify("vtx1.abc", 0), Err(TokenError::Malformed));
        assert_eq!(a.verify("svc-secret", 0), Err(TokenError::Malformed));
    }

    #[test]
    fn service_tokens_match_exactly() {
        let a = Auth::new(&["one".to_string(), "two".to_string()], &[]);
        assert!(a.is_service_token("one"));
        assert!(a.is_service_token("two"));
        assert!(!a.is_service_token("on"));
        assert!(!a.is_service_token(""));
    }

    #[test]
    fn scopes() {
        let upload = UploadId::new();
        let grant = Uuid::new_v4();
        assert!(Caller::Service.may_use_upload(upload, None).is_ok());
        assert!(Caller::Upload(upload).may_use_upload(upload, None).is_ok());
        assert!(
            Caller::Upload(UploadId::new())
                .may_use_upload(upload, None)
                .is_err()
        );
        let g = Caller::Grant {
            id: grant,
            sub: None,
            followers: None,
        };
        assert!(g.may_use_upload(upload, Some(grant)).is_ok());
        assert!(g.may_use_upload(upload, None).is_err());
        assert!(g.require_service().is_err());
        assert!(Caller::Upload(upload).may_create_upload(None).is_err());
    }

    #[test]
    fn keys_rotate_without_breaking_live_tokens() {
        let key = |id: &str, k: &str| (id.to_string(), k.repeat(32));
        let svc = ["svc-secret".to_string()];
        let old = Auth::new(&svc, &[key("k1", "a")]);
        let token = old.sign(&claims(TokenKind::Grant, 2_000));
        assert!(token.starts_with("vtx1.k1."), "{token}");
        // A new key signs; the old one still verifies what it signed.
        let rotated = Auth::new(&svc, &[key("k2", "b"), key("k1", "a")]);
        assert!(rotated.verify(&token, 1_000).is_ok());
        assert!(
            rotated
                .sign(&claims(TokenKind::Grant, 2_000))
                .starts_with("vtx1.k2.")
        );
        // Once the old key is dropped, its tokens stop working.
        let later = Auth::new(&svc, &[key("k2", "b")]);
        assert_eq!(later.verify(&token, 1_000), Err(TokenError::BadSignature));
        // A token naming a key it was not signed with fails too.
        let forged = token.replacen("vtx1.k1.", "vtx1.k2.", 1);
        assert_eq!(
            rotated.verify(&forged, 1_000),
            Err(TokenError::BadSignature)
        );
    }
}
