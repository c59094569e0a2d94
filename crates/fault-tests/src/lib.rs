//! Relay's fault tests live in `tests/faults/`: the real service binaries (`testkit::procs`), killed,
//! stopped and restarted, against Redis and Postgres instances of their own. This library is empty; the
//! package exists for its tests.
