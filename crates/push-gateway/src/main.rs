use std::process::ExitCode;

use model::{shutdown, Settings};
use push_gateway::Application;

#[tokio::main]
async fn main() -> ExitCode {
    shutdown::init_logging();
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            log::error!("push-gateway cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            log::error!("push-gateway cannot start: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped(shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("push-gateway stopped with an error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
