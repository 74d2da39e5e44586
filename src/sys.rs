//! Process limits: raise the open-file soft limit to the hard limit at start, so
//! one process can hold as many connections as the machine allows.

/// File descriptors kept back from streams for Redis, Postgres, logs and accepts.
pub const RESERVED_FDS: u64 = 256;
/// File descriptors never given to accepted sockets (of any kind, streams or
/// not): the Redis pool (32) and pub/sub connection, the Postgres pool and
/// LISTEN connection, logs, the self-test, with room to reconnect all of them.
/// Fewer than [`RESERVED_FDS`], so a client beyond the stream limit can still
/// be told `429`.
pub const SOCKET_RESERVED_FDS: u64 = 128;

/// Accepted sockets allowed open at once under an open-file limit of `fd_limit`.
pub fn max_sockets(fd_limit: u64) -> usize {
    fd_limit.saturating_sub(SOCKET_RESERVED_FDS).max(16) as usize
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit; returns the soft limit now
/// in force (1024, the usual default, if it cannot be read).
pub fn raise_nofile_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX)
        .or_else(|_| rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft))
        .unwrap_or(1024)
}
