//! The hostile clients of the ingest rows: connections that hold a server's resources without ever
//! finishing a request, opened beside a wrk run to see what the other clients lose.

/// Opens the hostile connections and keeps them busy until the returned tasks are aborted: 16 that
/// pipeline requests for `/openapi.json` and never read an answer (the server's writes back up), and 16
/// that declare a 200-byte body and send it a byte a second (within `CLIENT_TIMEOUT_MS`, so the server
/// must hold them).
pub(super) async fn hostile_clients(
    addr: &str,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    use tokio::io::AsyncWriteExt;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        tasks.push(tokio::spawn(async move {
            let request = b"GET /openapi.json HTTP/1.1\r\nHost: localhost\r\n\r\n";
            // Write until the kernel's buffers are full (the server stopped reading because we never
            // read its answers), then sit on the connection.
            let mut written = 0usize;
            while written < 64 << 20 {
                match stream.try_write(request) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if tokio::time::timeout(
                            std::time::Duration::from_millis(200),
                            stream.writable(),
                        )
                        .await
                        .is_err()
                        {
                            break;
                        }
                    }
                    Err(_) => return,
                }
            }
            std::future::pending::<()>().await;
        }));
    }
    for _ in 0..16 {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        tasks.push(tokio::spawn(async move {
            let head = "POST /messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                if stream.write_all(b" ").await.is_err() {
                    return;
                }
            }
        }));
    }
    // Let them take hold before the measurement starts.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    Ok(tasks)
}
