//! The server's `notify-keyspace-events` flags: jobcast needs `K` (keyspace
//! channel), `$` (strings), `h` (hashes), `s` (sets: group membership), `g`
//! (del, expire...) and `x` (expired).
//! Checked at start and again every `JOBCAST_REDIS_CHECK_SECS`, because another
//! application may turn them off at any time (`CONFIG SET notify-keyspace-events
//! Ex`) and a restarted Redis forgets a CONFIG SET. Missing flags are added back
//! unless told not to; where CONFIG is refused (managed Redis) the state is
//! `unknown`. The state feeds `/readyz` and `jobcast_redis_keyspace_events`, and
//! only changes of it are logged. In a Redis Cluster every node is checked,
//! replicas too (notifications are node-local, and a promoted replica must
//! already have them); the state is the worst node's.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::upstream::redis_conn::{Commands, Conn};

/// Flags jobcast needs, as in the Redis documentation of keyspace events.
pub const NEEDED_FLAGS: &str = "K$hgsx";
/// Bound on one check (CONFIG GET, and CONFIG SET where needed).
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The flags `current` lacks, honouring `A` (alias for `g$lshzxet`).
pub fn missing_flags(current: &str) -> String {
    let has_all = current.contains('A');
    NEEDED_FLAGS
        .chars()
        .filter(|f| {
            let covered_by_a = has_all && *f != 'K';
            !(current.contains(*f) || covered_by_a)
        })
        .collect()
}

/// What the last check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyspaceEvents {
    /// Every needed flag is set (possibly by jobcast just now).
    On,
    /// Flags are missing and jobcast may not (or could not) set them.
    Off,
    /// CONFIG was refused or Redis did not answer.
    Unknown,
}

impl KeyspaceEvents {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyspaceEvents::On => "on",
            KeyspaceEvents::Off => "off",
            KeyspaceEvents::Unknown => "unknown",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => KeyspaceEvents::On,
            2 => KeyspaceEvents::Off,
            _ => KeyspaceEvents::Unknown,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            KeyspaceEvents::Unknown => 0,
            KeyspaceEvents::On => 1,
            KeyspaceEvents::Off => 2,
        }
    }
}

/// Not checked yet: the first check logs whatever it finds.
const NEVER_CHECKED: u8 = u8::MAX;

pub struct KeyspaceMonitor {
    commands: Commands,
    /// `JOBCAST_CONFIGURE_REDIS`: whether missing flags may be CONFIG SET.
    configure: bool,
    state: AtomicU8,
}

/// One check's finding, before it is logged.
enum Finding {
    On { flags: String },
    Fixed { flags: String },
    Missing { flags: String, missing: String },
    Failed(String),
}

impl Finding {
    /// How bad it is, for the worst of several nodes.
    fn rank(&self) -> u8 {
        match self {
            Finding::On { .. } => 0,
            Finding::Fixed { .. } => 1,
            Finding::Missing { .. } => 2,
            Finding::Failed(_) => 3,
        }
    }
}

impl KeyspaceMonitor {
    pub fn new(commands: Commands, configure: bool) -> Self {
        KeyspaceMonitor {
            commands,
            configure,
            state: AtomicU8::new(NEVER_CHECKED),
        }
    }

    /// What the last check found (`unknown` before the first).
    pub fn state(&self) -> KeyspaceEvents {
        KeyspaceEvents::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Checks the flags and, where allowed, adds the missing ones. Never fails:
    /// without keyspace events jobcast still serves channels, Postgres and the
    /// periodic re-read.
    pub async fn check(&self) -> KeyspaceEvents {
        let finding = match tokio::time::timeout(CHECK_TIMEOUT, self.inspect()).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => Finding::Failed(e.to_string()),
            Err(_) => Finding::Failed(format!("no answer within {CHECK_TIMEOUT:?}")),
        };
        let state = match &finding {
            Finding::On { .. } | Finding::Fixed { .. } => KeyspaceEvents::On,
            Finding::Missing { .. } => KeyspaceEvents::Off,
            Finding::Failed(_) => KeyspaceEvents::Unknown,
        };
        let before = self.state.swap(state.to_u8(), Ordering::AcqRel);
        let changed = before != state.to_u8();
        metrics::gauge!("jobcast_redis_keyspace_events").set(if state == KeyspaceEvents::On {
            1.0
        } else {
            0.0
        });
        match finding {
            Finding::On { flags } if changed => {
                info!(flags = %flags, "redis keyspace notifications are on");
            }
            Finding::On { .. } => {}
            // Someone turned them off since the last check: always worth a line.
            Finding::Fixed { flags } => {
                info!(flags = %flags, "turned on redis keyspace notifications");
            }
            Finding::Missing { flags, missing } if changed => {
                warn!(flags = %flags, missing = %missing,
                    "redis notify-keyspace-events lacks flags and JOBCAST_CONFIGURE_REDIS=false: \
                     SET-only writes reach watchers only through the periodic re-read until \
                     `notify-keyspace-events {flags}{missing}` is set");
            }
            Finding::Failed(error) if changed => {
                warn!(error = %error,
                    "could not check or set redis `notify-keyspace-events` (CONFIG refused or redis down); \
                     set `notify-keyspace-events K$hgsx` on the server, else only job channels, Postgres \
                     and the periodic re-read push updates");
            }
            Finding::Missing { .. } | Finding::Failed(_) => {}
        }
        state
    }

    /// Inspects every node; the worst finding wins (a failure, then missing
    /// flags, then a fix, then all on).
    async fn inspect(&self) -> Result<Finding, anyhow::Error> {
        let mut worst: Option<Finding> = None;
        for (node, conn) in self.commands.every_node().await {
            let finding = match conn {
                Ok(conn) => match self.inspect_node(conn).await {
                    Ok(f) => f,
                    Err(e) => Finding::Failed(format!("{node}: {e}")),
                },
                Err(e) => Finding::Failed(format!("{node}: {e}")),
            };
            if worst.as_ref().is_none_or(|w| finding.rank() > w.rank()) {
                worst = Some(finding);
            }
        }
        worst.ok_or_else(|| anyhow::anyhow!("no redis node to check"))
    }

    async fn inspect_node(&self, mut conn: Conn) -> Result<Finding, anyhow::Error> {
        let (_, current): (String, String) = redis::cmd("CONFIG")
            .arg("GET")
            .arg("notify-keyspace-events")
            .query_async(&mut conn)
            .await?;
        let missing = missing_flags(&current);
        if missing.is_empty() {
            return Ok(Finding::On { flags: current });
        }
        if !self.configure {
            return Ok(Finding::Missing {
                flags: current,
                missing,
            });
        }
        let wanted = format!("{current}{missing}");
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg(&wanted)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(Finding::Fixed { flags: wanted })
    }

    /// Re-checks every `period` until `shutdown`.
    pub async fn run(&self, period: Duration, shutdown: CancellationToken) {
        let mut timer = tokio::time::interval(period);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timer.tick().await; // the first tick is now; start-up just checked
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = timer.tick() => {}
            }
            self.check().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_missing_flags() {
        assert_eq!(missing_flags(""), "K$hgsx");
        assert_eq!(missing_flags("KA"), "");
        assert_eq!(missing_flags("A"), "K");
        assert_eq!(missing_flags("Ex"), "K$hgs");
        assert_eq!(missing_flags("K$hgsx"), "");
    }
}
