//! Connection limits: `JOBCAST_MAX_CONNECTIONS` open streams
//! overall and `JOBCAST_MAX_CONNECTIONS_PER_USER` per `sub`. A stream holds a
//! [`ConnGuard`] for its whole life; dropping it gives the slot back and keeps
//! the open-connections gauge true.

pub mod rate;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;

use crate::stream::Transport;

/// Why a connection slot was refused; the HTTP edge answers `429`.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum LimitError {
    #[error("the gateway holds its limit of {0} open streams; retry later")]
    MaxConnections(usize),
    #[error("you hold {0} open streams, the per-user limit; close one first")]
    MaxPerUser(usize),
    #[error(
        "new connections arrive faster than this gateway admits (JOBCAST_MAX_CONNECT_RATE); retry in {retry_after_secs} s"
    )]
    ConnectRate { retry_after_secs: u64 },
}

pub struct Limits {
    max_total: usize,
    /// 0: no per-user limit.
    max_per_user: usize,
    open: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_user: HashMap<Arc<str>, usize>,
}

pub struct ConnGuard {
    limits: Arc<Limits>,
    user: Arc<str>,
    transport: Transport,
}

impl Limits {
    pub fn new(max_total: usize, max_per_user: usize) -> Arc<Self> {
        Arc::new(Limits {
            max_total,
            max_per_user,
            open: Mutex::new(Counts::default()),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        crate::sync::lock(&self.open)
    }

    pub fn acquire(
        self: &Arc<Self>,
        user: &str,
        transport: Transport,
    ) -> Result<ConnGuard, LimitError> {
        let mut c = self.counts();
        if c.total >= self.max_total {
            metrics::counter!("jobcast_connections_refused_total", "reason" => "max_connections")
                .increment(1);
            return Err(LimitError::MaxConnections(self.max_total));
        }
        let user: Arc<str> = Arc::from(user);
        let mine = c.per_user.get(&user).copied().unwrap_or(0);
        if self.max_per_user > 0 && mine >= self.max_per_user {
            metrics::counter!("jobcast_connections_refused_total", "reason" => "max_per_user")
                .increment(1);
            return Err(LimitError::MaxPerUser(self.max_per_user));
        }
        c.total += 1;
        *c.per_user.entry(user.clone()).or_insert(0) += 1;
        drop(c);
        metrics::gauge!("jobcast_connections", "transport" => transport.as_str()).increment(1.0);
        metrics::counter!("jobcast_connections_opened_total", "transport" => transport.as_str())
            .increment(1);
        Ok(ConnGuard {
            limits: self.clone(),
            user,
            transport,
        })
    }
}

impl std::fmt::Debug for ConnGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnGuard")
            .field("user", &self.user)
            .field("transport", &self.transport)
            .finish()
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut c = self.limits.counts();
        c.total -= 1;
        if let Some(n) = c.per_user.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                c.per_user.remove(&self.user);
            }
        }
        drop(c);
        metrics::gauge!("jobcast_connections", "transport" => self.transport.as_str())
            .decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_refuse_then_recover() {
        let l = Limits::new(3, 2);
        let a = l.acquire("u", Transport::Sse).unwrap();
        let _b = l.acquire("u", Transport::Ws).unwrap();
        assert_eq!(
            l.acquire("u", Transport::Sse).unwrap_err(),
            LimitError::MaxPerUser(2)
        );
        let _c = l.acquire("v", Transport::Sse).unwrap();
        assert_eq!(
            l.acquire("w", Transport::Sse).unwrap_err(),
            LimitError::MaxConnections(3)
        );
        drop(a);
        assert!(l.acquire("u", Transport::Sse).is_ok());
    }
}
