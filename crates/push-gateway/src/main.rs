//! The push-gateway process: settings from the environment, stop on SIGINT/SIGTERM.

use model::shutdown;
use push_gateway::Application;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shutdown::run_service("push-gateway", Application::build, |app| {
        app.run_until_stopped(shutdown::signal())
    })
    .await
}
