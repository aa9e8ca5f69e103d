//! Guarded appends end to end: entries with record ids and expectations applied through a
//! real state machine on disk, the id table across reopen and snapshot install.

use bytes::Bytes;
use openraft::storage::RaftStateMachine;
use psubd_raft::{Command, NodeStorage};

use super::command::{decode_guarded_response, guarded_append_command};
use super::guard::{EntryGuard, Expectation, RequestGuard, RequestOutcome};
use super::id_table::RecordId;
use super::layout::{id_set_key, IDS_END, ID_PREFIX};
use super::tests::{entry, keyed, open_partition, records, values};
use super::PartitionLogic;
use crate::record::{join_batch, EncodedRecords};
use crate::topic::CleanupPolicy;

/// A request of `records` whose records at the given positions carry the given ids.
fn request(records: EncodedRecords, ids: &[(u32, &str)]) -> (EncodedRecords, RequestGuard) {
    let guard = RequestGuard {
        ids: ids
            .iter()
            .map(|(at, id)| (*at, RecordId::of(id.as_bytes())))
            .collect(),
        expect: None,
    };
    (records, guard)
}

/// The command of an entry joining `requests`, stamped `stamped_ms` with `window_ms`.
fn guarded(
    stamped_ms: i64,
    window_ms: u64,
    requests: &[(EncodedRecords, RequestGuard)],
) -> Command {
    let batch = join_batch(requests.iter().map(|(r, _)| r));
    let guard = EntryGuard {
        stamped_ms,
        window_ms,
        requests: requests.iter().map(|(r, g)| (r.count, g.clone())).collect(),
    };
    guarded_append_command(&guard, &batch)
}

fn written(base_offset: u64, duplicates: &[(u32, u64)]) -> RequestOutcome {
    RequestOutcome::Written {
        base_offset,
        duplicates: duplicates.to_vec(),
    }
}

async fn apply(
    sm: &mut psubd_raft::StateMachine,
    index: u64,
    command: Command,
) -> Vec<RequestOutcome> {
    let responses = sm.apply(vec![entry(index, command)]).await.unwrap();
    decode_guarded_response(&responses[0]).unwrap()
}

#[tokio::test]
async fn a_stored_id_is_not_stored_again_and_reports_the_original_offset() {
    let (_dir, _storage, reader, mut sm) = open_partition();
    let first = request(records(1, 3, 2), &[(0, "a"), (1, "b"), (2, "c")]);
    assert_eq!(
        apply(&mut sm, 1, guarded(1_000, 60_000, &[first])).await,
        vec![written(0, &[])]
    );
    // A retry of b next to a new record d, and d again in the same request: b reports
    // offset 1, the second d the first d's offset (3).
    let retry = request(records(2, 3, 2), &[(0, "b"), (1, "d"), (2, "d")]);
    // A plain request in the same entry is stored after the guarded one's records.
    let plain = (records(9, 1, 2), RequestGuard::default());
    assert_eq!(
        apply(&mut sm, 2, guarded(2_000, 60_000, &[retry, plain])).await,
        vec![written(3, &[(0, 1), (2, 3)]), written(4, &[])]
    );
    assert_eq!(reader.bounds().next_offset, 5);
    let fetched = reader.read(0, 100, 1 << 20).unwrap();
    assert_eq!(values(&fetched), vec!["1", "2", "3", "3", "9"]);
}

#[tokio::test]
async fn ids_expire_by_the_stamp_of_the_entry_not_the_replica_clock() {
    let (_dir, _storage, reader, mut sm) = open_partition();
    let once = || request(records(1, 1, 2), &[(0, "a")]);
    assert_eq!(
        apply(&mut sm, 1, guarded(10_000, 1_000, &[once()])).await,
        vec![written(0, &[])]
    );
    assert_eq!(
        apply(&mut sm, 2, guarded(10_999, 1_000, &[once()])).await,
        vec![written(1, &[(0, 0)])]
    );
    // A window's length later (by the entries' stamps) the id is stored again.
    assert_eq!(
        apply(&mut sm, 3, guarded(11_000, 1_000, &[once()])).await,
        vec![written(1, &[])]
    );
    // With a zero window (deduplication off) nothing is a duplicate.
    assert_eq!(
        apply(&mut sm, 4, guarded(11_001, 0, &[once()])).await,
        vec![written(2, &[])]
    );
    assert_eq!(reader.bounds().next_offset, 3);
}

#[tokio::test]
async fn an_expected_offset_is_decided_at_apply_and_a_mismatch_writes_nothing() {
    let (_dir, _storage, reader, mut sm) = open_partition();
    let expecting = |offset, ids: &[(u32, &str)]| {
        let (records, mut guard) = request(records(1, 2, 2), ids);
        guard.expect = Some(Expectation::NextOffset(offset));
        (records, guard)
    };
    // Two writers expecting offset 0 in one entry: the first wins, the second is told the
    // next offset, and its id is not remembered.
    assert_eq!(
        apply(
            &mut sm,
            1,
            guarded(1, 60_000, &[expecting(0, &[]), expecting(0, &[(0, "x")])])
        )
        .await,
        vec![
            written(0, &[]),
            RequestOutcome::NextOffsetMismatch { next_offset: 2 }
        ]
    );
    assert_eq!(
        apply(&mut sm, 2, guarded(2, 60_000, &[expecting(2, &[(0, "x")])])).await,
        vec![written(2, &[])]
    );
    assert_eq!(reader.bounds().next_offset, 4);
}

#[tokio::test]
async fn an_if_match_on_a_key_sees_earlier_writes_of_the_same_entry() {
    let dir = tempfile::tempdir().unwrap();
    let storage = NodeStorage::open(dir.path(), 1 << 20).unwrap();
    let (logic, reader) = PartitionLogic::with_policy(CleanupPolicy::Compact);
    let mut sm = storage.state_machine(7, Box::new(logic)).unwrap();
    let put = |value: &str, offset: Option<u64>| {
        let records = EncodedRecords::encode(&[keyed("k", Some(value), 1)]).unwrap();
        let guard = RequestGuard {
            ids: Vec::new(),
            expect: Some(Expectation::KeyOffset {
                key: Bytes::from_static(b"k"),
                offset,
            }),
        };
        (records, guard)
    };
    // "Must not exist" twice in one entry: the second sees the first's write.
    assert_eq!(
        apply(
            &mut sm,
            1,
            guarded(1, 0, &[put("v1", None), put("v2", None)])
        )
        .await,
        vec![
            written(0, &[]),
            RequestOutcome::KeyOffsetMismatch {
                key_offset: Some(0)
            }
        ]
    );
    assert_eq!(
        apply(
            &mut sm,
            2,
            guarded(2, 0, &[put("v3", Some(0)), put("v4", Some(0))])
        )
        .await,
        vec![
            written(1, &[]),
            RequestOutcome::KeyOffsetMismatch {
                key_offset: Some(1)
            }
        ]
    );
    assert_eq!(reader.bounds().next_offset, 2);
}

/// Each guarded entry stores its ids as one value of the state tree, and a reopened
/// replica rebuilds the table from those values: retries are still recognised, expired
/// sets are gone from the tree.
#[tokio::test]
async fn the_id_table_is_one_value_per_entry_and_survives_reopen() {
    let (_dir, storage, reader, mut sm) = open_partition();
    let id_values = |sm: &psubd_raft::StateMachine| {
        sm.tree()
            .range(&[ID_PREFIX], Some(&IDS_END))
            .map(|item| item.unwrap().0.to_vec())
            .collect::<Vec<_>>()
    };
    let three = request(records(1, 3, 2), &[(0, "a"), (1, "b"), (2, "c")]);
    let one = request(records(4, 1, 2), &[(0, "d")]);
    assert_eq!(
        apply(&mut sm, 1, guarded(1_000, 60_000, &[three, one])).await,
        vec![written(0, &[]), written(3, &[])]
    );
    assert_eq!(id_values(&sm), vec![id_set_key(0).to_vec()]);
    assert_eq!(
        apply(
            &mut sm,
            2,
            guarded(2_000, 60_000, &[request(records(5, 1, 2), &[(0, "e")])])
        )
        .await,
        vec![written(4, &[])]
    );
    assert_eq!(id_values(&sm).len(), 2);
    drop(sm);

    let (logic, reopened) = PartitionLogic::new();
    let mut sm = storage.state_machine(7, Box::new(logic)).unwrap();
    assert_eq!(reopened.bounds(), reader.bounds());
    let retry = request(records(1, 3, 2), &[(0, "e"), (1, "b"), (2, "f")]);
    assert_eq!(
        apply(&mut sm, 3, guarded(3_000, 60_000, &[retry])).await,
        vec![written(5, &[(0, 4), (1, 1)])]
    );
    // A window after the first entry its set expires whole; the later ones stay.
    assert_eq!(
        apply(
            &mut sm,
            4,
            guarded(61_000, 60_000, &[request(records(1, 1, 2), &[(0, "a")])])
        )
        .await,
        vec![written(6, &[])]
    );
    assert_eq!(
        id_values(&sm),
        vec![
            id_set_key(4).to_vec(),
            id_set_key(5).to_vec(),
            id_set_key(6).to_vec()
        ]
    );
}

#[tokio::test]
async fn the_id_table_is_carried_by_snapshots() {
    let (_dir, _storage, _reader, mut sm) = open_partition();
    let ids = [(0, "a"), (1, "b")];
    apply(
        &mut sm,
        1,
        guarded(1_000, 60_000, &[request(records(1, 2, 2), &ids)]),
    )
    .await;
    let mut builder = sm.get_snapshot_builder().await;
    let snapshot = openraft::RaftSnapshotBuilder::build_snapshot(&mut builder)
        .await
        .unwrap();
    drop(builder);

    // A fresh replica installing the snapshot knows the ids.
    let (_other_dir, _other_storage, other_reader, mut other_sm) = open_partition();
    other_sm
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    let retry = || request(records(1, 2, 2), &ids);
    assert_eq!(
        apply(&mut other_sm, 2, guarded(2_000, 60_000, &[retry()])).await,
        vec![written(2, &[(0, 0), (1, 1)])]
    );
    assert_eq!(other_reader.bounds().next_offset, 2);
}

#[tokio::test]
async fn a_guard_that_does_not_match_its_batch_is_skipped_alike() {
    let (_dir, _storage, reader, mut sm) = open_partition();
    let batch = join_batch([&records(1, 2, 2)].into_iter());
    let guard = EntryGuard {
        stamped_ms: 1,
        window_ms: 1,
        requests: vec![(3, RequestGuard::default())],
    };
    let responses = sm
        .apply(vec![entry(1, guarded_append_command(&guard, &batch))])
        .await
        .unwrap();
    assert_eq!(decode_guarded_response(&responses[0]), None);
    assert_eq!(reader.bounds().next_offset, 0);
}
