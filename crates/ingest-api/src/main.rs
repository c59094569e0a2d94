//! The ingest-api process: settings from the environment, stop on SIGINT/SIGTERM.

use ingest_api::Application;
use model::shutdown;

// mimalloc: the services allocate many small, short-lived buffers per message (reply parsing, frames,
// rows); glibc's malloc showed as ~25% of the persister's profile while draining.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    shutdown::run_service("ingest-api", Application::build, |app| {
        app.run_until_stopped(shutdown::signal())
    })
    .await
}
