//! Every setting Relay reads: its name, default, meaning and which binaries use it. The loader takes its
//! defaults from here, `--help` prints this table, and a test checks the README's table against it, so the
//! three cannot drift apart.

/// Which binaries read a setting (a bit set of [`INGEST`], [`PERSISTER`], [`GATEWAY`]).
pub type UsedBy = u8;
pub const INGEST: UsedBy = 1;
pub const PERSISTER: UsedBy = 2;
pub const GATEWAY: UsedBy = 4;
pub const ALL: UsedBy = INGEST | PERSISTER | GATEWAY;

/// How a value is shown in logs and errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secret {
    /// Shown as it is.
    No,
    /// A URL whose password is masked.
    UrlPassword,
    /// Never shown (only whether it is set).
    Whole,
}

#[derive(Debug)]
pub struct Def {
    /// The environment variable (a settings file may use it in lower case too).
    pub name: &'static str,
    /// The default as text; empty means "derived" or "off", as `meaning` says.
    pub default: &'static str,
    pub meaning: &'static str,
    pub used_by: UsedBy,
    pub secret: Secret,
}

const fn def(
    name: &'static str,
    default: &'static str,
    used_by: UsedBy,
    meaning: &'static str,
) -> Def {
    Def {
        name,
        default,
        meaning,
        used_by,
        secret: Secret::No,
    }
}

const fn secret(mut d: Def, how: Secret) -> Def {
    d.secret = how;
    d
}

/// The settings, in the order `--help` and the README list them.
pub const DEFS: &[Def] = &[
    secret(
        def(
            "REDIS_URL",
            "redis://127.0.0.1:6379",
            ALL,
            "The Redis server holding the stream; redis+cluster://host:port,host:port,… names a Redis Cluster by some of its nodes (STREAM_KEY then needs a hash tag, e.g. {messages}).",
        ),
        Secret::UrlPassword,
    ),
    secret(
        def(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/relay",
            ALL,
            "The Postgres database of persisted messages (created by the persister when missing; push-gateway reads it to replay what the stream no longer holds).",
        ),
        Secret::UrlPassword,
    ),
    def("STREAM_KEY", "messages", ALL, "The Redis Stream of accepted messages."),
    def("INGEST_ADDR", "127.0.0.1:8080", INGEST, "Where ingest-api listens."),
    def("GATEWAY_ADDR", "127.0.0.1:8081", GATEWAY, "Where push-gateway listens."),
    def(
        "PERSISTER_ADDR",
        "127.0.0.1:8082",
        PERSISTER,
        "Where the persister serves health and metrics.",
    ),
    def(
        "INGEST_PUBLIC_URL",
        "",
        GATEWAY,
        "The ingest API as a browser reaches it, where the live page's form posts (empty: http:// + INGEST_ADDR).",
    ),
    def(
        "ALLOWED_ORIGINS",
        "",
        INGEST | GATEWAY,
        "Comma-separated browser origins allowed to call ingest-api (CORS) and open /ws; * is any; empty: loopback origins only (http://localhost:*, http://127.0.0.1:*, http://[::1]:*).",
    ),
    def(
        "ALLOWED_HOSTS",
        "",
        INGEST | GATEWAY,
        "Comma-separated host names a request's Host may name while Relay is open (no API_KEYS or TOKEN_SECRET), besides localhost and loopback addresses; others get 421 (health and metrics excepted), against DNS rebinding.",
    ),
    secret(
        def(
            "API_KEYS",
            "",
            INGEST | GATEWAY,
            "key:scope+scope[:pattern|pattern],… (scopes publish, read, subscribe; without patterns a key covers every channel; keys contain no `:` or `.`), or @path to read that list from a file; empty: no authentication (local use only: each service warns at start).",
        ),
        Secret::Whole,
    ),
    secret(
        def(
            "TOKEN_SECRET",
            "",
            INGEST | GATEWAY,
            "The HS256 secret of signed tokens (JWT with exp, scope, channels, sub), at least 32 bytes, or @path to read it from a file; empty: tokens are not accepted.",
        ),
        Secret::Whole,
    ),
    def(
        "CONSUMER_NAME",
        "",
        PERSISTER,
        "This replica's name in the consumer group, stable across its restarts (empty: the host name).",
    ),
    def(
        "CLAIM_IDLE_MS",
        "15000",
        PERSISTER,
        "An entry pending this long on another consumer is claimed.",
    ),
    def(
        "MAX_DELIVERIES",
        "5",
        PERSISTER,
        "Tries after which an entry that cannot be stored goes to <STREAM_KEY>:dead.",
    ),
    def(
        "STREAM_RETENTION",
        "100000",
        PERSISTER,
        "Stored entries kept in the stream for replay (fewer when they would take more than half of MAX_STREAM_BYTES).",
    ),
    def(
        "HISTORY_RETENTION",
        "0",
        PERSISTER,
        "Messages older than this (90s, 30m, 12h, 30d) are deleted from Postgres, in batches, at least every 10 s; 0: keep every message.",
    ),
    def(
        "PERSISTER_BATCH_SIZE",
        "2000",
        PERSISTER,
        "Entries read, and written in one transaction, at a time.",
    ),
    def(
        "PERSISTER_READ_BYTES",
        "33554432",
        PERSISTER,
        "Bytes of entries one read (or claim) from the stream brings back at most, whatever PERSISTER_BATCH_SIZE says (an entry larger than this comes alone).",
    ),
    def(
        "PERSISTER_BLOCK_MS",
        "1000",
        PERSISTER,
        "How long one XREADGROUP waits for new entries.",
    ),
    def(
        "WS_SEND_QUEUE",
        "1024",
        GATEWAY,
        "Frames queued for one WebSocket client; a client whose queue fills catches up from the gateway's recent frames (16 × this) or the stream.",
    ),
    def(
        "WS_SEND_QUEUE_BYTES",
        "8388608",
        GATEWAY,
        "Bytes of frames queued for one WebSocket client (one frame larger than this still goes to an idle client); the recent frames kept for catching up are bounded by 4 × this.",
    ),
    def(
        "WS_CATCH_UP_MS",
        "5000",
        GATEWAY,
        "How long a WebSocket client whose queue filled may take to catch up before it is closed with 1013 (at most half of CLIENT_TIMEOUT_MS).",
    ),
    def(
        "MAX_CONNECTIONS",
        "10000",
        GATEWAY,
        "WebSocket clients one gateway serves at once; more are refused with 503.",
    ),
    def(
        "MAX_SUBSCRIPTIONS",
        "100",
        GATEWAY,
        "Channel patterns one WebSocket may subscribe to (?channels=); more are refused with 429.",
    ),
    def(
        "MAX_BODY_BYTES",
        "1048576",
        INGEST | PERSISTER,
        "The size limit of one JSON message (and of each NDJSON line); the persister sizes its reads by it.",
    ),
    def(
        "MAX_BATCH_LINES",
        "10000",
        INGEST,
        "The line limit of one NDJSON batch.",
    ),
    def(
        "MAX_BATCH_BYTES",
        "16777216",
        INGEST,
        "The size limit of one NDJSON batch.",
    ),
    def(
        "MAX_BACKLOG",
        "1000000",
        INGEST,
        "Persister lag (entries) above which POST /messages answers 503.",
    ),
    def(
        "MAX_STREAM_BYTES",
        "1073741824",
        INGEST | PERSISTER,
        "The stream's memory in Redis (MEMORY USAGE … SAMPLES 0, exact, read every 250 ms) above which POST /messages answers 503; the persister keeps fewer than STREAM_RETENTION entries when they would take more than half of it.",
    ),
    def(
        "MAX_IDEMPOTENCY_BYTES",
        "67108864",
        INGEST,
        "Bytes of Idempotency-Key records (each kept 24 h) one credential (or, without API_KEYS, everyone) may hold in Redis; a post with a new Idempotency-Key over it answers 429.",
    ),
    def(
        "PUBLISH_RATE",
        "0",
        INGEST,
        "Messages per second one API key (or, without API_KEYS, one client address) may publish, with a burst of one second's worth; over it, 429. 0: unlimited.",
    ),
    def(
        "CLIENT_TIMEOUT_MS",
        "15000",
        INGEST | GATEWAY,
        "A client that makes no progress sending its request (any request head, first or later on a kept-alive connection, or body) or reading what it is sent for this long is disconnected; once it has started, a request must also arrive at 64 KiB/s or more after its first CLIENT_TIMEOUT_MS.",
    ),
    def(
        "MAX_INFLIGHT_BYTES",
        "268435456",
        INGEST,
        "Request body bytes one ingest-api process holds at once; a request that would go over answers 503.",
    ),
    def(
        "MAX_CONNECTIONS_PER_IP",
        "100",
        GATEWAY,
        "WebSocket clients from one address (see TRUSTED_PROXIES); more are refused with 429.",
    ),
    def(
        "MAX_HTTP_CONNECTIONS",
        "0",
        INGEST | GATEWAY,
        "TCP connections (HTTP and WebSocket) one process holds at once; one more is answered 503 and closed. 0: what the open-files limit allows, less 256 for everything else.",
    ),
    def(
        "TRUSTED_PROXIES",
        "",
        INGEST | GATEWAY,
        "Comma-separated proxy addresses or networks (10.0.0.0/8) whose X-Forwarded-For is believed (its first address is the client's); empty: none.",
    ),
    def(
        "REDIS_TIMEOUT_MS",
        "2000",
        ALL,
        "The longest a request waits on Redis before answering 503.",
    ),
    def(
        "REDIS_ACK_REPLICAS",
        "0",
        INGEST,
        "Replicas that must confirm an entry (Redis WAIT) before POST /messages answers 202; fewer within REDIS_ACK_TIMEOUT_MS answer 503. 0: answer once the primary has it.",
    ),
    def(
        "REDIS_ACK_TIMEOUT_MS",
        "1000",
        INGEST,
        "How long POST /messages waits for REDIS_ACK_REPLICAS replicas to confirm an entry.",
    ),
    def(
        "DATABASE_POOL_SIZE",
        "8",
        INGEST,
        "Postgres connections of one ingest-api process.",
    ),
    def(
        "RUST_LOG",
        "info",
        ALL,
        "Log levels (env_logger syntax); the access log is target `access` (e.g. `info,access=warn`).",
    ),
    def(
        "LOG_FORMAT",
        "text",
        ALL,
        "`json`: one JSON object per log line.",
    ),
    def(
        "RELAY_CONFIG",
        "",
        ALL,
        "A TOML file setting any of these keys; the environment wins over it.",
    ),
];

/// The README's settings table, generated from [`DEFS`] (a test keeps the README equal to it).
pub fn markdown_table() -> String {
    let mut out = String::from("| variable | default | used by | meaning |\n|---|---|---|---|\n");
    for d in DEFS {
        let default = if d.default.is_empty() {
            "(empty)".to_owned()
        } else {
            format!("`{}`", d.default)
        };
        let users = if d.used_by == ALL {
            "all".to_owned()
        } else {
            [
                (INGEST, "ingest-api"),
                (PERSISTER, "persister"),
                (GATEWAY, "push-gateway"),
            ]
            .iter()
            .filter(|(bit, _)| d.used_by & bit != 0)
            .map(|(_, name)| *name)
            .collect::<Vec<_>>()
            .join(", ")
        };
        out.push_str(&format!(
            "| `{}` | {default} | {users} | {} |\n",
            d.name,
            d.meaning.replace('|', "\\|")
        ));
    }
    out
}

/// The definition named `name` (upper case).
pub fn find(name: &str) -> Option<&'static Def> {
    DEFS.iter().find(|d| d.name.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    /// The README's table between its markers is exactly [`super::markdown_table`]. After adding or
    /// changing a setting, `UPDATE_README=1 cargo test -p service` rewrites it.
    #[test]
    fn the_readme_lists_every_setting_as_defined() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        let (begin, end) = ("<!-- settings:begin -->\n", "<!-- settings:end -->");
        let start = readme.find(begin).expect("README has the settings markers") + begin.len();
        let stop = readme[start..]
            .find(end)
            .expect("README has the end marker")
            + start;
        let table = super::markdown_table();
        if std::env::var_os("UPDATE_README").is_some() {
            std::fs::write(
                path,
                format!("{}{table}{}", &readme[..start], &readme[stop..]),
            )
            .unwrap();
            return;
        }
        assert_eq!(
            readme[start..stop],
            table,
            "README's settings table is out of date: run UPDATE_README=1 cargo test -p service"
        );
    }
}
