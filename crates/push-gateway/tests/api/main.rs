//! push-gateway against real Redis (and, for the page, the real ingest-api and persister).
#![allow(clippy::unwrap_used)]

mod browser;
mod channels;
mod client;
mod live;
mod replay;
mod seam;
mod security;
