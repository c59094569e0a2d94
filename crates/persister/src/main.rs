//! The persister process: settings from the environment, stop on SIGINT/SIGTERM.

use persister::Application;

// See ingest-api's main: mimalloc for the many small per-message buffers.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    service::run_service("persister", service::PERSISTER, Application::build, |app| {
        app.run_until_stopped(service::run::signal())
    })
    .await
}
