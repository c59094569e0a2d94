//! The live page and the browser client (`/relay.js`) in a real headless Chromium, driven over WebDriver
//! (chromedriver).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`make test` installs them). Without them these tests
//! fail with the install command, unless `RELAY_SKIP_BROWSER=1` is set explicitly (CI never sets it).

mod client_library;
mod page;
mod webdriver;
