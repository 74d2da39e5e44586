//! The feed-written side of a single-job SSE stream on the direct path: while
//! its client has the newest state, the watcher attaches a [`SseSink`] to the
//! job's feed and sleeps; the feed writes each new state's pre-framed chunk
//! straight to the socket and remembers it here. When the socket is full or
//! broken, or the feed has something only the watcher sends (the terminal
//! state and `done`, a stall mark), the sink wakes the watcher, which detaches
//! and carries on by itself from the last state written.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::event::Update;
use crate::fanout::FeedSink;
use crate::http::direct::{DirectSocket, Sent};
use crate::stream::Transport;
use crate::stream::cursor::delivered;

pub struct SseSink {
    socket: Arc<DirectSocket>,
    /// The last state the feed wrote, until the watcher takes it over.
    last: Mutex<Option<Arc<Update>>>,
    wake: Notify,
}

impl SseSink {
    pub fn new(socket: Arc<DirectSocket>) -> Arc<SseSink> {
        Arc::new(SseSink {
            socket,
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
        delivered(update, Transport::Sse);
    }
}

impl FeedSink for SseSink {
    fn write(&self, update: &Arc<Update>) -> bool {
        match self
            .socket
            .try_send(crate::stream::sse::progress_chunk(update))
        {
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
