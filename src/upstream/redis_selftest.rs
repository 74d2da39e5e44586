//! Start-up self-test of what the Redis user may do: SUBSCRIBE to a keyspace
//! channel and to a job channel, and run the state-read script. An ACL user
//! without one of these rights would otherwise start "fine" and never deliver a
//! thing, so jobcast refuses to start and names the missing permission. A Redis
//! that is down or slow is not a reason to refuse: streams recover when it
//! returns, so that only gets a warning. (CONFIG rights are optional and
//! reported by the keyspace check.)

use std::time::Duration;

use tracing::{info, warn};

use crate::job::JobId;
use crate::upstream::redis_reader::RedisReader;

/// The job whose channels and key the self-test touches; nothing is written.
pub const PROBE_JOB: &str = "jobcast-selftest";
/// Bound on each probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum PermissionError {
    #[error(
        "the Redis user may not SUBSCRIBE to `{channel}` (missing ACL channel permission: \
         grant `&{pattern}` or `allchannels`): {detail}"
    )]
    Channel {
        channel: String,
        pattern: String,
        detail: String,
    },
    #[error(
        "the Redis user may not run jobcast's read script (missing ACL command permission: \
         grant `+evalsha +script|load`, or `+@scripting`): {detail}"
    )]
    Scripting { detail: String },
}

/// Runs the probes; `Err` only for a permission Redis refused.
pub async fn check(
    client: Option<redis::Client>,
    reader: &RedisReader,
    keyspace_prefix: &str,
    prefix: &str,
) -> Result<(), PermissionError> {
    let probes = [
        (
            format!("{keyspace_prefix}{PROBE_JOB}"),
            format!("{keyspace_prefix}*"),
        ),
        (format!("{prefix}{PROBE_JOB}"), format!("{prefix}*")),
    ];
    // A plain connection, not the pub/sub one: redis-rs's pub/sub sink drops
    // the error a refused SUBSCRIBE gets, a plain command returns it. The
    // connection is in subscribed mode afterwards and is dropped.
    let connect = async {
        match &client {
            Some(client) => client.get_multiplexed_async_connection().await,
            None => Err(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "no reachable redis primary",
            ))),
        }
    };
    match tokio::time::timeout(PROBE_TIMEOUT, connect).await {
        Ok(Ok(mut conn)) => {
            for (channel, pattern) in probes {
                let mut cmd = redis::cmd("SUBSCRIBE");
                cmd.arg(&channel);
                let subscribe = cmd.query_async::<redis::Value>(&mut conn);
                match tokio::time::timeout(PROBE_TIMEOUT, subscribe).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) if e.code() == Some("NOPERM") => {
                        return Err(PermissionError::Channel {
                            channel,
                            pattern,
                            detail: e.to_string(),
                        });
                    }
                    Ok(Err(e)) => {
                        warn!(channel = %channel, error = %e, "redis self-test: SUBSCRIBE failed; carrying on");
                        break;
                    }
                    Err(_) => {
                        warn!(channel = %channel, "redis self-test: SUBSCRIBE got no answer; carrying on");
                        break;
                    }
                }
            }
        }
        Ok(Err(e)) => warn!(error = %e, "redis self-test: cannot connect; carrying on"),
        Err(_) => warn!("redis self-test: connect got no answer; carrying on"),
    }
    let probe = JobId::parse(PROBE_JOB).map_err(|e| PermissionError::Scripting {
        detail: e.to_string(),
    })?;
    match reader.read(&probe).await {
        Ok(_) => {
            info!("redis self-test passed: channels and the read script are allowed");
            Ok(())
        }
        Err(e) if e.is_permission_denied() => Err(PermissionError::Scripting {
            detail: e.to_string(),
        }),
        Err(e) => {
            warn!(error = %e, "redis self-test: the read script failed; carrying on");
            Ok(())
        }
    }
}
