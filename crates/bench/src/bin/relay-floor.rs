//! relay-floor: the bare programs `make bench` measures Relay against, started in the same run and driven
//! by the same clients at the same offered loads, so a row's ratio says how far Relay is from the floor
//! of its stack on this machine rather than how fast the machine is.
//!
//! - `FLOOR_MODE=broadcast`: `POST /messages` checks the JSON, builds one frame (encoded once, shared by
//!   reference count) and queues it to every WebSocket client. No Redis: the fan-out ceiling.
//! - `FLOOR_MODE=pipeline`: `POST /messages` → `XADD` → 202; one reader `XREAD BLOCK`s the stream and
//!   broadcasts each entry as a frame: the floor of POST → WebSocket frame through Redis.
//! - `FLOOR_MODE=append`: `POST /messages` checks the JSON, `XADD`s it and answers 202 with its id, and
//!   nothing reads the stream: the floor of ingest-api's whole job, HTTP and Redis both.
//! - `FLOOR_MODE=read`: `GET /messages` streams every row of `DATABASE_URL`'s `messages` table as one
//!   JSON array, in Relay's envelope: one connection, one query read row by row (libpq's single-row
//!   mode, as Relay's pages are), 64 KiB chunks through a channel of two to the socket. No pool, no
//!   pages, no limits: the floor of a streamed full read on actix-web and Diesel, in time and in memory.
//!
//! Every mode answers `GET /openapi.json` with a document of the size of ingest-api's, for the hostile
//! clients of the ingest rows.
//!
//! Both shed as the gateway does: a client whose queue of `WS_SEND_QUEUE` frames is full is dropped and
//! closed with 1013. Frames have the gateway's layout (`{"type":"message","data":{"id":…,"stream_id":…,
//! "received_at":…,"payload":…}}`), so the bench's clients read both alike. It logs `listening on
//! 127.0.0.1:<port>` and answers `/readyz`, as the services do, so testkit starts it the same way.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_ws::{CloseCode, CloseReason};
use bytestring::ByteString;
use redis::AsyncCommands;
use tokio::sync::mpsc;

/// The clients, and the last stream id handed out (broadcast mode numbers its own frames).
struct Hub {
    clients: Mutex<(Vec<mpsc::Sender<ByteString>>, u64)>,
    queue: usize,
}

impl Hub {
    /// Queues the frame made by `frame(seq)` to every client, under the lock so frames keep their order.
    fn publish(&self, frame: impl FnOnce(u64) -> ByteString) {
        let mut guard = self.clients.lock().unwrap();
        guard.1 += 1;
        let text = frame(guard.1);
        // A full queue drops the sender: the session sends what is queued, then closes with 1013.
        guard.0.retain(|tx| tx.try_send(text.clone()).is_ok());
    }
}

enum Mode {
    Broadcast,
    Read {
        database_url: String,
    },
    Pipeline {
        redis: redis::aio::MultiplexedConnection,
        key: String,
    },
}

fn frame(stream_id: &str, payload: &str) -> ByteString {
    let at = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ");
    ByteString::from(format!(
        r#"{{"type":"message","data":{{"id":"{}","stream_id":"{stream_id}","received_at":"{at}","payload":{payload}}}}}"#,
        uuid::Uuid::now_v7()
    ))
}

async fn publish(body: web::Bytes, hub: web::Data<Hub>, mode: web::Data<Mode>) -> HttpResponse {
    // The JSON check Relay also makes; a body that is not JSON is refused.
    let Ok(text) = std::str::from_utf8(&body) else {
        return HttpResponse::BadRequest().finish();
    };
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
        return HttpResponse::BadRequest().finish();
    }
    match mode.get_ref() {
        Mode::Broadcast => {
            hub.publish(|seq| frame(&format!("1-{seq}"), text));
            HttpResponse::Accepted().body("{}")
        }
        Mode::Read { .. } => HttpResponse::MethodNotAllowed().finish(),
        Mode::Pipeline { redis, key } => {
            let mut redis = redis.clone();
            match redis
                .xadd::<_, _, _, _, String>(key, "*", &[("p", text)])
                .await
            {
                Ok(id) => HttpResponse::Accepted().body(format!("{{\"stream_id\":\"{id}\"}}")),
                Err(_) => HttpResponse::ServiceUnavailable().finish(),
            }
        }
    }
}

/// `GET /openapi.json`: a JSON document of the size of ingest-api's (28 KiB), so that the bench's
/// hostile clients, which pipeline requests for it and never read, fill this server's pipes as they
/// fill Relay's.
async fn document() -> HttpResponse {
    static DOCUMENT: std::sync::OnceLock<web::Bytes> = std::sync::OnceLock::new();
    let body = DOCUMENT.get_or_init(|| {
        format!(
            r#"{{"openapi":"3.1.0","padding":"{}"}}"#,
            "x".repeat(28 * 1024)
        )
        .into()
    });
    HttpResponse::Ok()
        .content_type("application/json")
        .body(body.clone())
}

/// Bytes per chunk of a streamed read, as Relay's.
const CHUNK_BYTES: usize = 64 * 1024;

/// `GET /messages` in read mode: the whole table as one JSON array, streamed. A database that cannot be
/// reached is a 503 naming why; a read that fails midway ends the body short (the bench's count check
/// then fails) and is logged.
async fn read_all(mode: web::Data<Mode>) -> HttpResponse {
    let Mode::Read { database_url } = mode.get_ref() else {
        return HttpResponse::NotFound().finish();
    };
    let database_url = database_url.clone();
    let connected =
        web::block(move || <diesel::PgConnection as diesel::Connection>::establish(&database_url))
            .await;
    let mut conn = match connected {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return HttpResponse::ServiceUnavailable().body(format!("DATABASE_URL: {e}")),
        Err(e) => return HttpResponse::InternalServerError().body(e.to_string()),
    };
    let (tx, rx) = mpsc::channel::<web::Bytes>(2);
    tokio::task::spawn_blocking(move || {
        let mut chunk = Vec::with_capacity(CHUNK_BYTES * 2);
        chunk.push(b'[');
        let mut first = true;
        let all = store::read::Window::default();
        let read = store::read::for_each(&mut conn, &all, i64::MAX, |row| {
            if !std::mem::take(&mut first) {
                chunk.push(b',');
            }
            row.write_json(&mut chunk);
            if chunk.len() < CHUNK_BYTES {
                return true;
            }
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK_BYTES * 2));
            tx.blocking_send(web::Bytes::from(full)).is_ok()
        });
        match read {
            Ok(()) => {
                chunk.push(b']');
                let _ = tx.blocking_send(web::Bytes::from(chunk));
            }
            Err(e) => eprintln!("relay-floor: the read failed midway: {e}"),
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, actix_web::Error>(chunk), rx))
    });
    HttpResponse::Ok()
        .content_type("application/json")
        .streaming(body)
}

/// Reads the stream from its end and broadcasts every entry (pipeline mode).
async fn read_stream(client: redis::Client, key: String, hub: web::Data<Hub>) {
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(5)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("the floor's reader connects to Redis");
    let mut last = "$".to_owned();
    let options = redis::streams::StreamReadOptions::default()
        .block(1000)
        .count(1000);
    loop {
        let reply: redis::RedisResult<redis::streams::StreamReadReply> =
            conn.xread_options(&[&key], &[&last], &options).await;
        let Ok(reply) = reply else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        for entry in reply.keys.into_iter().flat_map(|k| k.ids) {
            let payload: String = entry.get("p").unwrap_or_default();
            hub.publish(|_| frame(&entry.id, &payload));
            last = entry.id;
        }
    }
}

async fn ws(
    req: HttpRequest,
    body: web::Payload,
    hub: web::Data<Hub>,
) -> Result<HttpResponse, actix_web::Error> {
    let (res, mut session, mut incoming) = actix_ws::handle(&req, body)?;
    let (tx, mut rx) = mpsc::channel::<ByteString>(hub.queue);
    hub.clients.lock().unwrap().0.push(tx);
    actix_web::rt::spawn(async move {
        loop {
            tokio::select! {
                frame = rx.recv() => match frame {
                    Some(text) => {
                        if session.text(text).await.is_err() {
                            return;
                        }
                    }
                    None => {
                        let reason = CloseReason { code: CloseCode::Again, description: None };
                        let _ = session.close(Some(reason)).await;
                        return;
                    }
                },
                msg = incoming.recv() => match msg {
                    Some(Ok(actix_ws::Message::Ping(bytes))) => {
                        let _ = session.pong(&bytes).await;
                    }
                    Some(Ok(actix_ws::Message::Close(_)) | Err(_)) | None => {
                        let _ = session.close(None).await;
                        return;
                    }
                    Some(Ok(_)) => {}
                },
            }
        }
    });
    Ok(res)
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let queue: usize = var("WS_SEND_QUEUE", "1024").parse().expect("WS_SEND_QUEUE");
    let hub = web::Data::new(Hub {
        clients: Mutex::new((Vec::new(), 0)),
        queue,
    });
    let mode = match var("FLOOR_MODE", "broadcast").as_str() {
        mode @ ("pipeline" | "append") => {
            let client =
                redis::Client::open(var("REDIS_URL", "redis://127.0.0.1:6379")).expect("REDIS_URL");
            let key = var("STREAM_KEY", "floor");
            let redis = client
                .get_multiplexed_async_connection()
                .await
                .expect("the floor connects to Redis");
            if mode == "pipeline" {
                actix_web::rt::spawn(read_stream(client, key.clone(), hub.clone()));
            }
            Mode::Pipeline { redis, key }
        }
        "read" => Mode::Read {
            database_url: var("DATABASE_URL", "postgres://127.0.0.1/relay"),
        },
        _ => Mode::Broadcast,
    };
    let mode = web::Data::from(Arc::new(mode));
    let listener = std::net::TcpListener::bind(var("FLOOR_ADDR", "127.0.0.1:0"))?;
    eprintln!("relay-floor listening on {}", listener.local_addr()?);
    HttpServer::new(move || {
        App::new()
            .app_data(hub.clone())
            .app_data(mode.clone())
            .route("/messages", web::post().to(publish))
            .route("/messages", web::get().to(read_all))
            .route("/ws", web::get().to(ws))
            .route("/readyz", web::get().to(HttpResponse::Ok))
            .route("/openapi.json", web::get().to(document))
    })
    .listen(listener)?
    .run()
    .await
}
