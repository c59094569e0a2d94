//! The environment the compose file gives the Relay containers, read from the files themselves, and mapped
//! onto this machine.

use testkit::procs::OwnRedis;

/// The environment the compose file gives every Relay container: the image's `ENV` lines, then the
/// service's `environment` (`x-relay-env`, which all three use unchanged), with `${VAR:-default}` as an
/// empty `.env` leaves it. Read from the files themselves, so a change to either is tested.
pub fn compose_environment() -> Vec<(String, String)> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let dockerfile = std::fs::read_to_string(format!("{root}/deploy/Dockerfile")).unwrap();
    let compose = std::fs::read_to_string(format!("{root}/docker-compose.yml")).unwrap();
    let substitute = |v: &str| -> String {
        let mut out = v.to_owned();
        while let Some(start) = out.find("${") {
            let end = start + out[start..].find('}').unwrap();
            let default = out[start + 2..end]
                .split_once(":-")
                .map_or("", |(_, d)| d)
                .to_owned();
            out.replace_range(start..=end, &default);
        }
        out
    };
    let mut env = Vec::new();
    // The runtime stage's ENV: `ENV A=1 \` continued on the following lines.
    let mut in_env = false;
    for line in dockerfile.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("ENV ") {
            in_env = true;
            env.clear(); // the last stage's ENV is the image's
            for pair in rest.trim_end_matches('\\').split_whitespace() {
                let (k, v) = pair.split_once('=').unwrap();
                env.push((k.to_owned(), substitute(v)));
            }
        } else if in_env {
            for pair in line.trim_end_matches('\\').split_whitespace() {
                let (k, v) = pair.split_once('=').unwrap();
                env.push((k.to_owned(), substitute(v)));
            }
        }
        in_env &= line.ends_with('\\');
    }
    env.retain(|(k, _)| k != "RELAY_SERVICE");
    // `x-relay-env`: the indented `KEY: value` lines under it (comments skipped).
    let block = compose
        .split("x-relay-env: &relay-env\n")
        .nth(1)
        .expect("docker-compose.yml has x-relay-env");
    for line in block
        .lines()
        .take_while(|l| l.starts_with("  ") || l.is_empty())
    {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once(": ").unwrap();
        env.retain(|(key, _)| key != k);
        env.push((k.to_owned(), substitute(v.trim())));
    }
    // Every Relay service takes exactly that environment, nothing of its own.
    for service in ["persister", "ingest-api", "push-gateway"] {
        let section = compose
            .split(&format!("\n  {service}:\n"))
            .nth(1)
            .unwrap()
            .split("\n\n")
            .next()
            .unwrap();
        assert!(
            section.contains("    environment: *relay-env\n"),
            "{service} has an environment of its own; teach this test about it"
        );
    }
    env
}

/// Maps the compose environment onto this machine: the hosts `redis` and `postgres` are loopback, the
/// ports and database are the test's own, and every service listens on a port the OS picks.
pub fn natively(
    compose: &[(String, String)],
    redis: &OwnRedis,
    database_url: &str,
) -> Vec<(&'static str, String)> {
    let database = store::url::database_name(database_url).unwrap();
    compose
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace("redis://redis:6379", &redis.url())
                .replace(
                    "@postgres:5432/relay",
                    &format!("@127.0.0.1:5432/{database}"),
                )
                .replace("0.0.0.0:8080", "127.0.0.1:0")
                .replace("0.0.0.0:8081", "127.0.0.1:0")
                .replace("0.0.0.0:8082", "127.0.0.1:0");
            (&*k.clone().leak(), v)
        })
        .collect()
}
