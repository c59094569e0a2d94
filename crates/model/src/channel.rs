//! Channels: every message is published to one channel, and readers and subscribers name the channels
//! they want by patterns. Both are parsed once, here, into types that cannot hold an invalid value.
//!
//! - A channel name is 1–128 characters from `A–Z a–z 0–9 _ - . :`.
//! - A pattern is a channel name (that channel only), or a prefix of up to 127 such characters followed
//!   by `*`, matching every channel that starts with the prefix (`chat.*` matches `chat.room1` and
//!   `chat.a.b`; `*` alone matches every channel).

use std::fmt;
use std::str::FromStr;

/// The channel `POST /messages` publishes to, and that messages from before channels belong to.
pub const DEFAULT_CHANNEL: &str = "default";
/// The longest channel name.
pub const MAX_CHANNEL_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("a channel name is 1 to 128 characters, `{0}` has none")]
    Empty(String),
    #[error("a channel name is at most 128 characters")]
    TooLong,
    #[error("`{0}` is not allowed in a channel name (A-Z a-z 0-9 _ - . : only)")]
    BadCharacter(char),
    #[error("`*` may only end a pattern (`chat.*`)")]
    MisplacedStar,
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')
}

fn check(text: &str, max: usize) -> Result<(), ChannelError> {
    if text.len() > max {
        return Err(ChannelError::TooLong);
    }
    match text.chars().find(|&c| !allowed(c)) {
        Some('*') => Err(ChannelError::MisplacedStar),
        Some(c) => Err(ChannelError::BadCharacter(c)),
        None => Ok(()),
    }
}

/// A valid channel name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChannelName(String);

impl ChannelName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The channel `default`.
    pub fn default_channel() -> Self {
        Self(DEFAULT_CHANNEL.to_owned())
    }

    /// Takes the name without checking it: for names read back from the store or the stream, which
    /// were checked when they were written.
    pub fn trusted(name: String) -> Self {
        Self(name)
    }
}

impl Default for ChannelName {
    fn default() -> Self {
        Self::default_channel()
    }
}

impl FromStr for ChannelName {
    type Err = ChannelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(ChannelError::Empty(s.to_owned()));
        }
        check(s, MAX_CHANNEL_LEN)?;
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A valid pattern: one channel, or every channel starting with a prefix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChannelPattern {
    Exact(ChannelName),
    /// The prefix, without its `*` (empty for `*`).
    Prefix(String),
}

impl ChannelPattern {
    /// `*`: every channel.
    pub fn all() -> Self {
        Self::Prefix(String::new())
    }

    pub fn matches(&self, channel: &str) -> bool {
        match self {
            Self::Exact(name) => name.as_str() == channel,
            // `*` first: a replay asks this of every message, and `starts_with("")` is still a memcmp
            // call (perf: 9% of a 1M-message resume's gateway samples).
            Self::Prefix(prefix) => prefix.is_empty() || channel.starts_with(prefix.as_str()),
        }
    }

    /// Whether some channel matches both patterns (a socket may not hold two such subscriptions: a
    /// message would be sent to it twice).
    pub fn overlaps(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b)) => a == b,
            (Self::Exact(name), Self::Prefix(prefix))
            | (Self::Prefix(prefix), Self::Exact(name)) => {
                name.as_str().starts_with(prefix.as_str())
            }
            (Self::Prefix(a), Self::Prefix(b)) => {
                a.starts_with(b.as_str()) || b.starts_with(a.as_str())
            }
        }
    }

    /// Whether every channel `other` matches, this pattern matches too (a credential's pattern covers
    /// what a request asks for).
    pub fn covers(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b)) => a == b,
            (Self::Exact(_), Self::Prefix(_)) => false,
            (Self::Prefix(prefix), Self::Exact(name)) => name.as_str().starts_with(prefix.as_str()),
            (Self::Prefix(a), Self::Prefix(b)) => b.starts_with(a.as_str()),
        }
    }

    /// The prefix every matching channel starts with (the whole name for an exact pattern): a store
    /// query narrows by it.
    pub fn prefix(&self) -> &str {
        match self {
            Self::Exact(name) => name.as_str(),
            Self::Prefix(prefix) => prefix,
        }
    }
}

impl FromStr for ChannelPattern {
    type Err = ChannelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_suffix('*') {
            Some(prefix) => {
                check(prefix, MAX_CHANNEL_LEN - 1)?;
                Ok(Self::Prefix(prefix.to_owned()))
            }
            None => s.parse().map(Self::Exact),
        }
    }
}

impl fmt::Display for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name.as_str()),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ChannelPattern {
        s.parse().unwrap()
    }

    #[test]
    fn names_and_patterns_parse_as_the_contract_says() {
        for good in ["default", "chat.room1", "a", "A-Z_0.9:x", &"x".repeat(128)] {
            assert_eq!(good.parse::<ChannelName>().unwrap().as_str(), good);
        }
        for bad in ["", "a b", "chat/1", "é", "a*", "*", &"x".repeat(129)] {
            assert!(bad.parse::<ChannelName>().is_err(), "{bad:?}");
        }
        assert_eq!(p("*"), ChannelPattern::all());
        assert_eq!(p("chat.*"), ChannelPattern::Prefix("chat.".into()));
        assert!(p("chat.*").matches("chat.room1") && p("chat.*").matches("chat.a.b"));
        assert!(!p("chat.*").matches("chat") && !p("chat.*").matches("news"));
        for bad in [
            "",
            "**",
            "a*b",
            "*a",
            "chat.* ",
            &format!("{}*", "x".repeat(128)),
        ] {
            assert!(bad.parse::<ChannelPattern>().is_err(), "{bad:?}");
        }
        assert!(format!("{}*", "x".repeat(127))
            .parse::<ChannelPattern>()
            .is_ok());
    }

    #[test]
    fn overlap_and_cover_are_decided_by_prefixes() {
        assert!(p("*").overlaps(&p("chat.1")) && p("*").covers(&p("chat.*")));
        assert!(p("chat.*").overlaps(&p("chat.a.*")) && !p("chat.*").overlaps(&p("news.*")));
        assert!(p("chat.*").covers(&p("chat.a.*")) && !p("chat.a.*").covers(&p("chat.*")));
        assert!(!p("chat.1").covers(&p("chat.*")) && p("chat.1").covers(&p("chat.1")));
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::super::*;

        fn name() -> impl Strategy<Value = String> {
            // A small alphabet, so that generated names and prefixes share prefixes often.
            "[ab.]{1,6}"
        }

        fn pattern() -> impl Strategy<Value = ChannelPattern> {
            prop_oneof![
                name().prop_map(|n| n.parse().unwrap()),
                "[ab.]{0,4}".prop_map(|p| format!("{p}*").parse().unwrap()),
            ]
        }

        proptest! {
            /// Display and parse round-trip, and whatever the text, parsing never panics.
            #[test]
            fn patterns_round_trip_and_any_text_parses_or_is_refused(text in "\\PC{0,140}", pat in pattern()) {
                let _ = text.parse::<ChannelPattern>();
                let _ = text.parse::<ChannelName>();
                prop_assert_eq!(pat.to_string().parse::<ChannelPattern>().unwrap(), pat);
            }

            /// `overlaps` and `covers` agree with `matches` on every channel.
            #[test]
            fn overlap_and_cover_agree_with_matching(a in pattern(), b in pattern(), channels in proptest::collection::vec(name(), 1..30)) {
                prop_assert_eq!(a.overlaps(&b), b.overlaps(&a));
                for c in &channels {
                    if a.matches(c) && b.matches(c) {
                        prop_assert!(a.overlaps(&b), "{a} and {b} both match {c}");
                    }
                    if a.covers(&b) && b.matches(c) {
                        prop_assert!(a.matches(c), "{a} covers {b}, which matches {c}");
                    }
                }
                // A channel built to match both exists whenever they overlap.
                if a.overlaps(&b) {
                    let witness = [a.prefix(), b.prefix()].into_iter().max_by_key(|p| p.len()).unwrap();
                    let witness = if witness.is_empty() { "a".to_owned() } else { witness.to_owned() };
                    prop_assert!(a.matches(&witness) && b.matches(&witness), "{a} {b} {witness}");
                }
            }
        }
    }
}
