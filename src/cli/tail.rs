//! `jobcast tail JOB`: follows one job over the gateway's own SSE route and
//! prints each state as one JSON line on stdout, as it arrives. A dropped
//! connection is resumed with `Last-Event-ID` (so no state is printed twice)
//! after the server's `retry:`; the command exits 0 after `done`, and non-zero
//! with the gateway's reason on `400`/`401`/`403`/`404`. Without `--token` it
//! mints a short admin token from `JWT_SECRET`, and mints a new one when the
//! stream ends with `token_expired`.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::StatusCode;

use crate::config::{Secret, Settings};
use crate::job::JobId;

/// Lifetime of a minted token; the stream ends at its `exp` and a new one is minted.
const MINTED_TOKEN_TTL_SECS: u64 = 600;
/// Bound on connecting and on the response head.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A stream that sends nothing (not even a `: ping`) for this long is dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Wait before the first reconnect, until the server's `retry:` says otherwise.
const DEFAULT_RETRY: Duration = Duration::from_secs(2);
/// Longest wait between two attempts.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// Attempts in a row that reach no stream before the command gives up.
const MAX_FAILED_ATTEMPTS: u32 = 10;

enum Token {
    Given(Secret),
    Minted(Secret),
}

impl Token {
    fn mint(s: &Settings) -> anyhow::Result<Token> {
        let token = super::mint_token(
            s,
            "jobcast-tail".into(),
            Vec::new(),
            vec!["admin".into()],
            Vec::new(),
            MINTED_TOKEN_TTL_SECS,
        )
        .context("without --token, tail mints an admin token from JWT_SECRET")?;
        Ok(Token::Minted(Secret::new(token)))
    }

    fn expose(&self) -> &str {
        match self {
            Token::Given(t) | Token::Minted(t) => t.expose(),
        }
    }
}

/// How one connection ended.
enum Ended {
    /// `done` was printed: the job is over.
    Done,
    /// The server ended the stream with `token_expired`.
    TokenExpired,
    /// The connection dropped (or went idle); `connected` was seen or not.
    Dropped { connected: bool },
}

pub async fn run(
    s: &Settings,
    job: &str,
    url: Option<String>,
    token: Option<Secret>,
) -> anyhow::Result<()> {
    let job = JobId::parse(job).with_context(|| format!("job id {job:?}"))?;
    let base = url.unwrap_or_else(|| default_url(s));
    let url = format!("{}/jobs/{job}/events", base.trim_end_matches('/'));
    let mut token = match token {
        Some(t) => Token::Given(t),
        None => Token::mint(s)?,
    };
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()?;
    let mut tail = Tail {
        last_id: None,
        retry: DEFAULT_RETRY,
    };
    let mut failed = 0u32;
    loop {
        match tail.follow(&client, &url, token.expose()).await? {
            Ended::Done => return Ok(()),
            Ended::TokenExpired => match token {
                Token::Minted(_) => token = Token::mint(s)?,
                Token::Given(_) => bail!("the token expired (pass a fresh --token)"),
            },
            Ended::Dropped { connected } => {
                failed = if connected { 0 } else { failed + 1 };
                if failed >= MAX_FAILED_ATTEMPTS {
                    bail!("{url}: no stream after {failed} attempts; giving up");
                }
                let wait = tail.backoff(failed);
                tracing::info!(?wait, last_id = ?tail.last_id, "stream dropped; resuming");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// `http://` + `JOBCAST_LISTEN`, with an unspecified address (`0.0.0.0`) as loopback.
fn default_url(s: &Settings) -> String {
    let mut addr = s.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}")
}

struct Tail {
    /// The id of the last state printed: sent as `Last-Event-ID` on a reconnect.
    last_id: Option<String>,
    /// The server's `retry:`.
    retry: Duration,
}

impl Tail {
    /// The server's `retry:` after a drop, doubled per attempt in a row that
    /// failed, capped, with ±20 % jitter.
    fn backoff(&self, failed: u32) -> Duration {
        let wait = self.retry.saturating_mul(1 << failed.min(5)).min(MAX_RETRY);
        wait.mul_f64(rand::random_range(0.8..1.2))
    }

    /// One connection: prints its states until it ends, and says how it ended.
    /// Refusals (4xx but 429) are errors: retrying cannot change them.
    async fn follow(
        &mut self,
        client: &reqwest::Client,
        url: &str,
        token: &str,
    ) -> anyhow::Result<Ended> {
        let mut req = client
            .get(url)
            .bearer_auth(token)
            .header("accept", "text/event-stream");
        if let Some(id) = &self.last_id {
            req = req.header("last-event-id", id);
        }
        let res = match tokio::time::timeout(CONNECT_TIMEOUT, req.send()).await {
            Ok(Ok(res)) => res,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot reach the gateway");
                return Ok(Ended::Dropped { connected: false });
            }
            Err(_) => {
                tracing::warn!("the gateway did not answer in {CONNECT_TIMEOUT:?}");
                return Ok(Ended::Dropped { connected: false });
            }
        };
        let status = res.status();
        if status == StatusCode::NO_CONTENT {
            // The job had ended and its last state was printed already.
            return Ok(Ended::Done);
        }
        if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
            let body: serde_json::Value = res.json().await.unwrap_or_default();
            bail!(
                "{status}: {} ({})",
                body["message"].as_str().unwrap_or("no reason given"),
                body["error"].as_str().unwrap_or("error")
            );
        }
        if !status.is_success() {
            tracing::warn!(%status, "the gateway refused the stream for now");
            if let Some(secs) = res
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
            {
                self.retry = Duration::from_secs(secs);
            }
            return Ok(Ended::Dropped { connected: false });
        }

        let mut events = res.bytes_stream().eventsource();
        let mut connected = false;
        let out = std::io::stdout();
        loop {
            let event = match tokio::time::timeout(IDLE_TIMEOUT, events.next()).await {
                Ok(Some(Ok(event))) => event,
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, "stream broken");
                    return Ok(Ended::Dropped { connected });
                }
                Ok(None) => return Ok(Ended::Dropped { connected }),
                Err(_) => {
                    tracing::warn!("nothing from the gateway in {IDLE_TIMEOUT:?}");
                    return Ok(Ended::Dropped { connected });
                }
            };
            if let Some(retry) = event.retry {
                self.retry = retry.min(MAX_RETRY);
            }
            match event.event.as_str() {
                "connected" => connected = true,
                "progress" => {
                    // One line per state, whatever the document's own layout.
                    let doc: serde_json::Value = serde_json::from_str(&event.data)
                        .context("a progress event that is not JSON")?;
                    let mut out = out.lock();
                    writeln!(out, "{doc}")?;
                    out.flush()?;
                    if !event.id.is_empty() {
                        self.last_id = Some(event.id);
                    }
                }
                "done" => return Ok(Ended::Done),
                "error" => {
                    let body: serde_json::Value =
                        serde_json::from_str(&event.data).unwrap_or_default();
                    match body["error"].as_str() {
                        Some("token_expired") => return Ok(Ended::TokenExpired),
                        Some(code) => bail!("the gateway ended the stream: {code}"),
                        None => bail!("the gateway ended the stream: {}", event.data),
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_url_is_the_listen_address_with_loopback_for_any() {
        let mut s = Settings::defaults();
        assert_eq!(default_url(&s), "http://127.0.0.1:8080");
        s.listen = "0.0.0.0:9000".parse().unwrap();
        assert_eq!(default_url(&s), "http://127.0.0.1:9000");
    }

    #[test]
    fn backoff_follows_retry_doubles_per_failure_and_is_capped() {
        let t = Tail {
            last_id: None,
            retry: Duration::from_millis(1000),
        };
        let first = t.backoff(0);
        assert!(first >= Duration::from_millis(800) && first <= Duration::from_millis(1200));
        let third = t.backoff(2);
        assert!(third >= Duration::from_millis(3200) && third <= Duration::from_millis(4800));
        assert!(t.backoff(30) <= MAX_RETRY.mul_f64(1.2));
    }
}
