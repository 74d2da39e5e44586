//! One accepted job update and the cache of its wire forms: each transport
//! encodes an update ONCE (the first watcher that sends it) and every other
//! watcher shares those bytes. The encoders live with their transport
//! (`stream::sse`, `stream::ws`), as do the small per-connection control events.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::json;
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
    /// The forms of multi-job streams, built on first use: once per job
    /// update however many lists and groups watch the job, and never for a
    /// job only single-job streams watch.
    many: OnceLock<ManyForms>,
}

/// One update as multi-job streams send it, apart from each connection's
/// cursor (`id:` of SSE, `"cursor"` of WebSocket frames).
#[derive(Debug)]
pub struct ManyForms {
    /// SSE `data:` of `progress`: `{"job_id":"A","id":"42","document":{…}}`.
    pub data: Bytes,
    /// The WebSocket `progress` frame up to its closing brace:
    /// `{"type":"progress","job_id":"A","id":"42","document":{…}` — the
    /// connection adds `,"cursor":"…"}`.
    pub ws_open: Bytes,
    /// The WebSocket `done` frame up to its closing brace, when terminal.
    pub ws_done_open: Option<Bytes>,
}

/// One cache slot per transport encoding, filled by the transport's own encoder
/// (`stream::sse::frames`, `stream::ws::frames`) the first time a watcher sends
/// the update. Another encoding is another slot here and an encoder with its
/// transport.
#[derive(Debug, Default)]
pub struct Wire {
    pub sse: OnceLock<Frames>,
    pub ws: OnceLock<Frames>,
    /// The SSE `progress` event framed as one HTTP/1.1 chunk: what a feed
    /// writes to each of its direct sockets, one `write()` each.
    pub sse_chunk: OnceLock<Bytes>,
    /// The WebSocket `progress` text frame, header included (server frames
    /// are not masked, so one frame serves every client).
    pub ws_frame: OnceLock<Bytes>,
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
            many: OnceLock::new(),
        }
    }

    /// The multi-job forms of this update of `job`, encoded on first use.
    /// Job ids and event ids are plain ASCII without quotes or escapes (their
    /// parsers allow nothing else), so they are spliced in as they are.
    pub fn many(&self, job: &JobId) -> &ManyForms {
        self.many.get_or_init(|| {
            let head = |kind: &str| {
                let mut b = BytesMut::with_capacity(self.doc.json.len() + 64 + job.as_str().len());
                b.put_slice(kind.as_bytes());
                b.put_slice(b"\"job_id\":\"");
                b.put_slice(job.as_str().as_bytes());
                b.put_slice(b"\",\"id\":\"");
                b.put_slice(self.id.as_bytes());
                b.put_slice(b"\",\"document\":");
                b.put_slice(&self.doc.json);
                b
            };
            let mut data = head("{");
            data.put_slice(b"}");
            let ws_open = head("{\"type\":\"progress\",");
            let ws_done_open = self.doc.terminal.then(|| {
                let status = self.doc.status.clone().unwrap_or_default();
                let full =
                    json!({"type": "done", "job_id": job.as_str(), "status": status}).to_string();
                Bytes::from(full.strip_suffix('}').unwrap_or(&full).to_owned())
            });
            ManyForms {
                data: data.freeze(),
                ws_open: ws_open.freeze(),
                ws_done_open,
            }
        })
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

/// A job that went silent: no new state for its stall period. Encoded once
/// by the job's timer for every stream watching it; the next state clears it.
#[derive(Debug)]
pub struct Stalled {
    pub seconds_since_update: u64,
    /// `event: stalled` with `{"job_id","seconds_since_update"}` (SSE, single and multi).
    pub sse: Bytes,
    /// `{"event":"stalled",…}` (single-job WebSocket).
    pub ws: Bytes,
    /// `{"type":"stalled",…}` (multi-job WebSocket).
    pub ws_many: Bytes,
}

impl Stalled {
    pub fn encode(job: &JobId, seconds_since_update: u64) -> Stalled {
        let data = json!({"job_id": job.as_str(), "seconds_since_update": seconds_since_update});
        let tagged = |key: &str| {
            let mut v = json!({key: "stalled"});
            if let (Some(obj), Some(d)) = (v.as_object_mut(), data.as_object()) {
                obj.extend(d.clone());
            }
            Bytes::from(v.to_string())
        };
        Stalled {
            seconds_since_update,
            sse: Bytes::from(format!("event: stalled\ndata: {data}\n\n")),
            ws: tagged("event"),
            ws_many: tagged("type"),
        }
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

    #[test]
    fn multi_job_forms_wrap_the_document_and_name_the_job() {
        let job = JobId::parse("j1").unwrap();
        let u = Update::encode(
            &job,
            doc(r#"{"seq":4,"status":"failed"}"#),
            Source::RedisKey,
        );
        let m = u.many(&job);
        let data: serde_json::Value = serde_json::from_slice(&m.data).unwrap();
        assert_eq!(
            data,
            json!({"job_id":"j1","id":"4","document":{"seq":4,"status":"failed"}})
        );
        let mut frame = m.ws_open.to_vec();
        frame.extend_from_slice(br#","cursor":"c"}"#);
        let frame: serde_json::Value = serde_json::from_slice(&frame).unwrap();
        assert_eq!(frame["type"], "progress");
        assert_eq!(frame["document"]["seq"], 4);
        let mut done = m.ws_done_open.clone().unwrap().to_vec();
        done.extend_from_slice(br#","cursor":"c"}"#);
        let done: serde_json::Value = serde_json::from_slice(&done).unwrap();
        assert_eq!(
            done,
            json!({"type":"done","job_id":"j1","status":"failed","cursor":"c"})
        );
        assert!(std::ptr::eq(m, u.many(&job)), "encoded once");
    }

    #[test]
    fn stalled_is_encoded_for_every_stream_kind() {
        let s = Stalled::encode(&JobId::parse("j1").unwrap(), 61);
        assert_eq!(
            &s.sse[..],
            b"event: stalled\ndata: {\"job_id\":\"j1\",\"seconds_since_update\":61}\n\n"
        );
        let ws: serde_json::Value = serde_json::from_slice(&s.ws).unwrap();
        assert_eq!(
            ws,
            json!({"event":"stalled","job_id":"j1","seconds_since_update":61})
        );
        let many: serde_json::Value = serde_json::from_slice(&s.ws_many).unwrap();
        assert_eq!(many["type"], "stalled");
    }
}
