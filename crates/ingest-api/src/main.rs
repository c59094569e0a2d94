//! The ingest-api process: settings from the environment, stop on SIGINT/SIGTERM.

use ingest_api::Application;
use model::shutdown;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shutdown::run_service("ingest-api", Application::build, |app| {
        app.run_until_stopped(shutdown::signal())
    })
    .await
}
