//! The stop signal of a service process: the first SIGINT (Ctrl-C) or SIGTERM. Services take their stop
//! signal as a future from the caller, so tests can stop them without signals; `main` passes this one.

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

/// Logging as every Relay binary does it: `RUST_LOG`, `info` by default.
pub fn init_logging() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
}

/// The whole `main` of a service: logging, settings, build, run until SIGINT/SIGTERM. A bad setting
/// exits 2 with one line naming it; any other start-up failure exits 1 with its cause.
pub async fn run_service<A, B, R, E1, E2>(
    name: &str,
    build: impl FnOnce(crate::Settings) -> B,
    run: impl FnOnce(A) -> R,
) -> std::process::ExitCode
where
    B: std::future::Future<Output = Result<A, E1>>,
    R: std::future::Future<Output = Result<(), E2>>,
    E1: std::fmt::Display,
    E2: std::fmt::Display,
{
    init_logging();
    let settings = match crate::Settings::load() {
        Ok(s) => s,
        Err(e) => {
            log::error!("{name} cannot start: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let app = match build(settings).await {
        Ok(app) => app,
        Err(e) => {
            log::error!("{name} cannot start: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match run(app).await {
        Ok(()) => {
            log::info!("{name} stopped");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("{name} stopped with an error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
