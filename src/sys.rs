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
/// in force.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}
