//! Test support that the unit tests of more than one crate share (feature `testing`, on for `model`'s own
//! tests): how many cases a property test runs.

/// 1,000 cases (about a second) unless `PROPTEST_CASES` asks for more (`PROPTEST_CASES=100000` for a
/// longer hunt).
pub fn proptest_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
}
