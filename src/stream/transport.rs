//! How a watcher is served: the transports, and their label on connection metrics.

/// How a watcher is served; the `transport` label of connection metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Sse,
    Ws,
    Poll,
    /// `GET /jobs/{id}`: held while the snapshot is read, so a client that
    /// fires snapshots in a loop meets the same per-user limit as streams.
    Snapshot,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Ws => "ws",
            Transport::Poll => "poll",
            Transport::Snapshot => "snapshot",
        }
    }
}
