//! The feed-written side of a single-job stream (SSE or WebSocket) on the
//! direct path: while its client has the newest state, the watcher attaches a
//! [`DirectSink`] to the
//! job's feed and sleeps; the feed writes each new state's pre-framed bytes
//! (an HTTP chunk, a WebSocket frame) straight to the socket and remembers it here. When the socket is full or
//! broken, or the feed has something only the watcher sends (the terminal
//! state and `done`, a stall mark), the sink wakes the watcher, which detaches
//! and carries on by itself from the last state written.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::event::Update;
use crate::fanout::FeedSink;
use crate::http::direct::{DirectSocket, Sent};
use crate::stream::Transport;
use crate::stream::cursor::delivered;

pub struct DirectSink {
    socket: Arc<DirectSocket>,
    /// The transport's pre-framed form of a state, built once per state.
    framed: fn(&Update) -> &Bytes,
    transport: Transport,
    /// The last state the feed wrote, until the watcher takes it over.
    last: Mutex<Option<Arc<Update>>>,
    wake: Notify,
}

impl DirectSink {
    pub fn new(
        socket: Arc<DirectSocket>,
        framed: fn(&Update) -> &Bytes,
        transport: Transport,
    ) -> Arc<DirectSink> {
        Arc::new(DirectSink {
            socket,
            framed,
            transport,
            last: Mutex::new(None),
            wake: Notify::new(),
        })
    }

    /// A socket with a rest of a chunk waiting cannot be written by the feed.
    pub fn can_attach(&self) -> bool {
        !self.socket.has_pending()
    }

    /// Resolves when the feed let go of this sink (or once more after it did).
    pub async fn released(&self) {
        self.wake.notified().await;
    }

    /// The last state the feed wrote since the last call.
    pub fn take_last(&self) -> Option<Arc<Update>> {
        crate::sync::lock(&self.last).take()
    }

    fn written(&self, update: &Arc<Update>) {
        *crate::sync::lock(&self.last) = Some(update.clone());
        delivered(update, self.transport);
    }
}

impl FeedSink for DirectSink {
    fn write(&self, update: &Arc<Update>) -> bool {
        match self.socket.try_send((self.framed)(update)) {
            Sent::All => {
                self.written(update);
                true
            }
            Sent::Part => {
                self.written(update);
                self.wake.notify_one();
                false
            }
            Sent::Nothing => {
                self.wake.notify_one();
                false
            }
        }
    }

    fn release(&self) {
        self.wake.notify_one();
    }
}
