//! The persister process: settings from the environment, stop on SIGINT/SIGTERM.

use model::shutdown;
use persister::Application;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shutdown::run_service("persister", Application::build, |app| {
        app.run_until_stopped(shutdown::signal())
    })
    .await
}
