//! Redis Stream entry IDs (`<milliseconds>-<sequence>`), the one total order of the pipeline.
//!
//! They compare numerically, part by part: `"5-10"` comes after `"5-9"`, which a string comparison gets
//! wrong. Both parts are kept below `i64::MAX` so they fit Postgres `bigint` columns.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{0}` is not a stream id: expected <milliseconds>-<sequence>, e.g. 1732478400123-0")]
pub struct StreamIdError(pub String);

impl StreamId {
    pub const fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }

    /// The parts as the signed integers that Postgres stores. Parsing guarantees they fit.
    pub fn as_i64_pair(self) -> (i64, i64) {
        (self.ms as i64, self.seq as i64)
    }

    pub fn from_i64_pair(ms: i64, seq: i64) -> Self {
        Self {
            ms: ms.max(0) as u64,
            seq: seq.max(0) as u64,
        }
    }
}

impl FromStr for StreamId {
    type Err = StreamIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || StreamIdError(s.chars().take(64).collect());
        let (ms, seq) = s.split_once('-').ok_or_else(err)?;
        let part = |p: &str| -> Result<u64, StreamIdError> {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            p.parse::<u64>()
                .ok()
                .filter(|v| *v <= i64::MAX as u64)
                .ok_or_else(err)
        };
        Ok(Self {
            ms: part(ms)?,
            seq: part(seq)?,
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_compare_numerically_not_as_strings() {
        let nine: StreamId = "5-9".parse().unwrap();
        let ten: StreamId = "5-10".parse().unwrap();
        assert!(ten > nine);
        assert!("10-0".parse::<StreamId>().unwrap() > "9-99".parse().unwrap());
    }

    #[test]
    fn malformed_stream_ids_are_rejected() {
        for bad in [
            "",
            "5",
            "-1",
            "5-",
            "a-1",
            "1-b",
            "1-2-3",
            "+1-2",
            "1 -2",
            "99999999999999999999-0",
        ] {
            assert!(bad.parse::<StreamId>().is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn stream_ids_round_trip_through_text() {
        let id: StreamId = "1732478400123-7".parse().unwrap();
        assert_eq!(id.to_string(), "1732478400123-7");
        let (ms, seq) = id.as_i64_pair();
        assert_eq!(StreamId::from_i64_pair(ms, seq), id);
    }
}
