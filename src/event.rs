//! One accepted job update and the cache of its wire forms: each transport
//! encodes an update ONCE (the first watcher that sends it) and every other
//! watcher shares those bytes. The encoders live with their transport
//! (`stream::sse`, `stream::ws`), as do the small per-connection control events.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::Notify;

use crate::job::{JobId, ProgressDoc};

/// Where an accepted document came from (label of metrics and `X-Jobcast-Source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A `GET`/`HGETALL` of the state key (after a keyspace event or on subscribe).
    RedisKey,
    /// A message on the job channel.
    RedisChannel,
    /// The `jobs` row (fallback read or NOTIFY).
    Postgres,
    /// `POST /jobs/{id}` or the built-in publisher (then also written to Redis).
    Api,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::RedisKey => "keyspace",
            Source::RedisChannel => "channel",
            Source::Postgres => "postgres",
            Source::Api => "api",
        }
    }
    /// What the snapshot route reports in `X-Jobcast-Source`.
    pub fn store_name(self) -> &'static str {
        match self {
            Source::Postgres => "postgres",
            _ => "redis",
        }
    }
}

/// One accepted state of a job, with the cache of its wire forms.
#[derive(Debug)]
pub struct Update {
    pub job: JobId,
    /// Event id: the document's `seq` in decimal, or — for a document without
    /// one — `h` and 16 hex digits of a digest of its bytes (see [`event_id`]).
    pub id: Box<str>,
    pub doc: ProgressDoc,
    pub source: Source,
    /// When jobcast received it (for the source → write latency histogram).
    pub received: std::time::Instant,
    /// Each transport's bytes for this update, encoded on first use.
    pub wire: Wire,
    /// Settled once the state is in the `jobs` row (or will not be written), so a
    /// writer can hold `done` until the terminal state is durable.
    pub durable: Durable,
}

/// One cache slot per transport encoding, filled by the transport's own encoder
/// (`stream::sse::frames`, `stream::ws::frames`) the first time a watcher sends
/// the update. Another encoding is another slot here and an encoder with its
/// transport.
#[derive(Debug, Default)]
pub struct Wire {
    pub sse: OnceLock<Frames>,
    pub ws: OnceLock<Frames>,
}

/// An update as one transport sends it: the `progress` event, and the `done`
/// event that follows it when the document is terminal.
#[derive(Debug)]
pub struct Frames {
    pub progress: Bytes,
    pub done: Option<Bytes>,
}

/// Bound on holding `done` back for the write-behind: a slow or dead Postgres
/// delays the end of a stream by at most this, never blocks it.
pub const DURABLE_WAIT: Duration = Duration::from_secs(2);

/// A one-shot "this update is settled with Postgres" flag: set by the write-behind
/// after its commit (or when it gives up on a failed write), by the hub at once
/// where nothing is written behind. A flag plus `Notify` rather than a channel:
/// any number of watchers wait on it, and it costs nothing once set.
#[derive(Debug, Default)]
pub struct Durable {
    settled: AtomicBool,
    notify: Notify,
}

impl Durable {
    pub fn settle(&self) {
        self.settled.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    /// Waits until settled, at most `bound`; true when it settled in time.
    pub async fn wait(&self, bound: Duration) -> bool {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        // Registered before the check, so a `settle` in between is not missed.
        notified.as_mut().enable();
        if self.is_settled() {
            return true;
        }
        tokio::time::timeout(bound, notified).await.is_ok()
    }
}

/// The event id of a document. With `seq`, the `seq` itself (what workers and
/// clients expect). Without, a digest of the document's bytes rather than a
/// counter: a counter would restart whenever a feed is rebuilt (last watcher
/// gone, restart, another instance) and a client's old id could then name a
/// different state and suppress it. A digest names one content everywhere, so
/// an id the client holds suppresses only the state it has already seen.
pub fn event_id(doc: &ProgressDoc) -> Box<str> {
    use sha2::{Digest, Sha256};
    match doc.seq {
        Some(seq) => seq.to_string().into_boxed_str(),
        None => {
            let digest = Sha256::digest(&doc.json);
            let mut id = String::with_capacity(17);
            id.push('h');
            for b in &digest[..8] {
                id.push_str(&format!("{b:02x}"));
            }
            id.into_boxed_str()
        }
    }
}

impl Update {
    pub fn encode(job: &JobId, doc: ProgressDoc, source: Source) -> Update {
        Update {
            job: job.clone(),
            id: event_id(&doc),
            doc,
            source,
            received: std::time::Instant::now(),
            wire: Wire::default(),
            durable: Durable::default(),
        }
    }

    /// A terminal document: `done` follows it, and the stream ends.
    pub fn is_done(&self) -> bool {
        self.doc.terminal
    }

    /// `head`, the event id, `mid`, the document, `tail`: a transport's
    /// `progress` event around the shared document bytes.
    pub fn splice(&self, head: &[u8], mid: &[u8], tail: &[u8]) -> Bytes {
        let json = &self.doc.json;
        let mut out = BytesMut::with_capacity(
            head.len() + self.id.len() + mid.len() + json.len() + tail.len(),
        );
        for part in [head, self.id.as_bytes(), mid, json, tail] {
            out.put_slice(part);
        }
        out.freeze()
    }

    #[cfg(test)]
    pub fn for_tests(raw: &str) -> Update {
        let job = JobId::parse("j1").expect("a valid job id");
        Update::encode(&job, ProgressDoc::for_tests(raw), Source::RedisKey)
    }

    /// The status `done` reports (empty where the document has none).
    pub fn status(&self) -> &str {
        self.doc.status.as_deref().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(raw: &str) -> ProgressDoc {
        ProgressDoc::for_tests(raw)
    }

    #[tokio::test]
    async fn durable_wait_wakes_on_settle_and_is_bounded() {
        let job = JobId::parse("j1").unwrap();
        let u = std::sync::Arc::new(Update::encode(
            &job,
            doc(r#"{"status":"completed"}"#),
            Source::RedisKey,
        ));
        assert!(
            !u.durable.wait(Duration::from_millis(20)).await,
            "unsettled: times out"
        );
        let waiter = tokio::spawn({
            let u = u.clone();
            async move { u.durable.wait(Duration::from_secs(3600)).await }
        });
        tokio::task::yield_now().await;
        u.durable.settle();
        assert!(waiter.await.unwrap());
        assert!(u.durable.wait(Duration::ZERO).await, "settled: at once");
    }

    #[test]
    fn ids_without_seq_name_the_content_not_a_counter() {
        let a = event_id(&doc(r#"{"p":1}"#));
        assert_eq!(a, event_id(&doc(r#"{"p":1}"#)), "same bytes, same id");
        assert_ne!(a, event_id(&doc(r#"{"p":2}"#)));
        assert!(a.starts_with('h') && a.len() == 17);
        assert_eq!(&*event_id(&doc(r#"{"seq":7}"#)), "7");
    }
}
