//! Group commit: the single-entry `XADD`s of concurrent requests on one actix worker go to Redis as one
//! pipelined write.
//!
//! Each worker has a bounded queue and one task draining it. The task takes whatever is waiting (up to
//! [`MAX_BATCH`]), sends it as one pipeline, and hands each request its own reply through a oneshot; the
//! next batch is whatever arrived meanwhile. Alone, a request goes out at once (a pipeline of one), so
//! light load pays one in-process hop and no timer; under load, one write and one read of the socket
//! carry many requests. The pipeline is not `MULTI`/`EXEC`: each entry succeeds or fails on its own, and
//! each request answers 202 only when its own `XADD` returned an id.
//!
//! The request's deadline (`REDIS_TIMEOUT_MS`) covers queueing and the reply both. A request that gave up
//! may still be appended (as with any timed-out write to Redis): the 503 never promises that it was not.

use redis::aio::ConnectionLike;
use redis::{Cmd, RedisResult};
use tokio::sync::{mpsc, oneshot};

/// Most `XADD`s in one pipeline: a bound on one write's size and on how long the first of them waits
/// for the last to be sent.
const MAX_BATCH: usize = 256;

/// Requests waiting for their worker's next pipeline. Bounded, though the HTTP connections bound it
/// already: a full queue makes requests wait, within their deadline, rather than grow memory.
const QUEUE: usize = 4096;

/// One `XADD` and where its reply goes.
struct Waiting {
    cmd: Cmd,
    reply: oneshot::Sender<RedisResult<String>>,
}

/// A worker's handle on its group-commit queue.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Waiting>,
}

impl GroupCommit {
    /// Starts the draining task on the current runtime (call it on the worker's thread, so the task and
    /// the connection's I/O stay on that worker).
    pub fn start(redis: impl ConnectionLike + Send + 'static) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE);
        tokio::spawn(drain(waiting, redis));
        Self { queue }
    }

    /// Appends with `cmd` (an `XADD`) in the worker's next pipeline; the stream id Redis gave it.
    /// Cancel-safe: dropping the future (the request's deadline) leaves the batch intact.
    pub async fn xadd(&self, cmd: Cmd) -> RedisResult<String> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Waiting { cmd, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Io,
        "the worker's group-commit task has stopped",
    ))
}

/// Sends whatever is waiting as one pipeline, replies to each, repeats; ends when every handle is gone.
async fn drain(mut waiting: mpsc::Receiver<Waiting>, mut redis: impl ConnectionLike) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while waiting.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Requests that already gave up (their deadline passed while queued) are not sent.
        batch.retain(|w: &Waiting| !w.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let mut pipe = redis::pipe();
        // Each command's own result, not the first error for all: one failed XADD fails one request.
        pipe.ignore_errors();
        for w in &mut batch {
            pipe.add_command(std::mem::replace(&mut w.cmd, Cmd::new()));
        }
        let replies: RedisResult<Vec<RedisResult<String>>> = pipe.query_async(&mut redis).await;
        match replies {
            Ok(replies) if replies.len() == batch.len() => {
                for (w, reply) in batch.drain(..).zip(replies) {
                    // The request may have given up meanwhile; nobody is left to tell.
                    let _ = w.reply.send(reply);
                }
            }
            Ok(replies) => {
                let n = replies.len();
                for w in batch.drain(..) {
                    let _ = w.reply.send(Err(redis::RedisError::from((
                        redis::ErrorKind::Client,
                        "pipeline reply count differs from its commands",
                        format!("{n} replies"),
                    ))));
                }
            }
            // The write or the read failed (connection lost, no answer within REDIS_TIMEOUT_MS): any of
            // these may or may not have been appended, and each request says so with its 503.
            Err(e) => {
                for w in batch.drain(..) {
                    let _ = w.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
