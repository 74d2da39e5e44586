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
    /// Held while the feed writes, so letting go waits for a write under way.
    state: Mutex<SinkState>,
    wake: Notify,
}

#[derive(Default)]
struct SinkState {
    attached: bool,
    /// The newest state the client has: the one it had when attached, then
    /// each one the feed wrote.
    last: Option<Arc<Update>>,
    /// Whether the feed wrote `last` (the watcher takes it over).
    written: bool,
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
            state: Mutex::new(SinkState::default()),
            wake: Notify::new(),
        })
    }

    /// A socket with a rest of a frame waiting cannot be written by the feed.
    pub fn can_attach(&self) -> bool {
        !self.socket.has_pending()
    }

    /// Resolves when the feed let go of this sink (or once more after it did).
    pub async fn released(&self) {
        self.wake.notified().await;
    }

    /// The last state the feed wrote since the last call.
    pub fn take_last(&self) -> Option<Arc<Update>> {
        let mut state = crate::sync::lock(&self.state);
        if !std::mem::take(&mut state.written) {
            return None;
        }
        state.last.clone()
    }
}

impl FeedSink for DirectSink {
    fn write(&self, update: &Arc<Update>) -> bool {
        let mut state = crate::sync::lock(&self.state);
        if !state.attached {
            return false;
        }
        if state.last.as_ref().is_some_and(|l| Arc::ptr_eq(l, update)) {
            return true;
        }
        let sent = self.socket.try_send((self.framed)(update));
        if matches!(sent, Sent::All | Sent::Part) {
            state.last = Some(update.clone());
            state.written = true;
            delivered(update, self.transport);
        }
        if matches!(sent, Sent::All) {
            return true;
        }
        // Full (or broken): the watcher takes over, writes the rest and
        // conflates from there.
        state.attached = false;
        self.wake.notify_one();
        false
    }

    fn attached(&self, last: &Arc<Update>) {
        let mut state = crate::sync::lock(&self.state);
        state.attached = true;
        state.last = Some(last.clone());
        state.written = false;
    }

    fn is_attached(&self) -> bool {
        crate::sync::lock(&self.state).attached
    }

    fn let_go(&self, wake: bool) {
        crate::sync::lock(&self.state).attached = false;
        if wake {
            self.wake.notify_one();
        }
    }
}
