//! The documents checked against the code, so that a change to one cannot leave the other behind:
//! - the security page names the test that proves each of its claims (`crate::module::test_name`): every
//!   test it names exists where it says (crate, module, name), so a renamed, moved or deleted test cannot
//!   leave a claim standing without its proof;
//! - the protocol page names every route of the OpenAPI document and every frame type the gateway sends;
//! - the architecture, security and guarantees pages name only files that exist;
//! - the changelog's newest release is the version the binaries print.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() && path.file_name().is_some_and(|n| n != "target") {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path each source file of `crates/<crate>/` is compiled as: `src/a/b.rs` and `src/a/b/mod.rs`
/// are `a::b`; a test binary's files `tests/<bin>/a.rs` are `a` (how nextest names its tests) and also
/// `<bin>::a` (how the fault tests are named, one binary per scenario).
fn module_paths(root: &Path) -> Vec<(String, String, PathBuf)> {
    let mut files = Vec::new();
    sources(&root.join("crates"), &mut files);
    let mut out = Vec::new();
    for file in files {
        let rel = file.strip_prefix(root.join("crates")).unwrap();
        let parts: Vec<String> = rel
            .iter()
            .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
            .collect();
        let (krate, kind, rest) = (&parts[0], parts[1].as_str(), &parts[2..]);
        let mut modules: Vec<&str> = rest.iter().map(String::as_str).collect();
        if matches!(modules.last(), Some(&("mod" | "lib" | "main"))) {
            modules.pop();
        }
        match kind {
            "src" => out.push((krate.clone(), modules.join("::"), file.clone())),
            "tests" => {
                out.push((krate.clone(), modules.join("::"), file.clone()));
                if !modules.is_empty() {
                    out.push((krate.clone(), modules[1..].join("::"), file.clone()));
                }
            }
            _ => {}
        }
    }
    out
}

#[test]
fn every_test_the_security_page_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let page = std::fs::read_to_string(root.join("docs/security.md")).unwrap();
    let modules = module_paths(&root);
    let mut named = 0;
    let mut previous: Option<(String, String)> = None;
    for span in page.split('`').skip(1).step_by(2) {
        // `crate::module::test`, or `…::test` continuing the previous name's module; `::*` names a group.
        if !span.contains("::") || span.contains(' ') || span.ends_with('*') {
            continue;
        }
        let (path, last) = span.rsplit_once("::").unwrap();
        let is_test_name = last.len() > 20
            && last
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !is_test_name {
            continue;
        }
        named += 1;
        let (krate, module) = match path.split_once("::") {
            _ if path == "…" => previous.clone().unwrap(),
            Some((krate, module)) => (krate.to_owned(), module.to_owned()),
            None => (path.to_owned(), String::new()),
        };
        previous = Some((krate.clone(), module.clone()));
        // A unit test's `tests` module is inline or `<file>/tests.rs`: either file may hold it.
        let inline = module.strip_suffix("::tests").unwrap_or(&module);
        let found = modules.iter().any(|(k, m, file)| {
            k == &krate
                && (m == &module || m == inline)
                && std::fs::read_to_string(file)
                    .unwrap()
                    .contains(&format!("fn {last}("))
        });
        assert!(
            found,
            "docs/security.md names `{span}`, but crate `{krate}` has no test `{last}` in module `{module}`"
        );
    }
    assert!(named >= 20, "only {named} test names found on the page");
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The protocol page documents every route ingest-api serves: each operation of the OpenAPI document
/// (generated from the routes' own registration, so it is every route) appears as `` `METHOD /path` ``.
#[test]
fn every_route_of_the_openapi_document_is_on_the_protocol_page() {
    let page = read("docs/protocol.md");
    let doc: serde_json::Value =
        serde_json::from_str(&ingest_api::routes::openapi().to_json().unwrap()).unwrap();
    let paths = doc["paths"].as_object().expect("the document has paths");
    let mut routes = Vec::new();
    for (path, item) in paths {
        for method in ["get", "post", "put", "patch", "delete", "head", "options"] {
            if item.get(method).is_some() {
                routes.push(format!("`{} {path}`", method.to_uppercase()));
            }
        }
    }
    let missing: Vec<_> = routes.iter().filter(|r| !page.contains(*r)).collect();
    assert!(
        missing.is_empty(),
        "docs/protocol.md does not describe {missing:?} (routes of the OpenAPI document)"
    );
    assert!(
        routes.len() >= 9,
        "only {} routes found: {routes:?}",
        routes.len()
    );
}

/// The protocol page shows every frame type the gateway sends, as the gateway writes it
/// (`"type":"hello"`, in an example frame).
///
/// The frame types are the variants of the private `Outgoing` enum in `push-gateway/src/frames.rs`, the one
/// place they are defined, built only through that module's public constructors. The test calls each
/// constructor and reads the `type` it writes; so that a new frame type cannot be missed here, it also
/// reads the enum's variants from the source and requires one constructor call per variant.
#[test]
fn every_frame_type_the_gateway_sends_is_on_the_protocol_page() {
    use model::{ChannelName, ChannelPattern, StreamEntry, StreamId};
    use push_gateway::frames;

    let at = StreamId::new(1, 0);
    let pattern: ChannelPattern = "chat.*".parse().unwrap();
    let entry = StreamEntry {
        id: uuid::Uuid::nil(),
        channel: ChannelName::default(),
        received_at: model::now_micros(),
        payload: serde_json::value::RawValue::from_string("1".into()).unwrap(),
        request_id: None,
    };
    let sent: Vec<String> = [
        frames::message(at, entry).text,
        frames::gap(at, at, None),
        frames::subscribed(&pattern, at),
        frames::unsubscribed(&pattern),
        frames::error(None, 400, "refused"),
        frames::hello(at),
    ]
    .iter()
    .map(|frame| {
        let frame: serde_json::Value = serde_json::from_str(frame).unwrap();
        frame["type"]
            .as_str()
            .expect("every frame has a type")
            .to_owned()
    })
    .collect();

    let source = read("crates/push-gateway/src/frames.rs");
    let body = source
        .split_once("enum Outgoing")
        .expect("push-gateway/src/frames.rs defines `enum Outgoing` (moved? update this test)")
        .1;
    let body = &body[..body.find("\n}").unwrap()];
    let mut variants: Vec<String> = body
        .lines()
        .filter(|l| l.starts_with("    ") && l[4..].starts_with(|c: char| c.is_ascii_uppercase()))
        .map(|l| {
            let name = l[4..].split(|c: char| !c.is_ascii_alphanumeric()).next();
            name.unwrap().to_lowercase() // `#[serde(tag = "type", rename_all = "lowercase")]`
        })
        .collect();
    let mut types = sent.clone();
    variants.sort();
    types.sort();
    assert_eq!(
        types, variants,
        "the frame types built here differ from frames.rs's `Outgoing`: call the new constructor above"
    );

    let page = read("docs/protocol.md");
    for kind in &sent {
        assert!(
            page.contains(&format!("{{\"type\":\"{kind}\"")),
            "docs/protocol.md shows no `{{\"type\":\"{kind}\",…}}` frame"
        );
    }
}

/// The architecture page tells a newcomer which file to open: every `crates/…` path it names exists.
#[test]
fn every_file_the_architecture_page_names_exists() {
    let page = read("docs/architecture.md");
    let named: Vec<&str> = page
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| span.starts_with("crates/") && !span.contains(' '))
        .collect();
    let missing: Vec<_> = named.iter().filter(|p| !root().join(p).exists()).collect();
    assert!(
        missing.is_empty(),
        "docs/architecture.md names files that do not exist (moved? say where): {missing:?}"
    );
    assert!(
        named.len() >= 30,
        "only {} paths found on the page",
        named.len()
    );
}

/// The security and guarantees pages name the file that holds each defence: a path (`crates/…`,
/// `push-gateway/src/outlet.rs`, or `publish/body.rs` inside a crate) must exist, and a bare file name
/// (`backlog.rs`) must be some source file's name.
#[test]
fn every_file_the_security_and_guarantees_pages_name_exists() {
    let mut files = Vec::new();
    sources(&root().join("crates"), &mut files);
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let mut named = 0;
    let mut missing = Vec::new();
    for page in ["docs/security.md", "docs/guarantees.md"] {
        let text = read(page);
        for span in text.split('`').skip(1).step_by(2) {
            if !span.ends_with(".rs") || span.contains(' ') {
                continue;
            }
            named += 1;
            let found = if span.contains('/') {
                // `crates/x/src/y.rs`, `x/src/y.rs`, or `publish/body.rs` inside some crate's `src/`.
                let path = span.strip_prefix("crates/").unwrap_or(span);
                root().join("crates").join(path).exists()
                    || files
                        .iter()
                        .any(|f| f.to_string_lossy().ends_with(&format!("/{path}")))
            } else {
                names.iter().any(|n| n == span)
            };
            if !found {
                missing.push(format!("{page}: {span}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "files named that do not exist (moved? say where): {missing:?}"
    );
    assert!(named >= 20, "only {named} files named on the two pages");
}

/// `--version` prints the newest release of the changelog (the first `## [x.y.z]` after `[Unreleased]`),
/// and the operations page's example shows that version too.
#[test]
fn the_newest_release_in_the_changelog_is_the_version_the_binaries_print() {
    let changelog = read("CHANGELOG.md");
    let newest = changelog
        .lines()
        .filter_map(|l| l.strip_prefix("## ["))
        .filter_map(|l| l.split_once(']'))
        .map(|(version, _)| version)
        .find(|v| *v != "Unreleased")
        .expect("CHANGELOG.md has a released version");
    assert_eq!(
        service::run::version("ingest-api"),
        format!("ingest-api {newest}"),
        "CHANGELOG.md's newest release is {newest}: set [workspace.package] version in Cargo.toml to it"
    );
    let operations = read("docs/operations.md");
    assert!(
        operations.contains(&format!("\ningest-api {newest}\n")),
        "docs/operations.md's --version example does not show {newest}"
    );
}
