use std::process::ExitCode;

use ingest_api::Application;
use model::{shutdown, Settings};

#[tokio::main]
async fn main() -> ExitCode {
    shutdown::init_logging();
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            log::error!("ingest-api cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            log::error!("ingest-api cannot start: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped(shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("ingest-api stopped with an error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
