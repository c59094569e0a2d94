//! The loader: defaults, file, environment, one line per bad value, secrets masked.

use super::*;

fn with(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
    Settings::from_sources(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

#[test]
fn the_defaults_are_the_contracts() {
    let s = with(&[]).unwrap();
    assert_eq!(s.redis_url, "redis://127.0.0.1:6379");
    assert_eq!(s.database_url, "postgres://postgres@127.0.0.1:5432/relay");
    assert_eq!(s.stream_key, "messages");
    assert_eq!(s.ingest_addr.to_string(), "127.0.0.1:8080");
    assert_eq!(s.ingest_public_url, "http://127.0.0.1:8080");
    assert_eq!(s.claim_idle_ms, 15000);
    assert_eq!(s.ws_send_queue, 1024);
    assert_eq!(s.max_body_bytes, 1 << 20);
    assert_eq!(s.max_backlog, 1_000_000);
    assert_eq!(s.max_stream_bytes, 1 << 30);
    assert_eq!(s.publish_rate, 0);
    assert_eq!(s.client_timeout_ms, 15_000);
    assert_eq!(s.max_connections_per_ip, 100);
    assert!(s.trusted_proxies.is_empty());
    assert_eq!(s.allowed_origins, AllowedOrigins::Loopback);
    assert!(s.api_keys.is_open());
    assert!(!s.consumer_name.is_empty());
}

#[test]
fn environment_variables_override_defaults_and_unknown_ones_are_ignored() {
    let s = with(&[
        ("STREAM_KEY", "other"),
        ("MAX_BODY_BYTES", "10"),
        ("PATH", "/bin"),
        ("HOME", "x"),
    ])
    .unwrap();
    assert_eq!(s.stream_key, "other");
    assert_eq!(s.max_body_bytes, 10);
}

#[test]
fn a_malformed_value_names_its_variable() {
    for (name, value) in [
        ("MAX_BODY_BYTES", "lots"),
        ("INGEST_ADDR", "localhost"),
        ("REDIS_URL", "http://x"),
        ("CLAIM_IDLE_MS", "0"),
        ("API_KEYS", "secret"),
        ("ALLOWED_ORIGINS", "example.com"),
        ("STREAM_KEY", " "),
        ("TRUSTED_PROXIES", "10.0.0.1,proxy"),
        ("PUBLISH_RATE", "-1"),
    ] {
        let err = with(&[(name, value)]).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("invalid setting {name}=")),
            "{err}"
        );
    }
}

#[test]
fn a_setting_error_never_shows_a_secret() {
    for (name, value, secret) in [
        ("API_KEYS", "topsecretkey", "topsecretkey"),
        ("API_KEYS", "k1:publish,topsecret2:fly", "topsecret2"),
        ("DATABASE_URL", "mysql://u:hunter2@h/db", "hunter2"),
        ("DATABASE_URL", "postgres//u:hunter2@h/db", "hunter2"),
        ("REDIS_URL", "http://:hunter2@h", "hunter2"),
    ] {
        let err = with(&[(name, value)]).unwrap_err().to_string();
        assert!(err.contains(name), "{err}");
        assert!(!err.contains(secret), "{err} shows {secret}");
    }
}

#[test]
fn the_effective_settings_line_masks_secrets() {
    let s = with(&[
        ("DATABASE_URL", "postgres://u:hunter2@h/db"),
        ("API_KEYS", "topsecretkey:read"),
    ])
    .unwrap();
    let line = s.describe(defs::ALL);
    assert!(
        line.contains("DATABASE_URL=postgres://u:***@h/db"),
        "{line}"
    );
    assert!(line.contains("API_KEYS=***"), "{line}");
    assert!(
        !line.contains("hunter2") && !line.contains("topsecretkey"),
        "{line}"
    );
    assert!(!format!("{s:?}").contains("hunter2"));
}

#[test]
fn a_cluster_url_names_its_seed_nodes_and_needs_a_hash_tagged_stream_key() {
    let s = with(&[
        (
            "REDIS_URL",
            "redis+cluster://:pw@10.0.0.1:7000, 10.0.0.2:7001/",
        ),
        ("STREAM_KEY", "{messages}"),
    ])
    .unwrap();
    assert_eq!(
        s.redis_cluster_seeds().unwrap(),
        ["redis://:pw@10.0.0.1:7000", "redis://:pw@10.0.0.2:7001"]
    );
    assert_eq!(with(&[]).unwrap().redis_cluster_seeds(), None);

    let err = with(&[("REDIS_URL", "redis+cluster://h1:7000,h2:7001")])
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("invalid setting STREAM_KEY="), "{err}");
    assert!(err.contains("{messages}"), "{err}");
    for bad in [
        "redis+cluster://",
        "redis+cluster://h1:7000/0",
        "redis+cluster://:hunter2@h1",
    ] {
        let err = with(&[("REDIS_URL", bad), ("STREAM_KEY", "{m}")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("invalid setting REDIS_URL="), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}

#[test]
fn a_settings_file_sets_the_same_keys() {
    let path = std::env::temp_dir().join(format!("relay-settings-{}.toml", std::process::id()));
    std::fs::write(&path, "STREAM_KEY = \"from-file\"\nmax_backlog = 7\n").unwrap();
    let s = with(&[
        ("RELAY_CONFIG", path.to_str().unwrap()),
        ("MAX_BACKLOG", "9"),
    ])
    .unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(s.stream_key, "from-file");
    assert_eq!(s.max_backlog, 9, "the environment wins over the file");
}

#[test]
fn a_broken_settings_file_names_its_line_but_never_shows_it() {
    let path = std::env::temp_dir().join(format!("relay-settings-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "stream_key = \"ok\"\napi_keys = \"supersecret:publish\n",
    )
    .unwrap();
    let vars = vec![(CONFIG_FILE_VAR.to_owned(), path.display().to_string())];
    let error = Settings::from_sources(vars).err().unwrap().to_string();
    std::fs::remove_file(&path).ok();
    assert!(!error.contains("supersecret"), "{error}");
    assert!(error.contains("line 2"), "{error}");
}

/// Every field of `Settings` carries its variable's `///` doc, the same text as `DEFS` (which `--help` and
/// the README print): a field added without one, or a meaning changed in one place only, fails here.
#[test]
fn every_settings_field_is_documented_as_defs_describes_it() {
    let source = include_str!("mod.rs");
    let start = source.find("pub struct Settings {").unwrap();
    let body = &source[start..start + source[start..].find("\n}\n").unwrap()];
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut docs = Vec::new();
    let mut fields = 0;
    for line in body.lines().map(str::trim) {
        if let Some(doc) = line.strip_prefix("///") {
            docs.push(doc.trim().to_owned());
        } else if let Some(field) = line.strip_prefix("pub ").and_then(|l| l.split_once(':')) {
            fields += 1;
            let name = field.0.to_ascii_uppercase();
            let def = defs::find(&name).unwrap_or_else(|| panic!("no DEFS entry for `{name}`"));
            let doc = squash(&docs.join(" "));
            assert!(
                doc.starts_with(&format!("`{name}`")) && doc.contains(&squash(def.meaning)),
                "`{}` needs a `///` doc naming `{name}` with DEFS' meaning; it has: {doc:?}",
                field.0
            );
            docs.clear();
        }
    }
    // RUST_LOG, LOG_FORMAT and RELAY_CONFIG are read before the settings (by the logger and the loader).
    assert_eq!(
        fields,
        DEFS.len() - 3,
        "a field for every DEFS entry but those three"
    );
}
