//! Storage tests: openraft's own storage suite against `LogStore` + `StateMachine`, plus the
//! contracts of docs/architecture.md § Storage and durability that the suite does not cover (group
//! commit, snapshot files, durability across a reopen).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{log_id, StoreBuilder, Suite};
use openraft::{
    Entry, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder, StoredMembership,
};
use psubd_raft::state::schedule::{SnapshotRequests, SnapshotSchedule, MIN_BYTES_OVER_RETAINED};
use psubd_raft::types::typ;
use psubd_raft::{
    Command, CommandResponse, GroupLogic, LogStore, NodeStorage, RaftTuning, SnapshotPlan,
    StateMachine, StorageIoError, Tree, TypeConfig, WriteBatch,
};
use serde::{Deserialize, Serialize};
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;

/// A small cache, so the 20k-pair snapshot test does not fit in it.
const CACHE_BYTES: u64 = 1 << 20;

/// How long a reopen waits for the previous handle's database lock to be released.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// A test logic: a key-value map
// ---------------------------------------------------------------------------------------------

/// Commands of the test logic. Keys under `r` are append-only (as a partition's batches are),
/// which is what lets the snapshot plan read them lazily; keys under `m` may change and are
/// pinned.
#[derive(Serialize, Deserialize)]
enum KvOp {
    Put { key: Vec<u8>, value: Vec<u8> },
    Del { key: Vec<u8> },
}

fn put(key: &[u8], value: &[u8]) -> Command {
    let op = KvOp::Put {
        key: key.to_vec(),
        value: value.to_vec(),
    };
    Command(Bytes::from(postcard::to_allocvec(&op).unwrap()))
}

fn del(key: &[u8]) -> Command {
    Command(Bytes::from(
        postcard::to_allocvec(&KvOp::Del { key: key.to_vec() }).unwrap(),
    ))
}

/// What the logic publishes in `applied` (and only there).
#[derive(Default)]
struct KvView {
    keys: AtomicU64,
    loads: AtomicU64,
}

struct KvLogic {
    keys: BTreeSet<Vec<u8>>,
    view: Arc<KvView>,
}

impl KvLogic {
    fn boxed() -> (Box<dyn GroupLogic>, Arc<KvView>) {
        let view = Arc::new(KvView::default());
        (
            Box::new(KvLogic {
                keys: BTreeSet::new(),
                view: view.clone(),
            }),
            view,
        )
    }
}

impl GroupLogic for KvLogic {
    fn load(&mut self, state: &Tree) -> Result<(), StorageIoError> {
        self.keys.clear();
        for pair in state.range(&[], Some(&psubd_raft::RESERVED_KEY_PREFIX)) {
            let (key, _value) = pair?;
            self.keys.insert(key.to_vec());
        }
        self.view.loads.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn apply(
        &mut self,
        index: u64,
        command: &Command,
        _state: &Tree,
        batch: &mut WriteBatch,
    ) -> Result<CommandResponse, StorageIoError> {
        match postcard::from_bytes::<KvOp>(&command.0) {
            Ok(KvOp::Put { key, value }) => {
                self.keys.insert(key.clone());
                batch.insert(key, value);
            }
            Ok(KvOp::Del { key }) => {
                self.keys.remove(&key);
                batch.remove(key);
            }
            // A domain refusal is an answer, not an error.
            Err(_) => return Ok(CommandResponse(Bytes::from_static(b"bad command"))),
        }
        Ok(CommandResponse(Bytes::copy_from_slice(
            &index.to_be_bytes(),
        )))
    }

    fn applied(&mut self) {
        self.view
            .keys
            .store(self.keys.len() as u64, Ordering::SeqCst);
    }

    fn snapshot_plan(&self, state: &Tree) -> Result<SnapshotPlan, StorageIoError> {
        let mut pinned = Vec::new();
        for pair in state.range(b"m", Some(b"n")) {
            let (key, value) = pair?;
            pinned.push((key.to_vec(), value.to_vec()));
        }
        Ok(SnapshotPlan {
            pinned,
            lazy: Some((b"r".to_vec(), Some(b"s".to_vec()))),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// openraft's suite
// ---------------------------------------------------------------------------------------------

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), typ::StorageError> {
        let dir = TempDir::new().unwrap();
        let storage = NodeStorage::open(dir.path(), CACHE_BYTES).unwrap();
        let log = storage.log_store(7).unwrap();
        let sm = storage.state_machine(7, KvLogic::boxed().0).unwrap();
        Ok((dir, log, sm))
    }
}

type OpenraftSuite = Suite<TypeConfig, LogStore, StateMachine, Builder, TempDir>;

/// Every case of openraft's `Suite::test_all`, each on a fresh store, but one:
/// `get_initial_state_membership_from_log_and_sm` appends index 3 to a log ending at 1. A log
/// with a hole breaks openraft's own contract for `append` ("there must not be a hole in
/// logs"), which openraft never does; the segment log refuses it (a key-value log would
/// store it). The cases run one by one so a failure names its case.
#[test]
fn openraft_storage_suite() {
    let mut failed = Vec::new();
    macro_rules! case {
        ($name:ident) => {
            let result = tokio::runtime::Runtime::new().unwrap().block_on(async {
                let (_dir, log, sm) = Builder.build().await?;
                OpenraftSuite::$name(log, sm).await
            });
            if let Err(err) = result {
                failed.push(format!("{}: {err}", stringify!($name)));
            }
        };
    }
    case!(last_membership_in_log_initial);
    case!(last_membership_in_log);
    case!(last_membership_in_log_multi_step);
    case!(get_membership_initial);
    case!(get_membership_from_log_and_empty_sm);
    case!(get_membership_from_empty_log_and_sm);
    case!(get_membership_from_log_le_sm_last_applied);
    case!(get_membership_from_log_gt_sm_last_applied_1);
    case!(get_membership_from_log_gt_sm_last_applied_2);
    case!(get_initial_state_without_init);
    case!(get_initial_state_with_state);
    case!(get_initial_state_last_log_gt_sm);
    case!(get_initial_state_last_log_lt_sm);
    case!(get_initial_state_log_ids);
    case!(get_initial_state_re_apply_committed);
    case!(save_vote);
    case!(get_log_entries);
    case!(limited_get_log_entries);
    case!(try_get_log_entry);
    case!(initial_logs);
    case!(get_log_state);
    case!(get_log_id);
    case!(last_id_in_log);
    case!(last_applied_state);
    case!(purge_logs_upto_0);
    case!(purge_logs_upto_5);
    case!(purge_logs_upto_20);
    case!(delete_logs_since_11);
    case!(delete_logs_since_0);
    case!(append_to_log);
    case!(snapshot_meta);
    case!(apply_single);
    case!(apply_multiple);
    let result = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(OpenraftSuite::transfer_snapshot(&Builder));
    if let Err(err) = result {
        failed.push(format!("transfer_snapshot: {err}"));
    }
    assert!(failed.is_empty(), "failed cases: {failed:#?}");
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn normal(term: u64, index: u64, command: Command) -> typ::Entry {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Normal(command),
    }
}

fn membership(term: u64, index: u64, voters: &[u64]) -> typ::Entry {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Membership(Membership::new(
            vec![voters.iter().copied().collect()],
            None,
        )),
    }
}

fn record_key(i: u64) -> Vec<u8> {
    let mut key = b"r".to_vec();
    key.extend_from_slice(&i.to_be_bytes());
    key
}

fn record_value(i: u64) -> Vec<u8> {
    // 200 bytes, distinct per record.
    let mut value = i.to_le_bytes().repeat(25);
    value[0] ^= 0x5a;
    value
}

fn dump(tree: &Tree) -> BTreeMap<Vec<u8>, Vec<u8>> {
    tree.range(&[], None)
        .map(|pair| pair.map(|(k, v)| (k.to_vec(), v.to_vec())))
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The logic's pairs only (without the state machine's reserved metadata keys).
fn logic_pairs(tree: &Tree) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut pairs = dump(tree);
    pairs.retain(|k, _| !k.starts_with(&psubd_raft::RESERVED_KEY_PREFIX));
    pairs
}

/// Compares two dumps without printing megabytes on failure.
fn assert_same(left: &BTreeMap<Vec<u8>, Vec<u8>>, right: &BTreeMap<Vec<u8>, Vec<u8>>, what: &str) {
    let first_difference = left
        .iter()
        .zip(right.iter())
        .find(|(l, r)| l != r)
        .map(|((lk, _), (rk, _))| (lk.clone(), rk.clone()));
    assert!(
        left == right,
        "{what}: {} pairs vs {} pairs, first differing keys {first_difference:?}",
        left.len(),
        right.len()
    );
}

/// Applies `records` puts under `r`, `per_call` entries per apply call, starting at log index
/// `first`; returns the next free index.
async fn apply_records(sm: &mut StateMachine, first: u64, records: u64, per_call: u64) -> u64 {
    let mut index = first;
    let mut next_record = 0;
    while next_record < records {
        let n = per_call.min(records - next_record);
        let entries: Vec<_> = (0..n)
            .map(|k| {
                normal(
                    1,
                    index + k,
                    put(&record_key(next_record + k), &record_value(next_record + k)),
                )
            })
            .collect();
        let responses = sm.apply(entries).await.unwrap();
        assert_eq!(responses.len() as u64, n);
        assert_eq!(
            responses[0].0.as_ref(),
            &index.to_be_bytes(),
            "response carries the index"
        );
        index += n;
        next_record += n;
    }
    index
}

/// Streams `from` into `to` in 64 KiB chunks, as openraft's chunked install does.
async fn stream_into(from: &Path, to: &mut tokio::fs::File) {
    let bytes = tokio::fs::read(from).await.unwrap();
    for chunk in bytes.chunks(64 << 10) {
        to.write_all(chunk).await.unwrap();
    }
    to.shutdown().await.unwrap();
}

fn snapshot_files(root: &Path, group: u64) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(root.join("snapshots").join(group.to_string()))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

// ---------------------------------------------------------------------------------------------
// Group commit
// ---------------------------------------------------------------------------------------------

/// docs/architecture.md § Storage and durability: one flusher coalesces the pending flushes of
/// every group into one flush, and every append's callback still fires. Each group's log takes one
/// appender (as openraft drives it), so the concurrency is across groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_coalesces_appends_of_many_groups() {
    const GROUPS: u64 = 100;
    const APPENDS_PER_GROUP: u64 = 8;

    let dir = TempDir::new().unwrap();
    let storage = NodeStorage::open(dir.path(), CACHE_BYTES).unwrap();
    let flushes_before = storage.flush_count();

    let mut tasks = Vec::new();
    for group in 1..=GROUPS {
        let mut log = storage.log_store(group).unwrap();
        tasks.push(tokio::spawn(async move {
            for index in 1..=APPENDS_PER_GROUP {
                // blocking_append waits for the callback, i.e. for a flush covering it.
                log.blocking_append([normal(1, index, put(b"x", &index.to_be_bytes()))])
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    let appends = GROUPS * APPENDS_PER_GROUP;
    let flushes = storage.flush_count() - flushes_before;
    println!("group commit: {appends} appends, {flushes} flushes");
    assert!(flushes >= 1, "appends were acknowledged without any flush");
    assert!(
        flushes * 4 <= appends,
        "expected far fewer flushes than appends, got {flushes} for {appends}"
    );
    for group in 1..=GROUPS {
        let mut log = storage.log_store(group).unwrap();
        let entries = log.try_get_log_entries(..).await.unwrap();
        assert_eq!(entries.len() as u64, APPENDS_PER_GROUP);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(
            state.last_log_id.map(|id| id.index),
            Some(APPENDS_PER_GROUP)
        );
    }
}

/// Entries live in segment files under `raft-log/<group>/`, not in the database; a log
/// store opened while another handle of the group is alive sees its appends at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_entries_live_in_segment_files() {
    let dir = TempDir::new().unwrap();
    let storage = NodeStorage::open(dir.path(), CACHE_BYTES).unwrap();
    let mut log = storage.log_store(5).unwrap();
    log.blocking_append((1..=20).map(|i| normal(1, i, put(&record_key(i), &record_value(i)))))
        .await
        .unwrap();
    let group_dir = dir.path().join("raft-log").join("5");
    let files: Vec<_> = std::fs::read_dir(&group_dir)
        .unwrap()
        .map(|f| f.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files, vec![format!("{:020}.seg", 1)]);
    let mut second = storage.log_store(5).unwrap();
    assert_eq!(second.try_get_log_entries(..).await.unwrap().len(), 20);
    second
        .blocking_append([normal(1, 21, put(b"rk", b"v"))])
        .await
        .unwrap();
    assert_eq!(
        log.get_log_state().await.unwrap().last_log_id,
        Some(log_id(1, 1, 21))
    );
}

/// A data directory whose log tree holds entries in the old in-database layout is refused
/// with an error naming it (there is no migration).
#[test]
fn legacy_log_layout_is_refused() {
    let dir = TempDir::new().unwrap();
    let root = dir.path().to_path_buf();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        NodeStorage::open(&root, CACHE_BYTES)
            .unwrap()
            .close()
            .await
            .unwrap();
    });
    // Write an entry key the way earlier versions did, straight into the database.
    {
        NodeStorage::wait_until_released(&root, RELEASE_WAIT).unwrap();
        let db = sled::Config::new()
            .path(root.join("db"))
            .segment_size(2 << 20) // the size NodeStorage creates databases with
            .open()
            .unwrap();
        let tree = db.open_tree("log/3").unwrap();
        let mut key = vec![b'e'];
        key.extend_from_slice(&1u64.to_be_bytes());
        tree.insert(key, b"old entry".to_vec()).unwrap();
        db.flush().unwrap();
    }
    NodeStorage::wait_until_released(&root, RELEASE_WAIT).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let err = NodeStorage::open(&root, CACHE_BYTES).unwrap_err();
        assert!(
            matches!(err, StorageIoError::LegacyLog { .. }),
            "unexpected error: {err}"
        );
        assert!(
            err.to_string().contains(&root.display().to_string()),
            "{err}"
        );
    });
}

/// A reopen in the same process waits for the database lock: it times out while the lock
/// is held, returns once it is free, and at once where there is no database.
#[test]
fn waiting_for_the_database_lock_ends_only_when_it_is_free() {
    let dir = TempDir::new().unwrap();
    let root = dir.path().to_path_buf();
    NodeStorage::wait_until_released(&root, Duration::ZERO).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let storage = NodeStorage::open(&root, CACHE_BYTES).unwrap();
        // Held by a live handle: the wait gives up after its timeout, naming the lock.
        let err = NodeStorage::wait_until_released(&root, Duration::from_millis(50)).unwrap_err();
        assert!(
            matches!(&err, StorageIoError::File { source, .. } if source.kind() == std::io::ErrorKind::TimedOut),
            "{err}"
        );
        storage.close().await.unwrap();
    });
    NodeStorage::wait_until_released(&root, RELEASE_WAIT).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        NodeStorage::open(&root, CACHE_BYTES)
            .unwrap()
            .close()
            .await
            .unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------------------------

/// A snapshot built from a 20k-record lazy range installs on another node into the same state,
/// even though applies continued between the plan and the build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_round_trip_with_large_lazy_range() {
    const RECORDS: u64 = 20_000;
    let (dir_a, dir_b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let node_a = NodeStorage::open(dir_a.path(), CACHE_BYTES).unwrap();
    let node_b = NodeStorage::open(dir_b.path(), CACHE_BYTES).unwrap();
    let (logic_a, view_a) = KvLogic::boxed();
    let mut sm_a = node_a.state_machine(3, logic_a).unwrap();

    sm_a.apply([membership(1, 1, &[1, 2, 3])]).await.unwrap();
    sm_a.apply([normal(1, 2, put(b"mcount", b"before"))])
        .await
        .unwrap();
    let mut next = apply_records(&mut sm_a, 3, RECORDS, 500).await;
    assert_eq!(view_a.keys.load(Ordering::SeqCst), RECORDS + 1);

    let mut builder = sm_a.get_snapshot_builder().await;
    let (planned_applied, planned_membership) = sm_a.applied_state().await.unwrap();
    let expected = dump(sm_a.tree());

    // Applies continue before the builder reads the lazy range. A pinned key changes: the
    // snapshot keeps the planned value. (Lazy keys may only be removed, per the logic's
    // promise, so none is changed here.)
    sm_a.apply([normal(1, next, put(b"mcount", b"after"))])
        .await
        .unwrap();
    next += 1;

    let snapshot = builder.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id, planned_applied);
    assert_eq!(snapshot.meta.last_membership, planned_membership);
    let current = sm_a
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("a current snapshot after build");
    assert_eq!(current.meta, snapshot.meta);
    let files = snapshot_files(dir_a.path(), 3);
    assert_eq!(
        files.len(),
        1,
        "only the newest snapshot file is kept: {files:?}"
    );

    // Install on node B through the chunked-receive path.
    let (logic_b, view_b) = KvLogic::boxed();
    let mut sm_b = node_b.state_machine(3, logic_b).unwrap();
    sm_b.apply([normal(1, 1, put(b"stale", b"gone after install"))])
        .await
        .unwrap();
    let mut receiving = sm_b.begin_receiving_snapshot().await.unwrap();
    stream_into(&files[0], &mut receiving).await;
    sm_b.install_snapshot(&snapshot.meta, receiving)
        .await
        .unwrap();

    assert_eq!(
        sm_b.applied_state().await.unwrap(),
        (planned_applied, planned_membership.clone())
    );
    // Same pairs, and the same state-machine metadata (last applied, membership) as planned.
    assert_same(&dump(sm_b.tree()), &expected, "installed state");
    assert_eq!(
        sm_b.tree().get(b"mcount").unwrap().as_deref(),
        Some(&b"before"[..])
    );
    assert_eq!(
        sm_b.tree().get(b"stale").unwrap(),
        None,
        "install replaces the state"
    );
    assert_eq!(
        view_b.keys.load(Ordering::SeqCst),
        RECORDS + 1,
        "logic reloaded and published"
    );
    let current_b = sm_b
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("installed snapshot is current");
    assert_eq!(current_b.meta, snapshot.meta);
    assert_eq!(
        snapshot_files(dir_b.path(), 3).len(),
        1,
        "no temporary file left behind"
    );

    // The installed state survives a reopen, and B can go on applying after it.
    drop(sm_b);
    let (logic_b, view_b) = KvLogic::boxed();
    let mut sm_b = node_b.state_machine(3, logic_b).unwrap();
    assert_eq!(sm_b.applied_state().await.unwrap().0, planned_applied);
    assert_eq!(view_b.keys.load(Ordering::SeqCst), RECORDS + 1);
    sm_b.apply([normal(1, next - 1, put(b"mcount", b"after"))])
        .await
        .unwrap();
    assert_eq!(
        sm_b.tree().get(b"mcount").unwrap().as_deref(),
        Some(&b"after"[..])
    );
}

/// A damaged snapshot is refused before the state is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_snapshot_is_refused_and_state_kept() {
    let (dir_a, dir_b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let node_a = NodeStorage::open(dir_a.path(), CACHE_BYTES).unwrap();
    let node_b = NodeStorage::open(dir_b.path(), CACHE_BYTES).unwrap();
    let mut sm_a = node_a.state_machine(5, KvLogic::boxed().0).unwrap();
    apply_records(&mut sm_a, 1, 1_000, 100).await;
    let snapshot = sm_a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let bytes = std::fs::read(&snapshot_files(dir_a.path(), 5)[0]).unwrap();

    let mut sm_b = node_b.state_machine(5, KvLogic::boxed().0).unwrap();
    sm_b.apply([normal(1, 1, put(b"r-own", b"kept"))])
        .await
        .unwrap();
    let before = dump(sm_b.tree());

    for damage in ["flip a byte", "truncate"] {
        let mut damaged = bytes.clone();
        match damage {
            "flip a byte" => {
                let middle = damaged.len() / 2;
                damaged[middle] ^= 0x01;
            }
            _ => damaged.truncate(damaged.len() - 20),
        }
        let mut receiving = sm_b.begin_receiving_snapshot().await.unwrap();
        receiving.write_all(&damaged).await.unwrap();
        receiving.shutdown().await.unwrap();
        let result = sm_b.install_snapshot(&snapshot.meta, receiving).await;
        assert!(
            result.is_err(),
            "{damage}: a damaged snapshot was installed"
        );
        assert_same(&dump(sm_b.tree()), &before, damage);
        assert!(
            sm_b.get_current_snapshot().await.unwrap().is_none(),
            "{damage}: became current"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Durability across reopen
// ---------------------------------------------------------------------------------------------

/// Vote, log, purge mark, applied state and the current snapshot all survive closing and
/// reopening the database (each phase runs in its own runtime, so every handle is gone).
#[test]
fn state_survives_reopen() {
    let dir = TempDir::new().unwrap();
    let root = dir.path().to_path_buf();
    let vote = typ::Vote::new(4, 2);

    let before = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let storage = NodeStorage::open(&root, CACHE_BYTES).unwrap();
        assert!(storage.group_is_pristine(9).unwrap());
        let mut log = storage.log_store(9).unwrap();
        let (logic, _view) = KvLogic::boxed();
        let mut sm = storage.state_machine(9, logic).unwrap();

        log.save_vote(&vote).await.unwrap();
        let mut entries = vec![membership(1, 1, &[1, 2])];
        entries.extend((2..=50).map(|i| normal(2, i, put(&record_key(i), &record_value(i)))));
        entries[44] = normal(2, 45, del(&record_key(3)));
        log.blocking_append(entries.clone()).await.unwrap();
        log.purge(log_id(1, 1, 10)).await.unwrap();
        log.save_committed(Some(log_id(2, 1, 40))).await.unwrap();
        sm.apply(entries[..40].to_vec()).await.unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        sm.apply(entries[40..45].to_vec()).await.unwrap();
        storage.close().await.unwrap();
        assert!(!storage.group_is_pristine(9).unwrap());
        (sm.applied_state().await.unwrap(), dump(sm.tree()))
    });

    NodeStorage::wait_until_released(&root, RELEASE_WAIT).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let storage = NodeStorage::open(&root, CACHE_BYTES).unwrap();
        assert!(!storage.group_is_pristine(9).unwrap());
        let mut log = storage.log_store(9).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(2, 1, 40)));
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 10)));
        assert_eq!(state.last_log_id, Some(log_id(2, 1, 50)));
        let entries = log.try_get_log_entries(0..100).await.unwrap();
        assert_eq!(
            entries.first().map(|e| e.log_id.index),
            Some(11),
            "purged entries are gone"
        );
        assert_eq!(entries.len(), 40);

        let (logic, view) = KvLogic::boxed();
        let mut sm = storage.state_machine(9, logic).unwrap();
        assert_eq!(sm.applied_state().await.unwrap(), before.0);
        assert_same(&dump(sm.tree()), &before.1, "state after reopen");
        // Puts of records 2..=44, and record 3 deleted at index 45.
        assert_eq!(
            view.keys.load(Ordering::SeqCst),
            42,
            "logic loaded the stored state"
        );
        let current = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("snapshot survives");
        assert_eq!(current.meta.last_log_id, Some(log_id(2, 1, 40)));
        assert_eq!(
            current.meta.last_membership,
            StoredMembership::new(
                Some(log_id(1, 1, 1)),
                Membership::new(vec![[1, 2].into()], None)
            )
        );
    });
}

/// If the state tree is behind the newest snapshot (a crash during an install, or state lost
/// in a crash), opening the state machine reloads the snapshot.
#[test]
fn open_reloads_a_snapshot_newer_than_the_state() {
    let (dir_a, dir_b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let (root_a, root_b) = (dir_a.path().to_path_buf(), dir_b.path().to_path_buf());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (applied, expected) = rt.block_on(async {
        let storage = NodeStorage::open(&root_a, CACHE_BYTES).unwrap();
        let mut sm = storage.state_machine(2, KvLogic::boxed().0).unwrap();
        apply_records(&mut sm, 1, 300, 50).await;
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        (sm.applied_state().await.unwrap(), logic_pairs(sm.tree()))
    });
    drop(rt);

    // Node B has the snapshot file durable but its state tree never got the contents.
    let target = root_b.join("snapshots").join("2");
    std::fs::create_dir_all(&target).unwrap();
    let file = &snapshot_files(&root_a, 2)[0];
    std::fs::copy(file, target.join(file.file_name().unwrap())).unwrap();

    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let storage = NodeStorage::open(&root_b, CACHE_BYTES).unwrap();
        let (logic, view) = KvLogic::boxed();
        let mut sm = storage.state_machine(2, logic).unwrap();
        assert_eq!(sm.applied_state().await.unwrap(), applied);
        assert_same(&logic_pairs(sm.tree()), &expected, "reloaded state");
        assert_eq!(view.keys.load(Ordering::SeqCst), 300);
    });
}

/// Removing a group leaves nothing behind: it is pristine again and its snapshots are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_group_removes_log_state_and_snapshots() {
    let dir = TempDir::new().unwrap();
    let storage = NodeStorage::open(dir.path(), CACHE_BYTES).unwrap();
    {
        let mut log = storage.log_store(11).unwrap();
        let mut sm = storage.state_machine(11, KvLogic::boxed().0).unwrap();
        log.blocking_append([normal(1, 1, put(b"rk", b"v"))])
            .await
            .unwrap();
        sm.apply([normal(1, 1, put(b"rk", b"v"))]).await.unwrap();
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
    }
    assert!(!storage.group_is_pristine(11).unwrap());
    assert!(dir.path().join("raft-log").join("11").exists());
    storage.destroy_group(11).await.unwrap();
    assert!(storage.group_is_pristine(11).unwrap());
    assert!(!dir.path().join("raft-log").join("11").exists());
    let mut log = storage.log_store(11).unwrap();
    assert_eq!(log.get_log_state().await.unwrap().last_log_id, None);
    assert!(log.try_get_log_entries(..).await.unwrap().is_empty());
    assert!(!dir.path().join("snapshots").join("11").exists());
    let mut sm = storage.state_machine(11, KvLogic::boxed().0).unwrap();
    assert_eq!(sm.applied_state().await.unwrap().0, None);
    assert!(sm.get_current_snapshot().await.unwrap().is_none());
    assert!(storage.size_on_disk().unwrap() > 0);
}

/// Group 4's state machine on `storage`, asking for snapshots on `tuning`'s schedule, and
/// the receiver its requests arrive on.
fn scheduled(
    storage: &NodeStorage,
    logic: Box<dyn GroupLogic>,
    tuning: &RaftTuning,
) -> (StateMachine, SnapshotRequests) {
    let (schedule, requests) = SnapshotSchedule::new(tuning);
    let sm = storage
        .state_machine(4, logic)
        .unwrap()
        .with_snapshot_schedule(schedule);
    (sm, requests)
}

/// The state machine asks for a snapshot once both the entries and the command bytes since
/// its newest snapshot are due (so a large state is not rewritten every few small entries),
/// counts afresh from a snapshot it plans, and keeps its count across a reopen.
#[tokio::test]
async fn snapshot_requests_wait_for_entries_and_growth() {
    let dir = TempDir::new().unwrap();
    let storage = NodeStorage::open(dir.path(), CACHE_BYTES).unwrap();
    let tuning = RaftTuning {
        snapshot_every_entries: 10,
        snapshot_growth_percent: 100,
        snapshot_stagger_percent: 0,
        ..RaftTuning::default()
    };
    let (mut sm, mut requests) = scheduled(&storage, KvLogic::boxed().0, &tuning);
    let big = |i: u64| normal(1, i, put(&record_key(i), &[7u8; 4096]));
    let small = |i: u64| normal(1, i, put(&record_key(i), b"v"));

    // No snapshot yet: the entry count alone decides (applied through index 9 = 10 entries).
    sm.apply(vec![membership(1, 1, &[1])]).await.unwrap();
    sm.apply((2..=8).map(big).collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(requests.try_recv().is_err(), "asked before 10 entries");
    sm.apply(vec![big(9)]).await.unwrap();
    assert!(requests.try_recv().is_ok(), "not asked at 10 entries");

    // Planning the snapshot restarts the count.
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let progress = sm.snapshot_progress();
    assert_eq!((progress.entries_since(), progress.bytes_since), (0, 0));
    let snapshot_bytes = {
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        current.snapshot.metadata().await.unwrap().len()
    };
    assert!(snapshot_bytes > 8 * 4096, "{snapshot_bytes}");

    // 200 small entries: far past the entry count, far short of the snapshot's size.
    sm.apply((10..210).map(small).collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(requests.try_recv().is_err(), "asked with little growth");
    let progress = sm.snapshot_progress();
    assert_eq!(progress.entries_since(), 200);
    assert!(progress.bytes_since > 0 && progress.bytes_since < snapshot_bytes);

    // The count survives a reopen.
    drop(sm);
    storage.flush().await.unwrap();
    let (mut sm, mut requests) = scheduled(&storage, KvLogic::boxed().0, &tuning);
    assert_eq!(sm.snapshot_progress(), progress);

    // Large entries: asked exactly when the bytes since reach the snapshot's size.
    let mut index = 210;
    loop {
        let before = sm.snapshot_progress().bytes_since;
        sm.apply(vec![big(index)]).await.unwrap();
        index += 1;
        let asked = requests.try_recv().is_ok();
        let after = sm.snapshot_progress().bytes_since;
        assert_eq!(
            asked,
            after >= snapshot_bytes,
            "at {after} of {snapshot_bytes} bytes"
        );
        if asked {
            assert!(before < snapshot_bytes);
            break;
        }
    }
}

/// A [`KvLogic`] that says it retains a fixed number of bytes, as a partition does once
/// retention removed most of what its log holds.
struct RetainingLogic {
    inner: Box<dyn GroupLogic>,
    retained: u64,
}

impl GroupLogic for RetainingLogic {
    fn load(&mut self, state: &Tree) -> Result<(), StorageIoError> {
        self.inner.load(state)
    }

    fn apply(
        &mut self,
        index: u64,
        command: &Command,
        state: &Tree,
        batch: &mut WriteBatch,
    ) -> Result<CommandResponse, StorageIoError> {
        self.inner.apply(index, command, state, batch)
    }

    fn applied(&mut self) {
        self.inner.applied();
    }

    fn snapshot_plan(&self, state: &Tree) -> Result<SnapshotPlan, StorageIoError> {
        self.inner.snapshot_plan(state)
    }

    fn retained_bytes(&self) -> Option<u64> {
        Some(self.retained)
    }
}

/// A logic that retains little gets a snapshot once the commands applied since the last
/// one outgrow what it retains (at least 16 MiB), long before the entry count is reached.
#[tokio::test]
async fn a_log_that_outgrows_the_retained_state_asks_for_a_snapshot() {
    let dir = TempDir::new().unwrap();
    let storage = NodeStorage::open(dir.path(), CACHE_BYTES).unwrap();
    let tuning = RaftTuning {
        snapshot_every_entries: 1_000_000,
        snapshot_stagger_percent: 0,
        ..RaftTuning::default()
    };
    let logic = Box::new(RetainingLogic {
        inner: KvLogic::boxed().0,
        retained: 1 << 20,
    });
    let (mut sm, mut requests) = scheduled(&storage, logic, &tuning);
    let value = vec![3u8; 256 << 10];
    let mut index = 1;
    loop {
        sm.apply(vec![normal(1, index, put(&record_key(index), &value))])
            .await
            .unwrap();
        index += 1;
        let asked = requests.try_recv().is_ok();
        let bytes = sm.snapshot_progress().bytes_since;
        assert_eq!(asked, bytes >= MIN_BYTES_OVER_RETAINED, "at {bytes} bytes");
        if asked {
            break;
        }
    }
    assert!(index < 100, "asked after {index} entries");
}
