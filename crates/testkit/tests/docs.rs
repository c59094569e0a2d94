//! The security page names the test that proves each of its claims (`crate::module::test_name`): every
//! test it names exists, so a renamed or deleted test cannot leave a claim standing without its proof.
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

#[test]
fn every_test_the_security_page_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let page = std::fs::read_to_string(root.join("docs/security.md")).unwrap();
    let mut files = Vec::new();
    sources(&root.join("crates"), &mut files);
    let code: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let mut named = 0;
    for span in page.split('`').skip(1).step_by(2) {
        // `crate::module::test`, or `…::test` continuing the previous name; `::*` names a group.
        if !span.contains("::") || span.contains(' ') || span.ends_with('*') {
            continue;
        }
        let last = span.rsplit("::").next().unwrap();
        let is_test_name = last.len() > 20
            && last
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !is_test_name {
            continue;
        }
        named += 1;
        assert!(
            code.contains(&format!("fn {last}(")),
            "docs/security.md names `{span}`, but no test `{last}` exists"
        );
    }
    assert!(named >= 20, "only {named} test names found on the page");
}
