//! Push subscriptions at work: every node runs the pushers of the push subscriptions
//! whose group it coordinates (it leads the group's offsets partition), and no others
//! (docs/architecture.md § Push subscriptions).
//!
//! - [`delivery`]: one POST — the body, its signature, the bounded HTTP client, backoff.
//! - [`pusher`]: one subscription's partition tasks: read, deliver, dead-letter, commit.
//!
//! The runner here looks every [`CHECK_EVERY`] at the subscriptions of the offsets
//! partitions this node leads (their settings are replicated state of those partitions)
//! and starts, restarts or stops pushers to match: a pusher runs for one (term, settings,
//! partitions); leadership moving, the settings changing or a subscribed topic's
//! partitions changing ends it. A new coordinator's pusher starts from the committed
//! offsets, so after a failover records are delivered again at worst, never skipped.

pub mod delivery;
pub mod pusher;

use std::collections::HashMap;
use std::time::Duration;

use psubd_actors::push::PushConfig;
use psubd_raft::GroupId;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::service::Service;

/// How often the runner compares the pushers running here with those due here: the
/// longest a push stays stopped after a failover, beyond the election itself.
pub const CHECK_EVERY: Duration = Duration::from_millis(500);

/// How long the runner waits for its pushers to stop at shutdown.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// A pusher running on this node, and what it was started for.
struct Running {
    term: u64,
    config: PushConfig,
    layout: Vec<GroupId>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// Starts this node's push runner; it stops when `shutdown` is cancelled.
pub fn spawn(service: Service, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(run(service, shutdown))
}

async fn run(service: Service, shutdown: CancellationToken) {
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut interval = tokio::time::interval(CHECK_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = interval.tick() => {}
        }
        let broker = service.edge.broker();
        let groups = broker.groups();
        let metadata = broker.metadata();
        let mut due: HashMap<String, _> = groups
            .led_push_subscriptions()
            .into_iter()
            .map(|led| {
                let targets = pusher::targets(&metadata, &led.config.topics);
                (led.group.clone(), (led, targets))
            })
            .collect();
        running.retain(|group, pusher| {
            let keep = !pusher.task.is_finished()
                && due.get(group).is_some_and(|(led, targets)| {
                    led.term == pusher.term
                        && led.config == pusher.config
                        && pusher::layout(targets) == pusher.layout
                });
            if !keep {
                debug!(group = %group, "stopping a pusher: leadership, settings or partitions changed");
                pusher.cancel.cancel();
            }
            keep
        });
        for (group, (led, targets)) in due.drain() {
            if running.contains_key(&group) {
                continue;
            }
            let cancel = shutdown.child_token();
            let entry = Running {
                term: led.term,
                config: led.config.clone(),
                layout: pusher::layout(&targets),
                cancel: cancel.clone(),
                task: tokio::spawn(pusher::run(
                    service.clone(),
                    groups.push_board().clone(),
                    led,
                    targets,
                    cancel,
                )),
            };
            running.insert(group, entry);
        }
    }
    for pusher in running.values() {
        pusher.cancel.cancel();
    }
    let all = futures::future::join_all(running.into_values().map(|p| p.task));
    let _ = tokio::time::timeout(STOP_WAIT, all).await;
}
