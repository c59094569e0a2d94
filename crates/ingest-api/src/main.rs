//! The ingest-api process: settings from the environment, stop on SIGINT/SIGTERM.

use ingest_api::Application;

// mimalloc: the services allocate many small, short-lived buffers per message (reply parsing, frames,
// rows); glibc's malloc showed as ~25% of the persister's profile while draining.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // The OpenAPI document, for tools (validators, client generators); nothing is started.
    if std::env::args().nth(1).as_deref() == Some("--openapi") {
        return match ingest_api::routes::openapi().to_pretty_json() {
            Ok(doc) => {
                use std::io::Write as _;
                match writeln!(std::io::stdout(), "{doc}") {
                    Ok(()) => std::process::ExitCode::SUCCESS,
                    Err(_) => std::process::ExitCode::FAILURE,
                }
            }
            Err(e) => {
                eprintln!("cannot render the OpenAPI document: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    service::run_service("ingest-api", service::INGEST, Application::build, |app| {
        app.run_until_stopped(service::run::signal())
    })
    .await
}
