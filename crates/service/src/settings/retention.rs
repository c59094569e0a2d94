//! `HISTORY_RETENTION`: how long Postgres keeps a message, written `90s`, `30m`, `12h` or `30d`; `0`
//! (the default) keeps every message.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// `None`: keep every message.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryRetention(pub Option<Duration>);

impl FromStr for HistoryRetention {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() || s == "0" {
            return Ok(Self(None));
        }
        let bad =
            || format!("`{s}` is not a duration like 90s, 30m, 12h or 30d (0: keep everything)");
        let unit = s.chars().last().ok_or_else(bad)?;
        let secs_per = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = s[..s.len() - 1].parse().map_err(|_| bad())?;
        if n == 0 {
            return Err(bad());
        }
        let secs = n.checked_mul(secs_per).ok_or_else(bad)?;
        Ok(Self(Some(Duration::from_secs(secs))))
    }
}

impl fmt::Debug for HistoryRetention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("0"),
            Some(d) => write!(f, "{}s", d.as_secs()),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn durations_read_as_the_contract_writes_them() {
        let secs = |s: &str| {
            s.parse::<HistoryRetention>()
                .unwrap()
                .0
                .map(|d| d.as_secs())
        };
        assert_eq!(secs("90s"), Some(90));
        assert_eq!(secs("30m"), Some(1800));
        assert_eq!(secs("12h"), Some(43_200));
        assert_eq!(secs("30d"), Some(2_592_000));
        assert_eq!(secs("0"), None);
        assert_eq!(secs(""), None);
        for bad in [
            "10",
            "1w",
            "-5s",
            "0s",
            "1.5h",
            "s",
            "h1",
            "99999999999999999999d",
        ] {
            assert!(bad.parse::<HistoryRetention>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn any_text_parses_or_is_refused_and_written_durations_round_trip(
            text in "\\PC{0,24}",
            n in 1u64..1_000_000,
            unit in prop_oneof![Just(('s', 1u64)), Just(('m', 60)), Just(('h', 3600)), Just(('d', 86_400))],
        ) {
            let _ = text.parse::<HistoryRetention>();
            let got = format!("{n}{}", unit.0).parse::<HistoryRetention>().unwrap();
            prop_assert_eq!(got.0, Some(Duration::from_secs(n * unit.1)));
        }
    }
}
