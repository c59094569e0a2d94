//! Which sockets want a message: each socket's channel patterns ([`Filter`]), and the hub's index of
//! them ([`Index`]), so that routing a message costs in proportion to the sockets that want it, not to
//! every socket: sockets on `*` take every frame without a lookup, exact channels are one map lookup,
//! and prefix patterns one lookup per distinct prefix length in use.

use std::collections::{BTreeMap, HashMap, HashSet};

use model::ChannelPattern;

/// A socket's subscriptions. No two overlap (a message reaches a socket at most once), so a
/// socket on `*` has no other.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Filter(Vec<ChannelPattern>);

/// One socket's subscriptions as its session sees them: the patterns, and for each subscribed by a
/// `subscribe` frame the position its replay went up to — live frames of that pattern at or before it
/// were already sent by the replay.
#[derive(Debug, Clone)]
pub struct Subs {
    pub filter: std::sync::Arc<Filter>,
    floors: std::collections::HashMap<ChannelPattern, model::StreamId>,
    /// The pattern a `gap` frame names (a `subscribe` frame's replay), if any.
    pub label: Option<ChannelPattern>,
}

impl Subs {
    pub fn new(filter: std::sync::Arc<Filter>) -> Self {
        Self {
            filter,
            floors: std::collections::HashMap::new(),
            label: None,
        }
    }

    /// One pattern alone, for the replay of its `subscribe` frame.
    pub fn only(pattern: ChannelPattern) -> Self {
        let mut subs = Self::new(std::sync::Arc::new(Filter(vec![pattern.clone()])));
        subs.label = Some(pattern);
        subs
    }

    /// Whether a frame of `channel` at `stream_id` is one to send: a subscribed pattern matches it, and
    /// that pattern's replay did not send it already.
    pub fn accepts(&self, channel: &str, stream_id: model::StreamId) -> bool {
        self.filter
            .patterns()
            .iter()
            .find(|p| p.matches(channel))
            .is_some_and(|p| self.floors.get(p).is_none_or(|floor| stream_id > *floor))
    }

    /// The filter with `pattern` added (for the hub, before [`Subs::add`]).
    pub fn with(&self, pattern: &ChannelPattern) -> std::sync::Arc<Filter> {
        let mut patterns = self.filter.patterns().to_vec();
        patterns.push(pattern.clone());
        std::sync::Arc::new(Filter(patterns))
    }

    /// `pattern` added, its replay done up to `floor`.
    pub fn add(&mut self, pattern: ChannelPattern, floor: model::StreamId) {
        self.filter = self.with(&pattern);
        self.floors.insert(pattern, floor);
    }

    /// `pattern` removed; `false` when it was not subscribed.
    pub fn remove(&mut self, pattern: &ChannelPattern) -> bool {
        let patterns: Vec<_> = self
            .filter
            .patterns()
            .iter()
            .filter(|p| *p != pattern)
            .cloned()
            .collect();
        if patterns.len() == self.filter.patterns().len() {
            return false;
        }
        self.filter = std::sync::Arc::new(Filter(patterns));
        self.floors.remove(pattern);
        true
    }
}

/// Why a set of patterns cannot be one socket's subscriptions.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The two overlap: some channel matches both.
    Overlap(ChannelPattern, ChannelPattern),
    /// More than `MAX_SUBSCRIPTIONS`.
    TooMany(usize),
}

impl Filter {
    /// Every channel: `*`.
    pub fn all() -> Self {
        Self(vec![ChannelPattern::all()])
    }

    /// `patterns` as one socket's subscriptions, at most `max` of them and none overlapping another.
    pub fn new(patterns: Vec<ChannelPattern>, max: usize) -> Result<Self, Refusal> {
        if patterns.len() > max {
            return Err(Refusal::TooMany(max));
        }
        for (i, a) in patterns.iter().enumerate() {
            if let Some(b) = patterns[..i].iter().find(|b| a.overlaps(b)) {
                return Err(Refusal::Overlap(b.clone(), a.clone()));
            }
        }
        Ok(Self(patterns))
    }

    pub fn matches(&self, channel: &str) -> bool {
        self.0.iter().any(|p| p.matches(channel))
    }

    /// Why `pattern` cannot join these subscriptions (at most `max`), if it cannot.
    pub fn refuses(&self, pattern: &ChannelPattern, max: usize) -> Option<Refusal> {
        if let Some(other) = self.0.iter().find(|p| p.overlaps(pattern)) {
            return Some(Refusal::Overlap(other.clone(), pattern.clone()));
        }
        (self.0.len() >= max).then_some(Refusal::TooMany(max))
    }

    pub fn patterns(&self) -> &[ChannelPattern] {
        &self.0
    }

    fn is_all(&self) -> bool {
        matches!(self.0.as_slice(), [ChannelPattern::Prefix(p)] if p.is_empty())
    }
}

/// The sockets of a hub by what they subscribed to.
#[derive(Debug, Default)]
pub struct Index {
    /// Sockets on `*`.
    all: HashSet<u64>,
    exact: HashMap<String, HashSet<u64>>,
    /// Sockets by non-empty prefix, and how many prefixes of each length are in use.
    prefixes: HashMap<String, HashSet<u64>>,
    prefix_lens: BTreeMap<usize, usize>,
}

impl Index {
    pub fn add(&mut self, id: u64, filter: &Filter) {
        if filter.is_all() {
            self.all.insert(id);
            return;
        }
        for pattern in filter.patterns() {
            match pattern {
                ChannelPattern::Exact(name) => {
                    self.exact.entry(name.to_string()).or_default().insert(id);
                }
                ChannelPattern::Prefix(prefix) => {
                    let ids = self.prefixes.entry(prefix.clone()).or_default();
                    if ids.is_empty() {
                        *self.prefix_lens.entry(prefix.len()).or_default() += 1;
                    }
                    ids.insert(id);
                }
            }
        }
    }

    pub fn remove(&mut self, id: u64, filter: &Filter) {
        if filter.is_all() {
            self.all.remove(&id);
            return;
        }
        for pattern in filter.patterns() {
            match pattern {
                ChannelPattern::Exact(name) => {
                    if let Some(ids) = self.exact.get_mut(name.as_str()) {
                        ids.remove(&id);
                        if ids.is_empty() {
                            self.exact.remove(name.as_str());
                        }
                    }
                }
                ChannelPattern::Prefix(prefix) => {
                    let Some(ids) = self.prefixes.get_mut(prefix) else {
                        continue;
                    };
                    ids.remove(&id);
                    if ids.is_empty() {
                        self.prefixes.remove(prefix);
                        if let Some(n) = self.prefix_lens.get_mut(&prefix.len()) {
                            *n -= 1;
                            if *n == 0 {
                                self.prefix_lens.remove(&prefix.len());
                            }
                        }
                    }
                }
            }
        }
    }

    /// The sockets on `*`.
    pub fn everything(&self) -> &HashSet<u64> {
        &self.all
    }

    /// Whether every socket is on `*` (the firehose: no message needs routing).
    pub fn only_everything(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    /// Calls `each` for every socket not on `*` that wants a message of `channel` (once per socket:
    /// a socket's patterns do not overlap).
    pub fn for_each_wanting(&self, channel: &str, mut each: impl FnMut(u64)) {
        if let Some(ids) = self.exact.get(channel) {
            ids.iter().copied().for_each(&mut each);
        }
        for &len in self.prefix_lens.keys() {
            if len > channel.len() {
                break;
            }
            let Some(prefix) = channel.get(..len) else {
                continue;
            };
            if let Some(ids) = self.prefixes.get(prefix) {
                ids.iter().copied().for_each(&mut each);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(patterns: &[&str]) -> Filter {
        Filter::new(patterns.iter().map(|p| p.parse().unwrap()).collect(), 100).unwrap()
    }

    fn wanting(index: &Index, channel: &str) -> Vec<u64> {
        let mut ids = Vec::new();
        index.for_each_wanting(channel, |id| ids.push(id));
        ids.extend(index.everything());
        ids.sort_unstable();
        ids
    }

    #[test]
    fn each_message_reaches_exactly_the_sockets_whose_patterns_match_it() {
        let mut index = Index::default();
        index.add(1, &Filter::all());
        index.add(2, &filter(&["chat.*"]));
        index.add(3, &filter(&["chat.room1", "news"]));
        index.add(4, &filter(&["c*", "n.*"]));
        assert_eq!(wanting(&index, "chat.room1"), [1, 2, 3, 4]);
        assert_eq!(wanting(&index, "chat.room2"), [1, 2, 4]);
        assert_eq!(wanting(&index, "news"), [1, 3]);
        assert_eq!(wanting(&index, "other"), [1]);
        index.remove(2, &filter(&["chat.*"]));
        index.remove(4, &filter(&["c*", "n.*"]));
        assert_eq!(wanting(&index, "chat.room2"), [1]);
        assert!(index.prefix_lens.is_empty() && index.prefixes.is_empty());
        index.remove(3, &filter(&["chat.room1", "news"]));
        assert!(index.only_everything());
    }

    #[test]
    fn overlapping_or_too_many_patterns_are_refused() {
        let p = |s: &str| s.parse::<ChannelPattern>().unwrap();
        assert_eq!(
            Filter::new(vec![p("chat.*"), p("chat.room1")], 100),
            Err(Refusal::Overlap(p("chat.*"), p("chat.room1")))
        );
        assert!(Filter::new(vec![p("*"), p("x")], 100).is_err());
        assert_eq!(
            Filter::new(vec![p("a"), p("b"), p("c")], 2),
            Err(Refusal::TooMany(2))
        );
        assert!(Filter::new(vec![p("a.*"), p("b.*"), p("a")], 100).is_ok());
    }
}
