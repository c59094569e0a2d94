//! What lives exactly as long as one TCP connection.

use std::any::Any;
use std::sync::{Arc, Mutex};

use actix_web::HttpRequest;

use crate::connection::{Guarded, Written};

/// Things that live exactly as long as one TCP connection: a handler hands something here (a WebSocket's
/// connection slot) and it is dropped when actix drops the socket, not when the handler or session ends.
/// That is what makes "the slot is free only when the socket is gone" true.
#[derive(Clone, Default)]
pub struct ConnectionHeld(Arc<Held>);

#[derive(Default)]
struct Held {
    things: Mutex<Vec<Box<dyn Any + Send>>>,
    /// Ends the connection through its own stream.
    closer: crate::connection::Closer,
    /// Bytes written to the socket so far.
    written: Written,
}

impl ConnectionHeld {
    pub(super) fn new(io: &Guarded) -> Self {
        Self(Arc::new(Held {
            things: Mutex::default(),
            closer: io.closer(),
            written: io.written(),
        }))
    }

    /// What the connection has written so far (shared: it goes on counting after this call).
    pub fn written(&self) -> Written {
        self.0.written.clone()
    }

    /// The request's connection data, for a task that outlives the handler.
    pub fn of(req: &HttpRequest) -> Option<Self> {
        req.conn_data::<ConnectionHeld>().cloned()
    }

    /// Ends the connection now, whatever actix still wants to write to it: for a client that has stopped
    /// reading. The connection's next read or write fails, and actix drops it (and what is held here).
    pub fn shutdown(&self) {
        self.0.closer.close();
    }

    /// Keeps `thing` until the request's connection closes. Returns it back when the request has no
    /// connection data (not served by [`serve`]), so the caller can decide what to do with it.
    pub fn hold<T: Any + Send>(req: &HttpRequest, thing: T) -> Result<(), T> {
        match req.conn_data::<ConnectionHeld>() {
            Some(held) => {
                held.0
                    .things
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(Box::new(thing));
                Ok(())
            }
            None => Err(thing),
        }
    }
}
