//! The push-gateway process: settings from the environment, stop on SIGINT/SIGTERM.

use push_gateway::Application;

// The system allocator here, not mimalloc as in the other services: the gateway's cost that matters most
// is memory per idle connection, and make bench measured 24 KiB per idle socket with mimalloc against
// under 16 KiB with glibc's malloc, at the same fan-out throughput.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    service::run_service(
        "push-gateway",
        service::GATEWAY,
        Application::build,
        |app| app.run_until_stopped(service::run::signal()),
    )
    .await
}
