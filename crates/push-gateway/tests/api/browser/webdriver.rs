//! A minimal WebDriver client for the browser tests: chromedriver and a headless Chromium of the test's
//! own, the handful of commands the tests need, and the page opened on a test's gateway.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use testkit::Relay;

const CHROME_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
];

/// A minimal WebDriver client: the handful of commands these tests need.
pub(super) struct Browser {
    http: reqwest::Client,
    session: String,
    driver: Child,
    _profile: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn find(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

impl Browser {
    async fn start() -> Option<Self> {
        let (Some(driver), Some(chromium)) = (find("chromedriver"), find("chromium")) else {
            if std::env::var("RELAY_SKIP_BROWSER").as_deref() == Ok("1") {
                eprintln!("RELAY_SKIP_BROWSER=1: the browser test is skipped by request");
                return None;
            }
            panic!(
                "the browser test needs Chromium and ChromeDriver: apt-get install -y chromium chromium-driver \
                 (make test installs them when it can; RELAY_SKIP_BROWSER=1 opts out explicitly)"
            );
        };
        let port = testkit::procs::free_port();
        let driver = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        wait_until("chromedriver to start", Duration::from_secs(20), || async {
            http.get(format!("{base}/status")).send().await.is_ok()
        })
        .await;
        let profile =
            TempDir(std::env::temp_dir().join(format!("relay-chromium-{}", uuid::Uuid::now_v7())));
        let mut args: Vec<String> = CHROME_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.0.display()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args}
        }}});
        let res = answer(http.post(format!("{base}/session")).json(&caps)).await;
        let session = res["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {res}"))
            .to_owned();
        Some(Self {
            http,
            session: format!("{base}/session/{session}"),
            driver,
            _profile: profile,
        })
    }

    async fn cmd(&self, path: &str, body: Value) -> Value {
        let res = answer(
            self.http
                .post(format!("{}{path}", self.session))
                .json(&body),
        )
        .await;
        assert!(
            res["value"].get("error").is_none(),
            "WebDriver {path}: {res}"
        );
        res["value"].clone()
    }

    pub(super) async fn goto(&self, url: &str) {
        self.cmd("/url", json!({"url": url})).await;
    }

    pub(super) async fn js(&self, script: &str, args: Value) -> Value {
        self.cmd("/execute/sync", json!({"script": script, "args": args}))
            .await
    }

    pub(super) async fn click(&self, css: &str) {
        let el = self
            .cmd("/element", json!({"using": "css selector", "value": css}))
            .await;
        let id = el
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned();
        self.cmd(&format!("/element/{id}/click"), json!({})).await;
    }

    pub(super) async fn screenshot(&self) -> Vec<u8> {
        let res = answer(self.http.get(format!("{}/screenshot", self.session))).await;
        use std::io::Read;
        let b64 = res["value"].as_str().unwrap();
        base64_decode(b64.as_bytes())
            .bytes()
            .map(Result::unwrap)
            .collect()
    }

    /// How many message cards carry `data-id == id`.
    pub(super) async fn cards_with_id(&self, id: &str) -> u64 {
        self.js(
            "return document.querySelectorAll(`li[data-id=\"${arguments[0]}\"]`).length",
            json!([id]),
        )
        .await
        .as_u64()
        .unwrap()
    }

    /// Whether a JavaScript dialog (`alert`) is open.
    pub(super) async fn alert_open(&self) -> bool {
        let res = answer(self.http.get(format!("{}/alert/text", self.session))).await;
        res["value"].get("error").is_none()
    }

    pub(super) async fn status(&self) -> String {
        self.js(
            "return document.getElementById('status').dataset.state",
            json!([]),
        )
        .await
        .as_str()
        .unwrap()
        .to_owned()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // End the session first: that quits Chromium. Killing only chromedriver would leave it running.
        let session = self.session.clone();
        let _ = std::thread::spawn(move || reqwest::blocking::Client::new().delete(session).send())
            .join();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A WebDriver command's JSON answer.
async fn answer(req: reqwest::RequestBuilder) -> Value {
    req.send().await.unwrap().json().await.unwrap()
}

fn base64_decode(input: &[u8]) -> std::io::Cursor<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for &c in input
        .iter()
        .filter(|c| **c != b'=' && !c.is_ascii_whitespace())
    {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    std::io::Cursor::new(out)
}

pub(super) async fn wait_until<F, Fut>(what: &str, limit: Duration, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let done = testkit::poll_until(limit, check, |done| *done).await;
    assert!(done, "timed out waiting for {what}");
}

/// A browser on `relay`'s page (`None` when the browser test is skipped by request).
pub(super) async fn open_page(relay: &Relay) -> Option<Browser> {
    let browser = Browser::start().await?;
    browser
        .goto(&format!("http://127.0.0.1:{}/", relay.gateway_port()))
        .await;
    Some(browser)
}

/// A browser on `relay`'s page once the page says it is live.
pub(super) async fn open_live_page(relay: &Relay) -> Option<Browser> {
    let browser = open_page(relay).await?;
    wait_until("the page to go live", Duration::from_secs(20), || async {
        browser.status().await == "live"
    })
    .await;
    Some(browser)
}
