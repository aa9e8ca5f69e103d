//! [`Router`]: where the [`Producer`](crate::Producer) sends a record — straight to its
//! partition's leader when the cluster's metadata names one, else to the seeds (whose
//! node forwards it, one hop more).
//!
//! The metadata is the cluster's own view, `GET /v1/cluster`: every partition of every
//! topic with its leader, and every node's advertised HTTP URL and liveness. One request
//! gives both a topic's partition count and its leaders. It is fetched again when it is
//! older than [`ProducerConfig::metadata_max_age`](crate::ProducerConfig), or after a
//! send met a dead node or an unavailable partition ([`Router::invalidate`]), at most once
//! per [`MIN_REFRESH_INTERVAL`]: a cluster in trouble is not flooded with metadata reads.
//!
//! A stale leader costs only a hop (any node forwards to the real leader), so a missed
//! leadership change is a slowdown, never a misplaced record. Partition choice follows
//! the server's: an explicit partition as given; a key by the one stable hash
//! ([`psubd_wire::partitioning::partition_of_key`], the function the server uses); no
//! key but an id: the same hash of the id, left to the server too (so a record resent
//! with its id reaches the partition that remembers it); neither: one partition for all
//! of a topic's unkeyed records of a batch, the next partition for the next batch (sticky
//! round-robin, so a batch is one append).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use psubd_wire::partitioning::partition_of_key;
use psubd_wire::{ClusterInfo, NewRecord};
use tokio::time::Instant;

use crate::client::{node_url, Client};

/// Least time between two metadata reads.
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(250);

/// How long a node that a send could not reach is passed over (its records go to the
/// seeds): the metadata may call a just-killed leader alive and leader for a moment.
pub const AVOID_UNREACHABLE: Duration = Duration::from_secs(1);

/// A topic's partitions as the metadata shows them.
#[derive(Debug, Default)]
struct TopicRoutes {
    /// The leader's base URL of each partition, `None` when it has no live leader.
    leaders: Vec<Option<String>>,
    /// The partition of the next batch's unkeyed records.
    next_unkeyed: u32,
}

#[derive(Debug, Default)]
struct Table {
    topics: HashMap<String, TopicRoutes>,
    /// When the last read was made (successful or not).
    read_at: Option<Instant>,
    /// An error asked for a fresh read.
    stale: bool,
    /// Nodes a send could not reach, and until when they are passed over.
    unreachable: HashMap<String, Instant>,
}

/// The producer's view of where partitions live; shared by its sending tasks.
#[derive(Debug)]
pub(crate) struct Router {
    client: Client,
    max_age: Duration,
    table: Mutex<Table>,
    /// One metadata read at a time.
    reading: tokio::sync::Mutex<()>,
}

impl Router {
    pub(crate) fn new(client: Client, max_age: Duration) -> Self {
        Self {
            client,
            max_age,
            table: Mutex::new(Table::default()),
            reading: tokio::sync::Mutex::new(()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table inconsistent (each update
        // is one assignment), so a poisoned lock is used as it is.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks for a fresh metadata read before the next routing (rate-limited).
    pub(crate) fn invalidate(&self) {
        self.table().stale = true;
    }

    /// A send to `node` failed on the way: pass it over for [`AVOID_UNREACHABLE`], and
    /// read the metadata again.
    pub(crate) fn unreachable(&self, node: &str) {
        let mut table = self.table();
        table.stale = true;
        table
            .unreachable
            .insert(node.to_string(), Instant::now() + AVOID_UNREACHABLE);
    }

    /// Whether a read is due: never made, too old, or asked for — and not within
    /// [`MIN_REFRESH_INTERVAL`] of the last.
    fn read_due(&self, now: Instant) -> bool {
        let table = self.table();
        match table.read_at {
            None => true,
            Some(at) => {
                let age = now.saturating_duration_since(at);
                age >= MIN_REFRESH_INTERVAL && (table.stale || age >= self.max_age)
            }
        }
    }

    /// Reads the metadata again when it is due. A failed read leaves the old routes (or
    /// none: records then go to the seeds) and is not repeated within the interval.
    pub(crate) async fn refresh_if_due(&self) {
        if !self.read_due(Instant::now()) {
            return;
        }
        let _reading = self.reading.lock().await;
        // Another task may have read it while this one waited.
        if !self.read_due(Instant::now()) {
            return;
        }
        let info = self.client.admin().cluster().await.ok();
        let mut table = self.table();
        table.read_at = Some(Instant::now());
        table.stale = false;
        if let Some(info) = info {
            let previous = std::mem::take(&mut table.topics);
            table.topics = routes_of(&info, previous);
        }
    }

    /// Chooses the partition of each record of `topic` (setting it on unkeyed records, so
    /// the node stores them where they were routed) and returns each record's leader URL:
    /// `None` when unknown (the record goes to the seeds).
    pub(crate) fn route<'a>(
        &self,
        topic: &str,
        records: impl Iterator<Item = &'a mut NewRecord>,
    ) -> Vec<Option<String>> {
        let mut table = self.table();
        let now = Instant::now();
        table.unreachable.retain(|_, until| *until > now);
        let Table {
            topics,
            unreachable,
            ..
        } = &mut *table;
        let Some(routes) = topics.get_mut(topic) else {
            return records.map(|_| None).collect();
        };
        let count = u32::try_from(routes.leaders.len()).unwrap_or(u32::MAX);
        let unkeyed = routes.next_unkeyed % count.max(1);
        let mut used_unkeyed = false;
        let out = records
            .map(|record| {
                // An id places an unkeyed record as a key does, on the server too.
                let key_or_id = record.key.as_ref().or(record.id.as_ref());
                let partition = match (record.partition, key_or_id) {
                    (Some(p), _) => p,
                    (None, Some(key_or_id)) => partition_of_key(key_or_id.as_bytes(), count),
                    (None, None) => {
                        used_unkeyed = true;
                        record.partition = Some(unkeyed);
                        unkeyed
                    }
                };
                routes
                    .leaders
                    .get(partition as usize)
                    .cloned()
                    .flatten()
                    .filter(|node| !unreachable.contains_key(node))
            })
            .collect();
        if used_unkeyed {
            routes.next_unkeyed = unkeyed.wrapping_add(1);
        }
        out
    }
}

/// The routes in `info`: for each topic whose partitions are all listed (0..n), each
/// partition's leader URL when the leader is alive and advertises a usable URL.
/// `previous` carries each topic's unkeyed rotation over.
fn routes_of(
    info: &ClusterInfo,
    mut previous: HashMap<String, TopicRoutes>,
) -> HashMap<String, TopicRoutes> {
    let urls: HashMap<u64, String> = info
        .nodes
        .iter()
        .filter(|n| n.alive)
        .filter_map(|n| Some((n.id, node_url(n.http.as_deref()?).ok()?)))
        .collect();
    let mut placements: HashMap<&str, Vec<(u32, Option<u64>)>> = HashMap::new();
    for p in &info.partitions {
        placements
            .entry(p.topic.as_str())
            .or_default()
            .push((p.partition, p.leader));
    }
    let mut topics = HashMap::new();
    for (topic, mut partitions) in placements {
        partitions.sort_unstable_by_key(|(p, _)| *p);
        let complete = partitions
            .iter()
            .enumerate()
            .all(|(i, (p, _))| *p as usize == i);
        if !complete {
            continue;
        }
        let leaders = partitions
            .iter()
            .map(|(_, leader)| leader.and_then(|id| urls.get(&id).cloned()))
            .collect();
        let next_unkeyed = previous.remove(topic).map_or(0, |r| r.next_unkeyed);
        topics.insert(
            topic.to_string(),
            TopicRoutes {
                leaders,
                next_unkeyed,
            },
        );
    }
    topics
}

#[cfg(test)]
mod tests {
    use super::*;
    use psubd_wire::{ClusterNode, PartitionPlacement};

    fn node(id: u64, alive: bool) -> ClusterNode {
        ClusterNode {
            id,
            raft: format!("127.0.0.1:{}", 9000 + id),
            http: Some(format!("http://127.0.0.1:{}/", 8000 + id)),
            alive,
            state: "active".into(),
        }
    }

    fn placement(topic: &str, partition: u32, leader: Option<u64>) -> PartitionPlacement {
        PartitionPlacement {
            topic: topic.into(),
            partition,
            replicas: vec![1, 2, 3],
            leader,
        }
    }

    fn router_with(info: &ClusterInfo) -> Router {
        let router = Router::new(
            Client::new(["http://127.0.0.1:1"]).expect("valid seed"),
            Duration::from_secs(30),
        );
        router.table().topics = routes_of(info, HashMap::new());
        router
    }

    #[test]
    fn records_route_to_live_leaders_by_the_servers_partition_choice() {
        let info = ClusterInfo {
            node_id: 1,
            controller_leader: Some(1),
            nodes: vec![node(1, true), node(2, true), node(3, false)],
            partitions: vec![
                placement("t", 2, Some(3)),
                placement("t", 0, Some(1)),
                placement("t", 1, Some(2)),
                // A topic missing a partition in this view is not routed at all.
                placement("gap", 1, Some(1)),
            ],
        };
        let router = router_with(&info);
        let key = "alice";
        let key_partition = partition_of_key(key.as_bytes(), 3);
        let mut records = [
            NewRecord::new(1).key(key),
            NewRecord::new(2).partition(0),
            NewRecord::new(3).partition(2),
            NewRecord::new(4),
            NewRecord::new(5),
            NewRecord::new(6).id("order-17"),
        ];
        let leaders = router.route("t", records.iter_mut());
        let url = |id: u64| Some(format!("http://127.0.0.1:{}", 8000 + id));
        let leader_of = |p: u32| if p == 2 { None } else { url(u64::from(p) + 1) };
        assert_eq!(leaders[0], leader_of(key_partition));
        assert_eq!(
            records[0].partition, None,
            "a keyed record is left to the server"
        );
        assert_eq!(leaders[1], url(1));
        assert_eq!(leaders[2], None, "the leader of partition 2 is not alive");
        // Unkeyed records of one batch share a partition; the next batch takes the next.
        assert_eq!(records[3].partition, Some(0));
        assert_eq!(records[4].partition, Some(0));
        // An unkeyed record with an id goes where the server puts it: by its id's hash.
        assert_eq!(
            leaders[5],
            leader_of(partition_of_key("order-17".as_bytes(), 3))
        );
        assert_eq!(
            records[5].partition, None,
            "the id's partition is the server's"
        );
        let mut next = [NewRecord::new(6)];
        assert_eq!(router.route("t", next.iter_mut()), vec![url(2)]);
        assert_eq!(next[0].partition, Some(1));

        // A node a send could not reach is passed over for a while.
        router.unreachable(&format!("http://127.0.0.1:{}", 8002));
        let mut after = [NewRecord::new(8).partition(1)];
        assert_eq!(router.route("t", after.iter_mut()), vec![None]);

        let mut gap = [NewRecord::new(7)];
        assert_eq!(router.route("gap", gap.iter_mut()), vec![None]);
        assert_eq!(
            gap[0].partition, None,
            "unknown routes leave the choice to the server"
        );
    }
}
