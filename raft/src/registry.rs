//! The registry of Raft groups on a node: [`RaftNode`] owns the storage, the transport and
//! every running group, routes inbound RPCs to their group by id, and shuts it all down in
//! order.
//!
//! Lock order: `shutdown_done` (async) before `lifecycle` (async) before `groups` (sync,
//! never held across an await). `lifecycle` serialises opening, closing and shutting down
//! groups, so a group is never built twice on the same storage.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use openraft::error::{Fatal, InitializeError, InstallSnapshotError, RaftError};
use openraft::BasicNode;
use tracing::Instrument;

use crate::config::RaftNodeConfig;
use crate::error::StorageIoError;
use crate::handover::Fences;
use crate::health::StorageHealth;
use crate::network::GroupNetworkFactory;
use crate::node_storage::NodeStorage;
use crate::peer_addr::PeerAddr;
use crate::quiet::QuietGroups;
use crate::runtime::{with_tick_gate, TickGate};
use crate::state::logic::GroupLogic;
use crate::state::schedule::{SnapshotRequests, SnapshotSchedule};
use crate::stats::GroupStats;
use crate::transport::codec::{PeerRequest, PeerResponse, RaftRequest, RaftResponse, Refusal};
use crate::transport::{Faults, InboundHandler, Transport, TransportError, TransportSetup};
use crate::types::{typ, GroupId, NodeId};

/// Handles forwarded application requests arriving over the transport (set by the api
/// layer, which knows what the bytes mean).
pub trait PeerService: Send + Sync + 'static {
    /// Answers one request from peer `from`. Failures are encoded in the answer bytes by
    /// the service; the transport only carries them.
    fn handle(&self, from: NodeId, body: Bytes) -> BoxFuture<'static, Bytes>;
}

/// Why a node-level operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RaftNodeError {
    /// The configuration breaks a rule (named in `reason`).
    #[error("invalid raft configuration: {reason}")]
    InvalidConfig {
        /// The rule broken.
        reason: String,
    },
    /// The storage failed: the node is broken.
    #[error("storage failed: {0}")]
    Storage(#[from] StorageIoError),
    /// The transport failed to start (listen address).
    #[error("transport failed: {0}")]
    Transport(#[from] TransportError),
    /// openraft could not start the group (its storage failed to load).
    #[error("group {group} failed to start: {source}")]
    GroupStart {
        /// The group.
        group: GroupId,
        /// openraft's error.
        source: Fatal<NodeId>,
    },
    /// openraft refused to initialize the group (for a reason other than "already
    /// initialized", which is ignored).
    #[error("group {group} could not be initialized: {message}")]
    Initialize {
        /// The group.
        group: GroupId,
        /// openraft's error.
        message: String,
    },
    /// The group's Raft task did not end cleanly at shutdown.
    #[error("group {group} did not shut down cleanly: {message}")]
    GroupShutdown {
        /// The group.
        group: GroupId,
        /// The join error.
        message: String,
    },
    /// The node is shutting down; no group may be opened.
    #[error("the raft node is shut down")]
    ShutDown,
}

/// Every Raft group on this node, the storage and the transport. Cheap to clone (Arc
/// inside).
#[derive(Clone)]
pub struct RaftNode {
    inner: Arc<Inner>,
}

struct Inner {
    config: RaftNodeConfig,
    raft_config: Arc<openraft::Config>,
    storage: NodeStorage,
    transport: Transport,
    faults: Arc<Faults>,
    /// The running groups. Invariant: a group is in the map from the moment its `Raft` is
    /// built until `close_group`/`shutdown` takes it out to shut it down.
    groups: RwLock<HashMap<GroupId, typ::Raft>>,
    /// Bumped whenever a group opens, so [`RaftNode::await_group`] waits for the event
    /// instead of polling the map.
    opened: tokio::sync::watch::Sender<u64>,
    service: RwLock<Option<Arc<dyn PeerService>>>,
    /// Serialises open / close / shutdown (held across awaits, hence async).
    lifecycle: tokio::sync::Mutex<()>,
    /// Set once shutdown starts: no group may open after it.
    closing: AtomicBool,
    /// True once shutdown finished; a second call waits for the first and returns.
    shutdown_done: tokio::sync::Mutex<bool>,
    /// Groups whose leadership this node is giving away (see [`crate::handover`]).
    fences: Fences,
    /// Which groups are quiet (see [`crate::quiet`]).
    quiet: QuietGroups,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropped without `shutdown()`: at least stop the transport's tasks.
        self.transport.cancel();
    }
}

impl Inner {
    fn read_groups(&self) -> std::sync::RwLockReadGuard<'_, HashMap<GroupId, typ::Raft>> {
        // Critical sections are single map operations: a poisoned map is still consistent.
        self.groups.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_groups(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<GroupId, typ::Raft>> {
        self.groups.write().unwrap_or_else(|e| e.into_inner())
    }

    fn service(&self) -> Option<Arc<dyn PeerService>> {
        self.service
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Routes inbound requests into the registry. Holds the registry weakly so the transport
/// (owned by the registry) does not keep it alive.
struct Router(Weak<Inner>);

impl InboundHandler for Router {
    fn handle(&self, from: NodeId, request: PeerRequest) -> BoxFuture<'static, PeerResponse> {
        let inner = self.0.upgrade();
        Box::pin(async move {
            let Some(inner) = inner else {
                return PeerResponse::Refused(Refusal::ShuttingDown);
            };
            match request {
                PeerRequest::Raft { group, rpc } => {
                    let raft = inner.read_groups().get(&group).cloned();
                    match raft {
                        Some(raft) => {
                            if matches!(rpc, RaftRequest::Vote(_)) {
                                // A peer stands for election: this replica must take part
                                // in what follows with its timers running.
                                inner.quiet.wake(group);
                            }
                            PeerResponse::Raft(serve_raft(&raft, rpc).await)
                        }
                        None => PeerResponse::Refused(Refusal::UnknownGroup { group }),
                    }
                }
                PeerRequest::GroupState { group } => match inner.storage.group_is_pristine(group) {
                    Ok(pristine) => PeerResponse::GroupState {
                        has_state: !pristine,
                    },
                    Err(err) => PeerResponse::Refused(Refusal::Storage {
                        message: err.to_string(),
                    }),
                },
                PeerRequest::Service(body) => match inner.service() {
                    Some(service) => PeerResponse::Service(service.handle(from, body).await),
                    None => PeerResponse::Refused(Refusal::NoService),
                },
                PeerRequest::AwaitGroup { group, wait_ms } => {
                    let wait = Duration::from_millis(u64::from(wait_ms)).min(MAX_GROUP_WAIT);
                    let running = RaftNode { inner }.await_group(group, wait).await.is_some();
                    PeerResponse::GroupRunning { running }
                }
            }
        })
    }
}

/// Slack beyond the asked wait before the asker's transport gives up on an
/// [`PeerRequest::AwaitGroup`].
const AWAIT_GROUP_SLACK: Duration = Duration::from_millis(500);

/// The longest a peer's [`PeerRequest::AwaitGroup`] is held: the asker's wait is
/// untrusted input, and a held request keeps a task alive.
const MAX_GROUP_WAIT: Duration = Duration::from_secs(10);

/// Hands one Raft RPC to its group and wraps the answer.
async fn serve_raft(raft: &typ::Raft, rpc: RaftRequest) -> RaftResponse {
    match rpc {
        RaftRequest::AppendEntries(req) => match raft.append_entries(req).await {
            Ok(resp) => RaftResponse::AppendEntries(resp),
            Err(err) => fatal_only(err),
        },
        RaftRequest::Vote(req) => match raft.vote(req).await {
            Ok(resp) => RaftResponse::Vote(resp),
            Err(err) => fatal_only(err),
        },
        RaftRequest::InstallSnapshot(req) => match raft.install_snapshot(req).await {
            Ok(resp) => RaftResponse::InstallSnapshot(resp),
            Err(RaftError::Fatal(fatal)) => RaftResponse::Fatal(fatal),
            Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m))) => {
                RaftResponse::SnapshotMismatch(m)
            }
        },
    }
}

fn fatal_only(err: RaftError<NodeId>) -> RaftResponse {
    match err {
        RaftError::Fatal(fatal) => RaftResponse::Fatal(fatal),
        RaftError::APIError(never) => match never {},
    }
}

/// Logs, once and at ERROR, a group whose Raft stopped on a fatal error (a storage
/// failure or a panic): the node's default log filter leaves openraft's own messages out,
/// since nearly all of them are routine (a peer down, a late vote answer). A group shut
/// down on purpose stops with `Fatal::Stopped` and is not reported.
async fn report_fatal(raft: typ::Raft, group: GroupId, health: StorageHealth) {
    let mut metrics = raft.metrics();
    loop {
        if let Err(fatal) = &metrics.borrow_and_update().running_state {
            match fatal {
                Fatal::Stopped => {}
                // The group could not write or read its storage: the node fail-stops.
                Fatal::StorageError(err) => health.fail(&StorageIoError::Engine {
                    op: "raft group storage",
                    source: std::io::Error::other(format!("group {group}: {err}")),
                }),
                other => {
                    tracing::error!(cause = %other, "raft group stopped on a fatal error");
                    health.group_stopped(group);
                }
            }
            return;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Counts the group's leader changes: each time its metrics show a known leader other than
/// the last one seen (the first since the group opened, another node, or the same node
/// elected again in a new term). Ends when the group shuts down. A watch hands over the
/// newest metrics only, so two changes closer together than this task runs count as one.
async fn count_leader_changes(raft: typ::Raft, stats: Arc<GroupStats>) {
    let mut metrics = raft.metrics();
    let mut last: Option<(NodeId, u64)> = None;
    loop {
        let seen = {
            let now = metrics.borrow_and_update();
            now.current_leader.map(|leader| (leader, now.current_term))
        };
        if let Some(seen) = seen {
            if last != Some(seen) {
                stats.leader_changed();
                last = Some(seen);
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Turns a group's snapshot requests (from its state machine's schedule) into openraft
/// triggers, until the state machine is dropped with the group or the group stops.
async fn ask_for_snapshots(raft: typ::Raft, mut requests: SnapshotRequests) {
    while requests.recv().await.is_some() {
        if raft.trigger().snapshot().await.is_err() {
            break;
        }
    }
}

/// Runs the quiet groups' passes (see [`crate::quiet`]) every `every`, until the node is
/// dropped or shuts down.
async fn quiet_passes(inner: Weak<Inner>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut quiet_before = 0;
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closing.load(Ordering::Acquire) {
            return;
        }
        let contact = inner.transport.contact();
        let quiet = inner
            .quiet
            .pass(&contact, |group| inner.fences.is_fenced(group));
        if quiet != quiet_before {
            tracing::debug!(quiet, "quiet groups");
            quiet_before = quiet;
        }
    }
}

impl RaftNode {
    /// Opens the storage, binds the listen address and starts dialing peers.
    ///
    /// # Errors
    /// [`RaftNodeError::InvalidConfig`] if the tuning breaks a rule or `id` is not among
    /// `peers`; [`RaftNodeError::Storage`] if the data directory cannot be opened;
    /// [`RaftNodeError::Transport`] if the listen address cannot be bound.
    pub async fn start(config: RaftNodeConfig) -> Result<RaftNode, RaftNodeError> {
        let raft_config = config
            .tuning
            .validate()
            .map_err(|reason| RaftNodeError::InvalidConfig { reason })?;
        if !config.peers.contains_key(&config.id) {
            return Err(RaftNodeError::InvalidConfig {
                reason: format!("node id {} must be one of the peers", config.id),
            });
        }
        let storage = NodeStorage::open_with_log_segment_bytes(
            &config.data_dir,
            config.cache_capacity_bytes,
            config.tuning.log_segment_bytes,
        )?;
        storage
            .health()
            .watch_free_space(config.data_dir.clone(), config.min_free_bytes);
        let listener = Transport::bind(config.listen).await?;
        let faults = Arc::new(Faults::default());
        let limits = config.tuning.transport_limits();
        let tuning = &config.tuning;
        let quiet_every = Duration::from_millis(tuning.quiet_check_ms);
        // openraft's leader lease is the longest election timeout (see `leader_lease`).
        let min_awake = Duration::from_millis(2 * tuning.election_max_ms + tuning.heartbeat_ms);
        let quorum_fresh = Duration::from_millis(tuning.election_min_ms);
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| {
            let transport = Transport::start(
                listener,
                TransportSetup {
                    id: config.id,
                    peers: config.peers.clone(),
                    limits,
                    faults: faults.clone(),
                    handler: Arc::new(Router(weak.clone())),
                    low_space: storage.health().low_space_watch(),
                    secret: config.cluster_secret.clone(),
                    tls: config.peer_tls.clone(),
                },
            );
            Inner {
                config,
                raft_config: Arc::new(raft_config),
                storage,
                transport,
                faults,
                groups: RwLock::new(HashMap::new()),
                opened: tokio::sync::watch::Sender::new(0),
                service: RwLock::new(None),
                lifecycle: tokio::sync::Mutex::new(()),
                closing: AtomicBool::new(false),
                shutdown_done: tokio::sync::Mutex::new(false),
                fences: Fences::default(),
                quiet: QuietGroups::new(min_awake, quorum_fresh),
            }
        });
        if quiet_every > Duration::ZERO {
            tokio::spawn(quiet_passes(Arc::downgrade(&inner), quiet_every));
        }
        tracing::info!(node = inner.config.id, listen = %inner.config.listen, "raft node started");
        Ok(RaftNode { inner })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.inner.config.id
    }

    pub(crate) fn fences(&self) -> &Fences {
        &self.inner.fences
    }

    /// How long after a leader's last heartbeat its followers refuse to vote for anyone
    /// else: openraft's leader lease, which is the longest election timeout.
    pub fn leader_lease(&self) -> Duration {
        Duration::from_millis(self.inner.config.tuning.election_max_ms)
    }

    /// Every known node of the cluster with its transport address, this node included: the
    /// configured ones and those learnt since ([`RaftNode::learn_peer`]).
    pub fn peers(&self) -> BTreeMap<NodeId, PeerAddr> {
        self.inner.transport.peers()
    }

    /// True when a peer at `addr` may join the cluster: the address is loopback, or peers
    /// authenticate (cluster secret or TLS), or the node runs with `--insecure`.
    pub fn may_add_peer_at(&self, addr: &PeerAddr) -> bool {
        let config = &self.inner.config;
        addr.is_loopback()
            || config.cluster_secret.is_set()
            || config.peer_tls.is_some()
            || config.insecure_peers
    }

    /// Records a node's transport address (one added to the cluster, or one that moved, as
    /// the controller state says): the transport dials it there from now on. Answers
    /// whether anything changed.
    pub fn learn_peer(&self, peer: NodeId, addr: PeerAddr) -> bool {
        self.inner.transport.learn_peer(peer, addr)
    }

    /// The node's data directory (disk usage reports walk it).
    pub fn data_dir(&self) -> &std::path::Path {
        &self.inner.config.data_dir
    }

    /// The node's storage (the api and actors read partition state through it).
    pub fn storage(&self) -> &NodeStorage {
        &self.inner.storage
    }

    /// True when this node has a live connection to `peer` on which it heard from it
    /// within the last two keepalives: the two are in contact now.
    pub fn in_contact_with(&self, peer: NodeId) -> bool {
        peer == self.id()
            || (self.inner.transport.connected_peers().contains(&peer)
                && !self.inner.transport.is_silent(peer))
    }

    /// The first of `nodes` known to be low on space, this node by its own measurement and
    /// peers by what their connection last told (see [`crate::health`]): a partition
    /// replicated there must not take new records now.
    pub fn low_space_among(&self, nodes: impl IntoIterator<Item = NodeId>) -> Option<NodeId> {
        let me = self.id();
        let health = self.inner.storage.health();
        nodes.into_iter().find(|node| {
            if *node == me {
                health.is_low_on_space()
            } else {
                self.inner.transport.peer_low_space(*node)
            }
        })
    }

    /// How many of this node's groups are quiet now: idle, not ticking, resting on the
    /// transport's keepalive (see [`crate::quiet`]).
    pub fn quiet_groups(&self) -> usize {
        self.inner.quiet.count()
    }

    /// How many quiet groups' openraft tick tasks are held still: as many as are quiet,
    /// unless openraft's tick task went unrecognised (see [`crate::runtime`]).
    pub fn held_tick_tasks(&self) -> usize {
        self.inner.quiet.held_tick_tasks()
    }

    /// The peers with a live transport connection right now (health reports, tests).
    pub fn connected_peers(&self) -> Vec<NodeId> {
        self.inner.transport.connected_peers()
    }

    /// Creates (or returns the running) group with its logic. `members` are the voters.
    /// If `initialize` and the group is pristine, calls `Raft::initialize(members)`: safe on
    /// several nodes with the same members (openraft's "already initialized" is ignored).
    /// When the group is already running, `logic` is dropped and the running group returned.
    ///
    /// # Errors
    /// [`RaftNodeError::InvalidConfig`] if a member is not a known peer;
    /// [`RaftNodeError::Storage`] / [`RaftNodeError::GroupStart`] if the group's storage
    /// cannot be loaded; [`RaftNodeError::Initialize`] if initialization is refused (the
    /// group is then closed again); [`RaftNodeError::ShutDown`] after `shutdown`.
    pub async fn open_group(
        &self,
        group: GroupId,
        logic: Box<dyn GroupLogic>,
        members: BTreeSet<NodeId>,
        initialize: bool,
    ) -> Result<typ::Raft, RaftNodeError> {
        let span = tracing::info_span!("open_group", node = self.id(), group);
        self.open_group_inner(group, logic, members, initialize)
            .instrument(span)
            .await
    }

    async fn open_group_inner(
        &self,
        group: GroupId,
        logic: Box<dyn GroupLogic>,
        members: BTreeSet<NodeId>,
        initialize: bool,
    ) -> Result<typ::Raft, RaftNodeError> {
        let inner = &self.inner;
        let _lifecycle = inner.lifecycle.lock().await;
        if inner.closing.load(Ordering::Acquire) {
            return Err(RaftNodeError::ShutDown);
        }
        if let Some(raft) = self.group(group) {
            return Ok(raft);
        }
        let nodes = self.member_nodes(group, &members).map_err(|e| *e)?;
        let pristine = inner.storage.group_is_pristine(group)?;
        let log_store = inner.storage.log_store(group)?;
        let (schedule, snapshot_requests) = SnapshotSchedule::new(&inner.config.tuning);
        let state_machine = inner
            .storage
            .state_machine(group, logic)?
            .with_snapshot_schedule(schedule);
        let network = GroupNetworkFactory::new(
            group,
            inner.transport.clone(),
            inner.config.tuning.max_append_bytes,
        );
        let tick_gate = Arc::new(TickGate::default());
        let raft = with_tick_gate(
            tick_gate.clone(),
            typ::Raft::new(
                inner.config.id,
                inner.raft_config.clone(),
                network,
                log_store,
                state_machine,
            ),
        )
        .await
        .map_err(|source| RaftNodeError::GroupStart { group, source })?;
        inner.write_groups().insert(group, raft.clone());
        inner.quiet.opened(group, &raft, tick_gate);
        inner.opened.send_modify(|count| *count += 1);
        tokio::spawn(ask_for_snapshots(raft.clone(), snapshot_requests).in_current_span());
        tokio::spawn(count_leader_changes(
            raft.clone(),
            inner.storage.group_stats_entry(group),
        ));
        tokio::spawn(
            report_fatal(raft.clone(), group, inner.storage.health().clone()).in_current_span(),
        );
        tracing::info!(pristine, "group opened");
        // A stopping node stands for nothing (`RaftNode::step_down`), new groups included:
        // a leadership won now could not be used and would wait for this node's exit.
        let stepping_down = self.is_stepping_down();
        if stepping_down {
            raft.runtime_config().elect(false);
        }

        if initialize && pristine && !stepping_down {
            match raft.initialize(nodes).await {
                Ok(()) => tracing::info!(members = ?members, "group initialized"),
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                    tracing::debug!("group already initialized");
                }
                Err(err) => {
                    inner.write_groups().remove(&group);
                    inner.quiet.closed(group);
                    if let Err(join) = raft.shutdown().await {
                        tracing::warn!(cause = %join, "group task failed while closing");
                    }
                    return Err(RaftNodeError::Initialize {
                        group,
                        message: err.to_string(),
                    });
                }
            }
        }
        Ok(raft)
    }

    /// The running group, if any.
    pub fn group(&self, group: GroupId) -> Option<typ::Raft> {
        self.inner.read_groups().get(&group).cloned()
    }

    /// The group once it runs on this node, waiting up to `wait` for it to open; `None`
    /// when it did not open in time.
    pub async fn await_group(&self, group: GroupId, wait: Duration) -> Option<typ::Raft> {
        let mut opened = self.inner.opened.subscribe();
        // The map is read under the watch's lock: an open is in the map before its bump.
        let waited = opened.wait_for(|_| self.group(group).is_some());
        tokio::time::timeout(wait, waited).await.ok()?.ok()?;
        self.group(group)
    }

    /// Initialises a new group once every other member runs it, so the first election's
    /// votes reach open replicas (a vote refused with "group not running" costs a whole
    /// election timeout). Members that cannot be reached, or that did not open the group
    /// within `wait`, are not waited for further: a majority elects without them.
    /// Initialising a group that already has state is a no-op.
    ///
    /// # Errors
    /// [`RaftNodeError::Initialize`] if openraft refuses for a reason other than "already
    /// initialised"; [`RaftNodeError::InvalidConfig`] if a member is not a known peer.
    pub async fn initialize_when_members_run(
        &self,
        group: GroupId,
        raft: &typ::Raft,
        members: &BTreeSet<NodeId>,
        wait: Duration,
    ) -> Result<(), RaftNodeError> {
        // A stopping node leaves the first election to the other members' fallback.
        if self.is_stepping_down() || !self.inner.storage.group_is_pristine(group)? {
            return Ok(());
        }
        let wait_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
        let asks = members.iter().filter(|m| **m != self.id()).map(|member| {
            self.inner.transport.request(
                *member,
                PeerRequest::AwaitGroup { group, wait_ms },
                wait + AWAIT_GROUP_SLACK,
            )
        });
        let answers = futures::future::join_all(asks).await;
        let waiting = answers
            .iter()
            .filter(|a| !matches!(a, Ok(PeerResponse::GroupRunning { running: true })))
            .count();
        tracing::debug!(group, not_running = waiting, "initialising a new group");
        let nodes = self.member_nodes(group, members).map_err(|e| *e)?;
        match raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(err) => Err(RaftNodeError::Initialize {
                group,
                message: err.to_string(),
            }),
        }
    }

    /// The members with their transport addresses, as openraft's membership wants them.
    /// The address there is informational (the transport looks peers up by id), so a member
    /// whose address this node has not learnt yet gets an empty one.
    ///
    /// # Errors
    /// [`RaftNodeError::InvalidConfig`] when a member id is 0 (no node has it).
    fn member_nodes(
        &self,
        group: GroupId,
        members: &BTreeSet<NodeId>,
    ) -> Result<BTreeMap<NodeId, BasicNode>, Box<RaftNodeError>> {
        let peers = self.peers();
        let mut nodes = BTreeMap::new();
        for member in members {
            if *member == 0 {
                return Err(Box::new(RaftNodeError::InvalidConfig {
                    reason: format!("group {group} has a member with id 0"),
                }));
            }
            let addr = peers
                .get(member)
                .map(PeerAddr::to_string)
                .unwrap_or_default();
            nodes.insert(*member, BasicNode::new(addr));
        }
        Ok(nodes)
    }

    /// Ids of the running groups, ascending.
    pub fn group_ids(&self) -> Vec<GroupId> {
        let mut ids: Vec<GroupId> = self.inner.read_groups().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Shuts the group's Raft down and, if `destroy`, removes its storage. Closing a group
    /// that is not running is not an error (and still destroys its storage if asked).
    ///
    /// # Errors
    /// [`RaftNodeError::GroupShutdown`] if the Raft task failed; [`RaftNodeError::Storage`]
    /// if the storage could not be removed.
    pub async fn close_group(&self, group: GroupId, destroy: bool) -> Result<(), RaftNodeError> {
        let _lifecycle = self.inner.lifecycle.lock().await;
        let raft = self.inner.write_groups().remove(&group);
        self.inner.quiet.closed(group);
        self.inner.storage.health().group_closed(group);
        if let Some(raft) = raft {
            raft.shutdown()
                .await
                .map_err(|join| RaftNodeError::GroupShutdown {
                    group,
                    message: join.to_string(),
                })?;
            tracing::info!(node = self.id(), group, "group closed");
        }
        if destroy {
            self.inner.storage.destroy_group(group).await?;
            tracing::info!(node = self.id(), group, "group storage destroyed");
        }
        Ok(())
    }

    /// Installs the handler of forwarded application requests. Until it is set, such
    /// requests are answered with a refusal (the asker retries).
    pub fn set_service(&self, service: Arc<dyn PeerService>) {
        *self
            .inner
            .service
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(service);
    }

    /// A forwarded application request to a peer (or to this node's own service when `to`
    /// is this node).
    ///
    /// # Errors
    /// [`TransportError::Unreachable`] at once if there is no connection to `to`, or the
    /// peer has been silent on it for twice the keepalive (nothing is sent then);
    /// [`TransportError::Timeout`] after `timeout`; [`TransportError::Refused`] if the peer
    /// has no service installed.
    pub async fn call_peer(
        &self,
        to: NodeId,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, TransportError> {
        if to == self.id() {
            let service = self
                .inner
                .service()
                .ok_or_else(|| TransportError::Refused {
                    peer: to,
                    reason: Refusal::NoService.to_string(),
                })?;
            return tokio::time::timeout(timeout, service.handle(to, body))
                .await
                .map_err(|_| TransportError::Timeout {
                    peer: to,
                    after: timeout,
                });
        }
        // Nothing is sent to a peer that is silent, or that said it is stopping (it may
        // close the connection under the request): the caller goes elsewhere.
        if self.inner.transport.is_silent(to) || self.inner.transport.is_departing(to) {
            return Err(TransportError::Unreachable { peer: to });
        }
        match self
            .inner
            .transport
            .request(to, PeerRequest::Service(body), timeout)
            .await?
        {
            PeerResponse::Service(answer) => Ok(answer),
            PeerResponse::Refused(refusal) => Err(TransportError::Refused {
                peer: to,
                reason: refusal.to_string(),
            }),
            _ => Err(TransportError::UnexpectedResponse { peer: to }),
        }
    }

    /// `peer` is stopping (it said so): send it no application request until it connects
    /// again; Raft's messages still go.
    pub fn peer_departing(&self, peer: NodeId) {
        self.inner.transport.mark_departing(peer);
    }

    /// Waits until every peer's application request taken in here has its answer flushed
    /// to the connection, at most `wait`: a stopping node answers everything its peers
    /// sent before they learnt it is leaving, so none of them sees a connection close
    /// under a request (an unknown outcome).
    pub async fn await_peer_requests(&self, wait: Duration) {
        self.inner.transport.await_answered(wait).await;
    }

    /// Asks a peer whether it holds any state (a vote or a log entry) for `group`, so the
    /// controller group is initialised exactly once.
    ///
    /// # Errors
    /// As [`RaftNode::call_peer`]; a peer whose storage fails answers with a refusal.
    pub async fn peer_has_group_state(
        &self,
        to: NodeId,
        group: GroupId,
        timeout: Duration,
    ) -> Result<bool, TransportError> {
        if to == self.id() {
            return self
                .inner
                .storage
                .group_is_pristine(group)
                .map(|pristine| !pristine)
                .map_err(|err| TransportError::Refused {
                    peer: to,
                    reason: Refusal::Storage {
                        message: err.to_string(),
                    }
                    .to_string(),
                });
        }
        match self
            .inner
            .transport
            .request(to, PeerRequest::GroupState { group }, timeout)
            .await?
        {
            PeerResponse::GroupState { has_state } => Ok(has_state),
            PeerResponse::Refused(refusal) => Err(TransportError::Refused {
                peer: to,
                reason: refusal.to_string(),
            }),
            _ => Err(TransportError::UnexpectedResponse { peer: to }),
        }
    }

    /// Test hooks: cut / drop / delay traffic to and from a peer.
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// Shuts every group down (`Raft::shutdown`), stops the transport, and closes the
    /// storage (a last flush; the database is released once the node is dropped).
    /// Idempotent: later calls wait for the first and return.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        let mut done = inner.shutdown_done.lock().await;
        if *done {
            return;
        }
        inner.closing.store(true, Ordering::Release);
        let _lifecycle = inner.lifecycle.lock().await;
        let groups: Vec<(GroupId, typ::Raft)> = inner.write_groups().drain().collect();
        for (group, _) in &groups {
            inner.quiet.closed(*group);
        }
        let stops = groups.iter().map(|(group, raft)| async move {
            if let Err(join) = raft.shutdown().await {
                tracing::warn!(group, cause = %join, "group task failed while shutting down");
            }
        });
        futures::future::join_all(stops).await;
        inner.transport.shutdown().await;
        if let Err(err) = inner.storage.close().await {
            tracing::error!(cause = %err, "final storage flush failed");
        }
        *done = true;
        tracing::info!(
            node = inner.config.id,
            groups = groups.len(),
            "raft node shut down"
        );
    }
}
