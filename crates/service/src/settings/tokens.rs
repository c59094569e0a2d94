//! `TOKEN_SECRET`: signed tokens, so that an application's back end can hand each browser a credential
//! of its own (channels, scopes, an expiry) without ever giving it an API key.
//!
//! A token is a JWT (RFC 7519) signed with HS256 and the secret. Its claims: `exp` (required; a token
//! past it is refused, with no leeway), `scope` (space-separated scopes), `channels` (patterns; none:
//! no channel) and optionally `sub` (the user it names: the access log names it, and it owns the
//! token's `Idempotency-Key` records). Every other algorithm is refused, `none` included.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use model::ChannelPattern;
use serde::Deserialize;

use super::access::{Access, Caller, Channels, Scope};

/// The shortest secret accepted: HS256 keys shorter than the hash's output weaken it.
pub const MIN_SECRET_BYTES: usize = 32;

/// `TOKEN_SECRET`, or none (tokens are not accepted). `Debug` never shows it.
#[derive(Clone, Default)]
pub struct TokenSecret(Option<Arc<[u8]>>);

#[derive(Deserialize)]
struct Claims {
    exp: u64,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    channels: Vec<String>,
    sub: Option<String>,
}

impl TokenSecret {
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Whether `credential` has the shape of a token (two dots), rather than of an API key.
    pub fn looks_like_token(credential: &str) -> bool {
        credential.bytes().filter(|&b| b == b'.').count() == 2
    }

    /// The caller a token names, when its signature, algorithm and expiry hold and it carries `scope`:
    /// 401 for any fault of the token, 403 for a valid token without the scope.
    pub fn check(&self, token: &str, scope: Scope) -> Access {
        let Some(secret) = &self.0 else {
            return Access::Unauthenticated;
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        let Ok(key) = DecodingKey::from_secret(secret) else {
            return Access::Unauthenticated;
        };
        let claims = match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
            Ok(data) => data.claims,
            Err(e) => {
                log::debug!("token refused: {e}");
                return Access::Unauthenticated;
            }
        };
        let Ok(patterns) = claims
            .channels
            .iter()
            .map(|c| c.parse::<ChannelPattern>())
            .collect::<Result<Vec<_>, _>>()
        else {
            return Access::Unauthenticated;
        };
        if !claims.scope.split(' ').any(|s| s == scope.as_str()) {
            return Access::Forbidden;
        }
        let sub = claims.sub.unwrap_or_default();
        Access::Granted(Caller {
            id: Some(format!("sub:{sub}")),
            channels: Channels::Only(patterns),
            expires: Some(claims.exp),
            sub: Some(sub).filter(|s| !s.is_empty()),
        })
    }
}

impl FromStr for TokenSecret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(Self(None));
        }
        let secret = match s.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the secret file {path}: {e}"))?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
            None => s.to_owned(),
        };
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the secret is {} bytes; HS256 needs at least {MIN_SECRET_BYTES}",
                secret.len()
            ));
        }
        Ok(Self(Some(Arc::from(secret.into_bytes()))))
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_set() { "set" } else { "unset" })
    }
}

impl PartialEq for TokenSecret {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{encode, EncodingKey, Header};

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(alg: Algorithm, secret: &str, claims: serde_json::Value) -> String {
        let key = EncodingKey::from_secret(secret.as_bytes()).unwrap();
        encode(&Header::new(alg), &claims, &key).unwrap()
    }

    #[test]
    fn a_valid_token_grants_its_scopes_on_its_channels_and_names_its_subject() {
        let secret: TokenSecret = SECRET.parse().unwrap();
        let t = token(
            Algorithm::HS256,
            SECRET,
            serde_json::json!({"exp": now() + 60, "scope": "subscribe read", "channels": ["chat.*"], "sub": "ada"}),
        );
        let Access::Granted(caller) = secret.check(&t, Scope::Subscribe) else {
            panic!("a valid token")
        };
        assert_eq!(caller.sub.as_deref(), Some("ada"));
        assert!(caller.channels.cover(&"chat.room1".parse().unwrap()));
        assert!(!caller.channels.cover(&"*".parse().unwrap()));
        assert_eq!(secret.check(&t, Scope::Publish), Access::Forbidden);
        let none = token(
            Algorithm::HS256,
            SECRET,
            serde_json::json!({"exp": now() + 60, "scope": "read"}),
        );
        let Access::Granted(caller) = secret.check(&none, Scope::Read) else {
            panic!("a valid token")
        };
        assert!(
            !caller.channels.cover_channel("default"),
            "no channels: no channel"
        );
    }

    #[test]
    fn another_algorithm_a_bad_signature_or_a_past_exp_is_refused() {
        let secret: TokenSecret = SECRET.parse().unwrap();
        let claims = serde_json::json!({"exp": now() + 60, "scope": "read", "channels": ["*"]});
        for refused in [
            token(Algorithm::HS384, SECRET, claims.clone()),
            token(
                Algorithm::HS256,
                "another secret of thirty-two bytes!",
                claims.clone(),
            ),
            token(
                Algorithm::HS256,
                SECRET,
                serde_json::json!({"exp": now() - 1, "scope": "read"}),
            ),
            token(
                Algorithm::HS256,
                SECRET,
                serde_json::json!({"scope": "read"}),
            ),
        ] {
            assert_eq!(
                secret.check(&refused, Scope::Read),
                Access::Unauthenticated,
                "{refused}"
            );
        }
        // `alg: none`, unsigned.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let unsigned = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(claims.to_string())
        );
        assert_eq!(
            secret.check(&unsigned, Scope::Read),
            Access::Unauthenticated
        );
        assert_eq!(
            TokenSecret::default().check(&token(Algorithm::HS256, SECRET, claims), Scope::Read),
            Access::Unauthenticated
        );
    }

    #[test]
    fn a_short_secret_is_refused_and_never_shown() {
        let e = "too-short".parse::<TokenSecret>().unwrap_err();
        assert!(!e.contains("too-short"), "{e}");
        assert_eq!(
            format!("{:?}", SECRET.parse::<TokenSecret>().unwrap()),
            "set"
        );
    }
}
