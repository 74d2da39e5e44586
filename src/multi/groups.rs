//! The group registry: group name → the jobs this gateway knows belong to it,
//! published through a `watch` channel to every group stream, with a watcher
//! count per group like the hub's per job. The first watcher of a group asks
//! the Redis listener to subscribe to the keyspace channel of the group's set
//! (`JOBCAST_GROUP_PREFIX{group}`), the last one to leave to unsubscribe.
//!
//! Membership only grows while a group is watched, from three sources: the
//! set's members (read at the first watcher and on every keyspace event of
//! the set), the Postgres rows whose `group_id` names the group (read at the
//! first watcher; NOTIFYs of rows add their job), and live documents whose
//! group field names it. A job belongs to one group; the union of what the
//! sources say is what the streams follow.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::debug;

use crate::job::JobId;
use crate::multi::jobset::Members;
use crate::multi::list::GroupName;
use crate::store::Store;
use crate::upstream::redis_listener::changes_value;
use crate::upstream::redis_reader::RedisReader;

/// Members kept per group: a stream carries at most
/// `JOBCAST_MAX_JOBS_PER_STREAM` of them anyway, and a set this large is a
/// writer that never lets members go.
pub const MAX_GROUP_MEMBERS: usize = 10_000;
/// Bound on one membership read (SMEMBERS, or the Postgres query).
const LOAD_TIMEOUT: Duration = Duration::from_secs(2);

/// What the registry asks of the Redis listener. Unbounded for the hub's
/// reason: `Drop` cannot wait, and the rate is bounded by connection churn.
#[derive(Debug)]
pub enum GroupCmd {
    Subscribe(GroupName),
    Unsubscribe(GroupName),
}

struct Entry {
    members: watch::Sender<Members>,
    watchers: usize,
}

pub struct Groups {
    entries: Mutex<HashMap<GroupName, Entry>>,
    upstream: mpsc::UnboundedSender<GroupCmd>,
    reader: RedisReader,
    store: Option<Store>,
    /// `JOBCAST_GROUP_PREFIX`.
    prefix: String,
}

/// A group stream's membership of a group: keeps the group's subscription
/// alive while held.
pub struct GroupWatch {
    groups: Arc<Groups>,
    pub group: GroupName,
    pub members: watch::Receiver<Members>,
}

impl Drop for GroupWatch {
    fn drop(&mut self) {
        self.groups.leave(&self.group);
    }
}

impl Groups {
    pub fn new(
        reader: RedisReader,
        store: Option<Store>,
        prefix: &str,
    ) -> (Arc<Groups>, mpsc::UnboundedReceiver<GroupCmd>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let groups = Groups {
            entries: Mutex::new(HashMap::new()),
            upstream: tx,
            reader,
            store,
            prefix: prefix.to_owned(),
        };
        (Arc::new(groups), rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<GroupName, Entry>> {
        crate::sync::lock(&self.entries)
    }

    /// The Redis key of the group's set.
    pub fn key(&self, group: &GroupName) -> String {
        format!("{}{}", self.prefix, group.as_str())
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Joins `group`, creating its entry (and its subscription) if this is
    /// the first watcher. Call [`Groups::load`] before reading the members.
    pub fn join(self: &Arc<Self>, group: GroupName) -> GroupWatch {
        let mut entries = self.lock();
        let entry = entries.entry(group.clone()).or_insert_with(|| {
            let _ = self.upstream.send(GroupCmd::Subscribe(group.clone()));
            metrics::gauge!("jobcast_active_groups").increment(1.0);
            Entry {
                members: watch::Sender::new(Arc::new(BTreeSet::new())),
                watchers: 0,
            }
        });
        entry.watchers += 1;
        let members = entry.members.subscribe();
        drop(entries);
        GroupWatch {
            groups: self.clone(),
            group,
            members,
        }
    }

    fn leave(&self, group: &GroupName) {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(group) else {
            return;
        };
        entry.watchers -= 1;
        if entry.watchers == 0 {
            entries.remove(group);
            let _ = self.upstream.send(GroupCmd::Unsubscribe(group.clone()));
            metrics::gauge!("jobcast_active_groups").decrement(1.0);
        }
    }

    pub fn is_watched(&self, group: &str) -> bool {
        self.lock().contains_key(group)
    }

    pub fn any_watched(&self) -> bool {
        !self.lock().is_empty()
    }

    /// Every watched group (the listener re-subscribes these after a reconnect).
    pub fn watched(&self) -> Vec<GroupName> {
        self.lock().keys().cloned().collect()
    }

    /// Adds jobs to a watched group; streams see only a real change.
    pub fn add_members(&self, group: &str, jobs: impl IntoIterator<Item = JobId>) {
        let entries = self.lock();
        let Some(entry) = entries.get(group) else {
            return;
        };
        entry.members.send_if_modified(|members| {
            let mut grown: Option<BTreeSet<JobId>> = None;
            for job in jobs {
                if members.contains(&job) || grown.as_ref().is_some_and(|g| g.contains(&job)) {
                    continue;
                }
                let set = grown.get_or_insert_with(|| (**members).clone());
                if set.len() >= MAX_GROUP_MEMBERS {
                    break;
                }
                set.insert(job);
            }
            match grown {
                Some(set) => {
                    *members = Arc::new(set);
                    true
                }
                None => false,
            }
        });
    }

    /// Reads a group's members again, off the caller's path.
    pub fn reload(self: &Arc<Self>, group: GroupName) {
        let groups = self.clone();
        tokio::spawn(async move { groups.load(&group).await });
    }

    /// A keyspace event `event` of the set of `group` (the channel's end):
    /// reads the set again if the group is still watched and the event may
    /// have added a member. Membership only grows, so removals and TTL
    /// changes are skipped: a writer's `EXPIRE` after each state costs
    /// nothing, and neither does the `SADD` of a member already there (Redis
    /// sends no event for it). Rows come through their NOTIFYs, not this.
    pub fn heard_set_event(self: &Arc<Self>, group: &str, event: &[u8]) {
        metrics::counter!("jobcast_redis_events_total", "source" => "group").increment(1);
        if may_add_members(event)
            && self.is_watched(group)
            && let Ok(group) = GroupName::parse(group)
        {
            let groups = self.clone();
            tokio::spawn(async move { groups.load_set(&group).await });
        }
    }

    /// Reads the group's members from the set and, with Postgres, the rows;
    /// adds what it finds. Failures leave the members as they are (the next
    /// keyspace event or NOTIFY brings them).
    pub async fn load(&self, group: &GroupName) {
        self.load_set(group).await;
        if let Some(store) = &self.store {
            match tokio::time::timeout(
                LOAD_TIMEOUT,
                store.group_jobs(group.as_str(), MAX_GROUP_MEMBERS),
            )
            .await
            {
                Ok(Ok(ids)) => self.add_members(group.as_str(), parse_ids(ids)),
                Ok(Err(e)) => debug!(group = %group, error = %e, "could not read the group's rows"),
                Err(_) => debug!(group = %group, "the group's rows did not come in time"),
            }
        }
    }

    /// Reads the group's set and adds its members.
    async fn load_set(&self, group: &GroupName) {
        let key = self.key(group);
        let from_set = tokio::time::timeout(LOAD_TIMEOUT, async {
            let mut conn = self.reader.commands().get().await.ok()?;
            redis::cmd("SMEMBERS")
                .arg(&key)
                .query_async::<Vec<String>>(&mut conn)
                .await
                .ok()
        })
        .await
        .ok()
        .flatten();
        match from_set {
            Some(ids) => self.add_members(group.as_str(), parse_ids(ids)),
            None => debug!(group = %group, "could not read the group's set"),
        }
    }
}

/// Whether a keyspace event of a set may have added a member.
fn may_add_members(event: &[u8]) -> bool {
    changes_value(event) && !matches!(event, b"srem" | b"spop")
}

/// Valid job ids only: a member that is not one can never be streamed.
fn parse_ids(ids: Vec<String>) -> impl Iterator<Item = JobId> {
    ids.into_iter().filter_map(|id| JobId::parse(&id).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_events_that_may_add_a_member_read_the_set_again() {
        for event in [
            "sadd",
            "sunionstore",
            "sinterstore",
            "sdiffstore",
            "rename_to",
            "restore",
        ] {
            assert!(may_add_members(event.as_bytes()), "{event}");
        }
        for event in [
            "expire",
            "persist",
            "srem",
            "spop",
            "del",
            "expired",
            "evicted",
            "rename_from",
        ] {
            assert!(!may_add_members(event.as_bytes()), "{event}");
        }
    }
}
