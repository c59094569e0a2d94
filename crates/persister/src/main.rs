use std::process::ExitCode;

use model::{shutdown, Settings};
use persister::Application;

#[tokio::main]
async fn main() -> ExitCode {
    shutdown::init_logging();
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            log::error!("persister cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            log::error!("persister cannot start: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped(shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("persister stopped with an error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
