//! Who may do what: `API_KEYS`, each key with its scopes and the channels it covers.

use std::fmt;
use std::str::FromStr;

use model::ChannelPattern;
use sha2::{Digest, Sha256};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Publish,
    Read,
    Subscribe,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Read => "read",
            Self::Subscribe => "subscribe",
        }
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "publish" => Ok(Self::Publish),
            "read" => Ok(Self::Read),
            "subscribe" => Ok(Self::Subscribe),
            other => Err(format!(
                "unknown scope `{other}` (publish, read, subscribe)"
            )),
        }
    }
}

/// The channels a credential covers: every one, or those its patterns match.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Channels {
    #[default]
    All,
    Only(Vec<ChannelPattern>),
}

impl Channels {
    /// Whether one of the credential's patterns covers every channel `wanted` matches.
    pub fn cover(&self, wanted: &ChannelPattern) -> bool {
        match self {
            Self::All => true,
            Self::Only(patterns) => patterns.iter().any(|p| p.covers(wanted)),
        }
    }

    /// Whether the credential covers the one channel `channel`.
    pub fn cover_channel(&self, channel: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(patterns) => patterns.iter().any(|p| p.matches(channel)),
        }
    }
}

/// Who made a request, as far as credentials tell: the identity of its API key (`None` when Relay runs
/// open), and the channels it covers. The identity is a digest prefix, so it can name the key in stored
/// records without revealing it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Caller {
    pub id: Option<String>,
    pub channels: Channels,
    /// When a token's `exp` passes (Unix seconds); `None` for API keys and open access.
    pub expires: Option<u64>,
    /// A token's `sub`, for the access log.
    pub sub: Option<String>,
}

/// The outcome of checking a presented key against [`ApiKeys`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Granted(Caller),
    /// No key, or a key that is not configured: 401.
    Unauthenticated,
    /// A known key without the scope: 403.
    Forbidden,
}

/// `API_KEYS`: `key:scope+scope[:pattern|pattern],…`, or `@path` naming a file that holds the same
/// list (a mounted secret). A key without patterns covers every channel. Only digests of the keys are
/// kept; `Debug` shows how many there are, never a key.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiKeys(Vec<Key>);

#[derive(Clone, PartialEq, Eq)]
struct Key {
    digest: [u8; 32],
    scopes: Vec<Scope>,
    channels: Channels,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
    /// No keys configured: every request is allowed.
    pub fn is_open(&self) -> bool {
        self.0.is_empty()
    }

    /// Looks `key` up among the configured keys. Every configured key is compared, each in constant time,
    /// so the answer's timing does not tell how much of a key was right.
    pub fn check(&self, key: Option<&str>, scope: Scope) -> Access {
        if self.is_open() {
            return Access::Granted(Caller::default());
        }
        let Some(key) = key else {
            return Access::Unauthenticated;
        };
        let presented = digest(key);
        let mut found: Option<&Key> = None;
        for entry in &self.0 {
            let differs = entry
                .digest
                .iter()
                .zip(presented.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if differs == 0 {
                found = Some(entry);
            }
        }
        match found {
            None => Access::Unauthenticated,
            Some(key) if key.scopes.contains(&scope) => {
                let id: String = key.digest[..8].iter().map(|b| format!("{b:02x}")).collect();
                Access::Granted(Caller {
                    id: Some(id),
                    channels: key.channels.clone(),
                    ..Caller::default()
                })
            }
            Some(_) => Access::Forbidden,
        }
    }

    fn parse_list(s: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (i, item) in s
            .split([',', '\n'])
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .enumerate()
        {
            // The error never repeats the key itself: settings errors are logged.
            let (key, rest) = item
                .split_once(':')
                .ok_or_else(|| format!("entry {} is not key:scope+scope", i + 1))?;
            if key.is_empty() {
                return Err(format!("entry {} has an empty key", i + 1));
            }
            if key.contains('.') {
                // A credential with two dots is taken for a signed token.
                return Err(format!("entry {}: a key may not contain `.`", i + 1));
            }
            let (scopes, patterns) = match rest.split_once(':') {
                Some((scopes, patterns)) => (scopes, Some(patterns)),
                None => (rest, None),
            };
            let scopes = scopes
                .split('+')
                .map(str::parse)
                .collect::<Result<Vec<Scope>, _>>()
                .map_err(|e| format!("entry {}: {e}", i + 1))?;
            let channels = match patterns {
                None => Channels::All,
                Some(list) => Channels::Only(
                    list.split('|')
                        .map(str::parse::<ChannelPattern>)
                        .collect::<Result<_, _>>()
                        .map_err(|e| format!("entry {}: a channel pattern: {e}", i + 1))?,
                ),
            };
            keys.push(Key {
                digest: digest(key),
                scopes,
                channels,
            });
        }
        Ok(Self(keys))
    }
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeys({} keys)", self.0.len())
    }
}

impl FromStr for ApiKeys {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().strip_prefix('@') {
            Some(path) => {
                let list = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read the key file {path}: {e}"))?;
                Self::parse_list(&list).map_err(|e| format!("in {path}: {e}"))
            }
            None => Self::parse_list(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn api_keys_grant_by_scope_and_never_print_a_key() {
        let keys: ApiKeys = "k1:publish+read, k2:subscribe".parse().unwrap();
        assert!(matches!(
            keys.check(Some("k1"), Scope::Read),
            Access::Granted(Caller { id: Some(_), .. })
        ));
        assert_eq!(keys.check(Some("k2"), Scope::Publish), Access::Forbidden);
        assert_eq!(
            keys.check(Some("nope"), Scope::Read),
            Access::Unauthenticated
        );
        assert_eq!(keys.check(Some("k"), Scope::Read), Access::Unauthenticated);
        assert_eq!(keys.check(None, Scope::Read), Access::Unauthenticated);
        assert!(!format!("{keys:?}").contains("k1"));
        assert_eq!(
            ApiKeys::default().check(None, Scope::Publish),
            Access::Granted(Caller::default())
        );
    }

    #[test]
    fn a_key_with_patterns_covers_only_what_they_match() {
        let keys: ApiKeys = "k:read+subscribe:chat.*|user:42, all:read".parse().unwrap();
        let Access::Granted(k) = keys.check(Some("k"), Scope::Read) else {
            panic!("k may read")
        };
        let p = |s: &str| s.parse::<ChannelPattern>().unwrap();
        assert!(k.channels.cover(&p("chat.room1")) && k.channels.cover(&p("chat.a.*")));
        assert!(k.channels.cover(&p("user:42")) && !k.channels.cover(&p("user:43")));
        assert!(!k.channels.cover(&p("*")) && !k.channels.cover(&p("chat*")));
        assert!(k.channels.cover_channel("chat.x") && !k.channels.cover_channel("news"));
        let Access::Granted(all) = keys.check(Some("all"), Scope::Read) else {
            panic!("all may read")
        };
        assert!(
            all.channels.cover(&p("*")),
            "a key without patterns covers every channel"
        );
        for bad in ["k:read:bad pattern", "k:read:a*b", "k.x:read", "k:read:"] {
            let e = bad.parse::<ApiKeys>().unwrap_err();
            assert!(
                !e.contains("k.x") && !e.contains("k:"),
                "never repeats the key: {e}"
            );
        }
    }

    #[test]
    fn two_keys_are_two_callers() {
        let keys: ApiKeys = "a:publish,b:publish".parse().unwrap();
        let (Access::Granted(a), Access::Granted(b)) = (
            keys.check(Some("a"), Scope::Publish),
            keys.check(Some("b"), Scope::Publish),
        ) else {
            panic!("both keys are valid");
        };
        assert_ne!(a, b);
    }

    #[test]
    fn api_keys_can_come_from_a_file() {
        let path = std::env::temp_dir().join(format!("relay-keys-{}", std::process::id()));
        std::fs::write(&path, "filekey:read\nother:publish\n").unwrap();
        let keys: ApiKeys = format!("@{}", path.display()).parse().unwrap();
        std::fs::remove_file(&path).ok();
        assert!(matches!(
            keys.check(Some("filekey"), Scope::Read),
            Access::Granted(_)
        ));
        assert!(matches!(
            keys.check(Some("other"), Scope::Publish),
            Access::Granted(_)
        ));
        let missing = "@/nonexistent/relay-keys".parse::<ApiKeys>().unwrap_err();
        assert!(missing.contains("/nonexistent/relay-keys"), "{missing}");
    }
}
