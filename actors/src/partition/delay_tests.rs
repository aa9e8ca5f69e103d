//! The delay queue end to end: `Delay` and `Release` commands applied through a real state
//! machine on disk, read back through the partition's reader (see [`super::delay_queue`]).

use openraft::storage::RaftStateMachine;
use openraft::RaftSnapshotBuilder;
use psubd_raft::{Command, CommandResponse, NodeStorage, Tree};

use super::command::{delay_command, release_command};
use super::delay_queue::{
    DelayOutcome, DelaySummary, DelayedRecords, ReleaseCommand, MAX_DELAYED_RECORDS,
};
use super::layout::{QUEUE_END, QUEUE_PREFIX};
use super::tests::{appended, entry, open_partition, records, values};
use super::PartitionLogic;
use crate::record::EncodedRecords;

/// A `Delay` of records `from..from + dues.len()`, the i-th due at `dues[i]`.
fn delay(from: u32, dues: &[i64]) -> Command {
    delay_command(&DelayedRecords {
        due_ms: dues.to_vec(),
        records: records(from, dues.len() as u32, 2),
    })
}

/// A `Release` of what is due by `up_to_ms`, at most `max_records` records.
fn release(up_to_ms: i64, max_records: u32) -> Command {
    release_command(&ReleaseCommand {
        up_to_ms,
        max_records,
        max_bytes: 1 << 20,
    })
}

fn outcome(response: &CommandResponse) -> Option<DelayOutcome> {
    DelayOutcome::decode(response)
}

fn queue_keys(tree: &Tree) -> usize {
    tree.range(&[QUEUE_PREFIX], Some(&QUEUE_END)).count()
}

#[tokio::test]
async fn delayed_records_wait_unread_and_are_released_once_in_due_order() {
    let (_dir, _storage, reader, mut sm) = open_partition();
    let responses = sm
        .apply(vec![
            appended(1, records(0, 2, 2)),
            // Records 10, 11, 12 due at 300, 100, 200.
            entry(2, delay(10, &[300, 100, 200])),
        ])
        .await
        .unwrap();
    assert_eq!(outcome(&responses[1]), Some(DelayOutcome::Queued));
    // Queued, not in the log: readers see the two appended records only.
    assert_eq!(reader.bounds().next_offset, 2);
    assert_eq!(
        values(&reader.read(0, 100, 1 << 20).unwrap()),
        vec!["", "1"]
    );
    assert_eq!(
        reader.delays(),
        DelaySummary {
            records: 3,
            bytes: reader.delays().bytes,
            earliest_due_ms: Some(100),
        }
    );
    assert!(reader.delays().bytes > 0);
    assert_eq!(queue_keys(sm.tree()), 3);

    // Due by 150: record 11 only, at the end of the log.
    sm.apply(vec![entry(3, release(150, 100))]).await.unwrap();
    assert_eq!(reader.bounds().next_offset, 3);
    assert_eq!(values(&reader.read(2, 100, 1 << 20).unwrap()), vec!["11"]);
    assert_eq!(reader.delays().earliest_due_ms, Some(200));

    // The same release again (a new leader proposing it twice) moves nothing.
    sm.apply(vec![entry(4, release(150, 100))]).await.unwrap();
    assert_eq!(reader.bounds().next_offset, 3);

    // A bounded release takes the earliest due first; the next one the rest.
    sm.apply(vec![entry(5, release(1_000, 1))]).await.unwrap();
    assert_eq!(values(&reader.read(3, 100, 1 << 20).unwrap()), vec!["12"]);
    sm.apply(vec![entry(6, release(1_000, 100))]).await.unwrap();
    let log = reader.read(0, 100, 1 << 20).unwrap();
    assert_eq!(values(&log), vec!["", "1", "11", "12", "10"]);
    assert_eq!(reader.delays(), DelaySummary::default());
    assert_eq!(queue_keys(sm.tree()), 0, "released records leave the tree");
}

#[tokio::test]
async fn a_release_in_the_apply_call_that_queued_and_the_queue_bounds() {
    let (_dir, _storage, reader, mut sm) = open_partition();
    // Queued and released by one apply call: the release reads what the call staged.
    let responses = sm
        .apply(vec![
            entry(1, delay(20, &[5, 5])),
            entry(2, release(10, 100)),
            entry(3, delay(30, &[50])),
        ])
        .await
        .unwrap();
    assert_eq!(outcome(&responses[0]), Some(DelayOutcome::Queued));
    assert_eq!(
        values(&reader.read(0, 100, 1 << 20).unwrap()),
        vec!["20", "21"]
    );
    assert_eq!(reader.delays().records, 1);
    assert_eq!(queue_keys(sm.tree()), 1);

    // Past the bound on records: refused, nothing queued.
    let over = MAX_DELAYED_RECORDS as u32;
    let full = delay_command(&DelayedRecords {
        due_ms: vec![100; over as usize],
        records: records(0, over, 1),
    });
    let responses = sm.apply(vec![entry(4, full)]).await.unwrap();
    assert_eq!(outcome(&responses[0]), Some(DelayOutcome::Full));
    assert_eq!(reader.delays().records, 1);
    assert_eq!(queue_keys(sm.tree()), 1);

    // Due times and records that disagree: skipped alike, nothing queued.
    let lying = delay_command(&DelayedRecords {
        due_ms: vec![1, 2, 3],
        records: records(0, 2, 1),
    });
    let responses = sm.apply(vec![entry(5, lying)]).await.unwrap();
    assert_eq!(outcome(&responses[0]), Some(DelayOutcome::Malformed));
    assert_eq!(reader.delays().records, 1);
    assert!(DelayedRecords {
        due_ms: vec![1],
        records: EncodedRecords {
            count: 1,
            bytes: bytes::Bytes::from_static(&[0xff; 3]),
        },
    }
    .check()
    .is_err());
}

/// Installs `sm`'s snapshot on a fresh replica and returns its reader and state machine.
async fn installed_copy(
    sm: &mut psubd_raft::StateMachine,
) -> (
    tempfile::TempDir,
    NodeStorage,
    super::PartitionReader,
    psubd_raft::StateMachine,
) {
    let snapshot = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let storage = NodeStorage::open(dir.path(), 1 << 20).unwrap();
    let (logic, reader) = PartitionLogic::new();
    let mut other = storage.state_machine(7, Box::new(logic)).unwrap();
    other
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    (dir, storage, reader, other)
}

#[tokio::test]
async fn the_delay_queue_travels_in_snapshots() {
    // Only delayed records, nothing ever appended: the snapshot still carries them.
    let (_dir, _storage, _reader, mut sm) = open_partition();
    sm.apply(vec![entry(1, delay(40, &[70, 60]))])
        .await
        .unwrap();
    let (_d, _s, copy, mut copy_sm) = installed_copy(&mut sm).await;
    assert_eq!(copy.delays().records, 2);
    assert_eq!(copy.delays().earliest_due_ms, Some(60));
    copy_sm
        .apply(vec![entry(2, release(100, 100))])
        .await
        .unwrap();
    assert_eq!(
        values(&copy.read(0, 100, 1 << 20).unwrap()),
        vec!["41", "40"]
    );

    // With a log too: the log, the queue, and the release after install as on the source.
    let (_dir, _storage, reader, mut sm) = open_partition();
    sm.apply(vec![
        appended(1, records(0, 3, 2)),
        entry(2, delay(50, &[10, 30])),
        entry(3, release(20, 100)),
        entry(4, delay(60, &[20])),
    ])
    .await
    .unwrap();
    let (_d, _s, copy, mut copy_sm) = installed_copy(&mut sm).await;
    assert_eq!(copy.bounds(), reader.bounds());
    assert_eq!(copy.delays(), reader.delays());
    for machine in [&mut sm, &mut copy_sm] {
        machine
            .apply(vec![entry(5, release(100, 100))])
            .await
            .unwrap();
    }
    let source = values(&reader.read(0, 100, 1 << 20).unwrap());
    assert_eq!(source, vec!["", "1", "2", "50", "60", "51"]);
    assert_eq!(values(&copy.read(0, 100, 1 << 20).unwrap()), source);
}
