//! A gateway (and an ingest-api, and optionally a persister) on port 0, sharing a fresh stream and
//! database; a WebSocket client that reads frames with deadlines.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use service::Settings;
use testkit::Cleanup;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct Relay {
    pub settings: Settings,
    pub ingest: String,
    pub gateway: String,
    pub client: reqwest::Client,
    gateway_stop: Option<oneshot::Sender<()>>,
    gateway_task: Option<tokio::task::JoinHandle<()>>,
    stops: Vec<oneshot::Sender<()>>,
    _cleanup: Cleanup,
}

pub async fn spawn(settings: Settings, with_persister: bool) -> Relay {
    let url = settings.database_url.clone();
    tokio::task::spawn_blocking(move || store::prepare_database(&url))
        .await
        .unwrap()
        .unwrap();
    let mut stops = Vec::new();
    let ingest = ingest_api::Application::build(settings.clone())
        .await
        .unwrap();
    let ingest_url = format!("http://127.0.0.1:{}", ingest.port());
    let (tx, rx) = oneshot::channel::<()>();
    stops.push(tx);
    tokio::spawn(ingest.run_until_stopped(async move { rx.await.unwrap_or(()) }));
    if with_persister {
        let persister = persister::Application::build(settings.clone())
            .await
            .unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        stops.push(tx);
        tokio::spawn(persister.run_until_stopped(async move { rx.await.unwrap_or(()) }));
    }
    let mut settings = settings;
    settings.ingest_public_url = ingest_url.clone();
    let mut relay = Relay {
        settings: settings.clone(),
        ingest: ingest_url,
        gateway: String::new(),
        client: reqwest::Client::new(),
        gateway_stop: None,
        gateway_task: None,
        stops,
        _cleanup: Cleanup(settings),
    };
    relay.start_gateway(None).await;
    relay
}

impl Relay {
    /// Starts the gateway (again), on `port` if given.
    pub async fn start_gateway(&mut self, port: Option<u16>) {
        let mut settings = self.settings.clone();
        if let Some(port) = port {
            settings.gateway_addr = format!("127.0.0.1:{port}").parse().unwrap();
        }
        let gateway = push_gateway::Application::build(settings).await.unwrap();
        self.gateway = format!("127.0.0.1:{}", gateway.port());
        let (tx, rx) = oneshot::channel::<()>();
        self.gateway_stop = Some(tx);
        self.gateway_task = Some(tokio::spawn(async move {
            gateway
                .run_until_stopped(async move { rx.await.unwrap_or(()) })
                .await
                .unwrap();
        }));
        // The reader starts at the stream's newest entry: give it a moment to take its position.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Stops the gateway cleanly and waits until it has gone.
    pub async fn stop_gateway(&mut self) {
        let _ = self.gateway_stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.gateway_task.take().unwrap())
            .await
            .unwrap()
            .unwrap();
    }

    pub fn gateway_port(&self) -> u16 {
        self.gateway.rsplit(':').next().unwrap().parse().unwrap()
    }

    pub async fn post(&self, body: String) -> serde_json::Value {
        let res = self
            .client
            .post(format!("{}/messages", self.ingest))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        res.json().await.unwrap()
    }

    /// Posts `lines` as one NDJSON batch; returns the accepted ids in order.
    pub async fn post_batch(&self, lines: &[String]) -> Vec<serde_json::Value> {
        let res = self
            .client
            .post(format!("{}/messages", self.ingest))
            .header("content-type", "application/x-ndjson")
            .body(lines.join("\n"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
        res.json().await.unwrap()
    }

    pub async fn connect(&self, query: &str) -> Ws {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws{query}", self.gateway))
            .await
            .unwrap();
        Ws(ws)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for tx in self.stops.drain(..) {
            let _ = tx.send(());
        }
        if let Some(tx) = self.gateway_stop.take() {
            let _ = tx.send(());
        }
    }
}

pub struct Ws(pub WebSocketStream<MaybeTlsStream<TcpStream>>);

/// What a client saw next.
#[derive(Debug)]
pub enum Seen {
    Frame(serde_json::Value),
    Closed(Option<CloseFrame>),
}

impl Ws {
    /// The next text frame or close, skipping pings and `hello`; panics after 10 s of silence.
    pub async fn next(&mut self) -> Seen {
        loop {
            match self.next_any().await {
                Seen::Frame(f) if f["type"] == "hello" => continue,
                seen => return seen,
            }
        }
    }

    /// The next text frame (of any type) or close, skipping pings.
    pub async fn next_any(&mut self) -> Seen {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.0.next())
                .await
                .expect("no frame within 10 s");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Seen::Frame(serde_json::from_str(&t).unwrap())
                }
                Some(Ok(Message::Close(c))) => return Seen::Closed(c),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Seen::Closed(None),
            }
        }
    }

    pub async fn frame(&mut self) -> serde_json::Value {
        match self.next().await {
            Seen::Frame(f) => f,
            Seen::Closed(c) => panic!("closed while a frame was expected: {c:?}"),
        }
    }

    /// The next `n` message frames' `data`.
    pub async fn messages(&mut self, n: usize) -> Vec<serde_json::Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let f = self.frame().await;
            assert_eq!(f["type"], "message", "{f}");
            out.push(f["data"].clone());
        }
        out
    }

    /// Nothing more arrives within `wait`.
    pub async fn assert_quiet(&mut self, wait: Duration) {
        if let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(wait, self.0.next()).await {
            panic!("unexpected frame: {t}");
        }
    }

    pub async fn close(mut self) {
        let _ = self.0.send(Message::Close(None)).await;
    }
}
