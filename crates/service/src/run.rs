//! The whole `main` of a service: `--help`, `--version`, logging, settings, build, and running until the
//! first SIGINT (Ctrl-C) or SIGTERM. Services take their stop signal as a future from the caller, so tests
//! can stop them without signals; `main` passes [`signal`].

use std::future::Future;
use std::io::Write as _;
use std::process::ExitCode;

use crate::settings::defs::{UsedBy, DEFS};
use crate::Settings;

/// Resolves on the first SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            log::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                log::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => log::info!("SIGINT received, shutting down"),
        () = term => log::info!("SIGTERM received, shutting down"),
    }
}

/// The settings `binary` reads, as `--help` prints them.
pub fn help(binary: &str, used_by: UsedBy) -> String {
    let mut out = format!(
        "{binary}: part of Relay. Settings come from the environment (or a TOML file named by RELAY_CONFIG);\n\
         a malformed value stops it at start with exit code 2. --version prints its version.\n\nSettings:\n"
    );
    for d in DEFS.iter().filter(|d| d.used_by & used_by != 0) {
        let default = if d.default.is_empty() {
            "(empty)"
        } else {
            d.default
        };
        out.push_str(&format!(
            "  {:<22} default {default}\n      {}\n",
            d.name, d.meaning
        ));
    }
    out
}

/// What `--version` prints: the binary and Relay's release, the workspace version (`[workspace.package]`
/// in the root `Cargo.toml`), which is the newest release in `CHANGELOG.md` (a test keeps them equal).
pub fn version(binary: &str) -> String {
    format!("{binary} {}", env!("CARGO_PKG_VERSION"))
}

/// Runs a service binary: `--help` prints its settings and `--version` its version, each exiting 0
/// without binding anything; otherwise a bad setting exits 2 with one line naming it, any other start-up
/// failure exits 1 with its cause.
pub async fn run_service<A, B, R, E1, E2>(
    binary: &str,
    used_by: UsedBy,
    build: impl FnOnce(Settings) -> B,
    run: impl FnOnce(A) -> R,
) -> ExitCode
where
    B: Future<Output = Result<A, E1>>,
    R: Future<Output = Result<(), E2>>,
    E1: std::fmt::Display,
    E2: std::fmt::Display,
{
    let code = async move {
        if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
            // Writing the help to a closed stdout is not worth a panic.
            let _ = std::io::stdout().write_all(help(binary, used_by).as_bytes());
            return ExitCode::SUCCESS;
        }
        if std::env::args().skip(1).any(|a| a == "--version" || a == "-V") {
            let _ = writeln!(std::io::stdout(), "{}", version(binary));
            return ExitCode::SUCCESS;
        }
        crate::logging::init();
        let settings = match Settings::load() {
            Ok(s) => s,
            Err(e) => {
                log::error!("{binary} cannot start: {e}");
                return ExitCode::from(2);
            }
        };
        log::info!("{binary} settings: {}", settings.describe(used_by));
        if settings.is_open() && used_by & crate::settings::defs::PERSISTER == 0 {
            log::warn!(
                "{binary} is open: API_KEYS is empty, so anyone who reaches it may use it (set API_KEYS before exposing it)"
            );
        }
        let app = match build(settings).await {
            Ok(app) => app,
            Err(e) => {
                log::error!("{binary} cannot start: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        match run(app).await {
            Ok(()) => {
                log::info!("{binary} stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                log::error!("{binary} stopped with an error: {e:#}");
                ExitCode::FAILURE
            }
        }
    }
    .await;
    // The log writer is a thread of its own: what it holds must reach stderr before the process ends.
    crate::logging::flush();
    code
}
