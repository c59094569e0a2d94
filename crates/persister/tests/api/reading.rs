//! Reads and claims bounded in bytes: a reply of `PERSISTER_BATCH_SIZE` entries of the largest allowed
//! size would be far too large to arrive within `REDIS_TIMEOUT_MS`, after Redis had already made the
//! entries pending on the reader.

use persister::claim;
use persister::group::{self, Cursor, ReplyBudget};
use redis::aio::ConnectionManager;

use testkit::{entry, pending, setup, spawn_persister, wait_for_rows, xadd};

/// Entries of about 512 KiB.
const LARGE: usize = 512 << 10;
/// The test's `PERSISTER_READ_BYTES`: eight such entries.
const BUDGET: usize = 4 << 20;

fn large_entries(from: usize, n: usize) -> Vec<model::StreamEntry> {
    let pad = "x".repeat(LARGE - 100);
    (from..from + n)
        .map(|i| entry(&format!(r#"{{"i":{i},"pad":"{pad}"}}"#)))
        .collect()
}

#[tokio::test]
async fn reads_and_claims_of_large_entries_stay_within_the_byte_budget_and_store_every_entry() {
    let (mut settings, _cleanup) = setup();
    settings.persister_read_bytes = BUDGET;
    settings.max_body_bytes = LARGE;
    settings.claim_idle_ms = 200;
    let key = settings.stream_key.clone();
    // 60 entries (30 MiB) read by a consumer that then died: pending on it, for a claim.
    for chunk in 0..3 {
        xadd(&settings, &large_entries(chunk * 20, 20));
    }
    let client = redis::Client::open(settings.redis_url.as_str()).unwrap();
    let mut conn: ConnectionManager = client.get_connection_manager().await.unwrap();
    group::ensure_group(&mut conn, &key).await.unwrap();
    let unbounded = ReplyBudget {
        bytes: usize::MAX >> 12,
        entry_bytes: 1,
    };
    let dead = group::read(&mut conn, &key, "dead", &Cursor::New, 60, 100, unbounded)
        .await
        .unwrap();
    assert_eq!(dead.len(), 60);
    // 140 more (70 MiB) never delivered: one XREADGROUP of PERSISTER_BATCH_SIZE (2000) would take them all.
    for chunk in 3..10 {
        xadd(&settings, &large_entries(chunk * 20, 20));
    }

    let persister = spawn_persister(settings.clone()).await;
    assert_eq!(wait_for_rows(&settings, 200).await, 200);
    let scrape = testkit::metrics::scrape(&persister.url()).await;
    let claimed = scrape.value("relay_persister_claimed_total", &[]);
    let largest = scrape.value("relay_persister_largest_read_bytes", &[]);
    persister.stop().await;
    assert_eq!(claimed, 60.0, "the dead consumer's entries were claimed");
    assert!(
        largest >= LARGE as f64 && largest <= BUDGET as f64,
        "the largest read or claim brought back {largest} bytes (budget {BUDGET})"
    );
    assert_eq!(pending(&settings), 0);
}

#[tokio::test]
async fn an_entry_larger_than_the_budget_is_read_alone() {
    let (mut settings, _cleanup) = setup();
    settings.persister_read_bytes = LARGE / 2;
    settings.max_body_bytes = LARGE;
    xadd(&settings, &large_entries(0, 3));
    let client = redis::Client::open(settings.redis_url.as_str()).unwrap();
    let mut conn: ConnectionManager = client.get_connection_manager().await.unwrap();
    let key = &settings.stream_key;
    group::ensure_group(&mut conn, key).await.unwrap();
    let budget = ReplyBudget::from_settings(&settings);
    for cursor in [Cursor::New, Cursor::Pending("0-0".into())] {
        let read = group::read(&mut conn, key, "c", &cursor, 10, 100, budget)
            .await
            .unwrap();
        assert_eq!(read.len(), 1, "{cursor:?}");
    }
    let (claimed, _) = claim::autoclaim(&mut conn, key, "d", 0, "0-0", 10, budget)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
}

#[tokio::test]
async fn a_read_that_times_out_after_redis_delivered_its_entry_loses_nothing() {
    // A Redis of the test's own: it is frozen on purpose, which must not stall other tests.
    let redis_server = testkit::procs::OwnRedis::start();
    let (mut settings, _cleanup) = setup();
    settings.redis_url = redis_server.url();
    settings.redis_timeout_ms = 300;
    // No claims: only the reader itself can pick up what its lost read delivered.
    settings.claim_idle_ms = 3_600_000;
    let persister = spawn_persister(settings.clone()).await;
    xadd(&settings, &[entry("1")]);
    assert_eq!(wait_for_rows(&settings, 1).await, 1);

    // One script appends an entry, then holds Redis for 1.5 s. The persister's read in flight is
    // answered only after that, long after its REDIS_TIMEOUT_MS: the reader has given up on the reply,
    // yet Redis has delivered the entry to this consumer's pending list.
    let xadd = model::redis_stream::xadd_cmd(&settings.stream_key, &entry("2"));
    let mut script = redis::cmd("EVAL");
    script.arg(
        "local id = redis.call(unpack(ARGV)) \
         local t = redis.call('TIME') \
         repeat local n = redis.call('TIME') \
         until (n[1] - t[1]) * 1000000 + (n[2] - t[2]) > 1500000 \
         return id",
    );
    script.arg(0);
    for arg in xadd.args_iter() {
        if let redis::Arg::Simple(bytes) = arg {
            script.arg(bytes);
        }
    }
    // Off the runtime: the persister's timers must run while Redis is held.
    let redis = testkit::redis(&settings);
    tokio::task::spawn_blocking(move || {
        let mut redis = redis;
        let _: String = script.query(&mut redis).unwrap();
    })
    .await
    .unwrap();

    assert_eq!(
        wait_for_rows(&settings, 2).await,
        2,
        "the entry of the lost reply was stored"
    );
    persister.stop().await;
    assert_eq!(pending(&settings), 0);
    drop(redis_server);
}

/// A Redis user of one test, and what the test wrote as that user to another database: removed when
/// dropped, also when the test panics.
struct TestUser {
    admin: model::redis_stream::redis::Connection,
    name: String,
    settings: service::Settings,
}

impl Drop for TestUser {
    fn drop(&mut self) {
        testkit::cleanup(&self.settings);
        let _: redis::RedisResult<()> = redis::cmd("ACL")
            .arg(&["DELUSER", &self.name])
            .query(&mut self.admin);
    }
}

/// New entries are read over a raw connection (`service::redis::raw`), which does its own handshake: it
/// must log in as `REDIS_URL`'s user and read from its database, as redis-rs' connections do.
#[tokio::test]
async fn new_entries_are_read_as_the_url_s_user_from_its_database() {
    let (mut settings, _cleanup) = setup();
    let name = format!("relay-{}", settings.consumer_name);
    let mut admin = testkit::redis(&settings);
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER", &name, "reset", "on", ">s3cret", "~*", "&*", "+@all",
        ])
        .query(&mut admin)
        .unwrap();
    let mut url = url::Url::parse(&settings.redis_url).unwrap();
    url.set_username(&name).unwrap();
    url.set_password(Some("s3cret")).unwrap();
    url.set_path("/5");
    settings.redis_url = url.into();
    let user = TestUser {
        admin: testkit::redis(&settings),
        name,
        settings: settings.clone(),
    };
    let persister = spawn_persister(settings.clone()).await;
    let entries: Vec<_> = (0..500).map(|i| entry(&i.to_string())).collect();
    xadd(&settings, &entries);
    assert_eq!(wait_for_rows(&settings, 500).await, 500);
    // Redis' own view of the persister's connections: the raw ones, named, read new entries logged in
    // as the user, on database 5.
    let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut admin).unwrap();
    persister.stop().await;
    let raw_reader = clients.lines().find(|c| {
        let has = |field: &str| c.split(' ').any(|f| f == field);
        let name = format!("name={}", persister::reading::RAW_READS_NAME);
        has(&format!("user={}", user.name)) && has("db=5") && has(&name) && has("cmd=xreadgroup")
    });
    assert!(
        raw_reader.is_some(),
        "no raw XREADGROUP connection as {} on db 5:\n{clients}",
        user.name
    );
    assert_eq!(pending(&settings), 0);
}
