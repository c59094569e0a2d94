//! The persister process: settings from the environment, stop on SIGINT/SIGTERM.

use model::shutdown;
use persister::Application;

// mimalloc: the services allocate many small, short-lived buffers per message (reply parsing, frames,
// rows); glibc's malloc showed as ~25% of the persister's profile while draining.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shutdown::run_service("persister", Application::build, |app| {
        app.run_until_stopped(shutdown::signal())
    })
    .await
}
