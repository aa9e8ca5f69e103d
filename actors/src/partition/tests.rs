//! The partition state machine end to end: a [`PartitionLogic`] applied through a real
//! state machine on disk, read back through its [`PartitionReader`].

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use psubd_raft::{NodeStorage, StateMachine};

use bytes::Bytes;
use psubd_raft::{Command, Tree};

use super::batch_index::{IndexChange, LogBounds};
use super::command::{append_command, compact_command, decode_append_response, trim_command};
use super::compaction::{next_window_end, CompactCommand};
use super::fetched::FetchedRecords;
use super::key_index::lookup;
use super::layout::{base_offset_of, BATCHES_END, BATCH_PREFIX};
use super::stored::MAX_STORED_RUN_BYTES;
use super::{PartitionLogic, PartitionReader, ReadError};
use crate::record::BATCH_HEADER_LEN;
use crate::record::{join_batch, EncodedRecords, Record, RecordIter, ValueKind};
use crate::topic::CleanupPolicy;

pub(super) fn records(from: u32, count: u32, size: usize) -> EncodedRecords {
    let records: Vec<Record> = (from..from + count)
        .map(|i| Record {
            timestamp_ms: i as i64,
            kind: ValueKind::String,
            key: None,
            value: Some(Bytes::from(format!("{i:0size$}"))),
            headers: Vec::new(),
        })
        .collect();
    EncodedRecords::encode(&records).unwrap()
}

pub(super) fn entry(index: u64, command: Command) -> Entry<psubd_raft::TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(command),
    }
}

/// Entry `index` appending `records` as one request.
pub(super) fn appended(index: u64, records: EncodedRecords) -> Entry<psubd_raft::TypeConfig> {
    entry(index, append_command(&join_batch([&records].into_iter())))
}

/// The offsets of a read, as its iterator yields them.
fn offsets(fetched: &FetchedRecords) -> Vec<u64> {
    fetched.iter().map(|r| r.unwrap().0).collect()
}

pub(super) fn values(fetched: &FetchedRecords) -> Vec<String> {
    RecordIter::run(&fetched.bytes)
        .map(|r| {
            String::from_utf8(r.unwrap().value.unwrap().to_vec())
                .unwrap()
                .trim_start_matches('0')
                .to_string()
        })
        .collect()
}

/// A fresh partition replica (group 7) in a temporary directory: the directory (kept
/// alive), its storage (to reopen the replica), the reader and the state machine.
pub(super) fn open_partition() -> (
    tempfile::TempDir,
    NodeStorage,
    PartitionReader,
    StateMachine,
) {
    let dir = tempfile::tempdir().unwrap();
    let storage = NodeStorage::open(dir.path(), 1 << 20).unwrap();
    let (logic, reader) = PartitionLogic::new();
    let sm = storage.state_machine(7, Box::new(logic)).unwrap();
    (dir, storage, reader, sm)
}

#[tokio::test]
async fn offsets_are_dense_across_batches_and_reads_slice_them() {
    let (_dir, _storage, reader, mut sm) = open_partition();
    // Entry 1 carries two requests (3 + 2 records), entry 2 one request (4 records).
    let a = records(1, 3, 4);
    let b = records(4, 2, 4);
    let c = records(6, 4, 4);
    let responses = sm
        .apply(vec![
            entry(1, append_command(&join_batch([&a, &b].into_iter()))),
            entry(2, append_command(&join_batch([&c].into_iter()))),
        ])
        .await
        .unwrap();
    assert_eq!(decode_append_response(&responses[0]), Some(0));
    assert_eq!(decode_append_response(&responses[1]), Some(5));
    assert_eq!(
        reader.bounds(),
        LogBounds {
            log_start: 0,
            next_offset: 9
        }
    );

    // A read starting inside the first batch crosses into the second.
    let fetched = reader.read(2, 100, 1 << 20).unwrap();
    assert_eq!(
        (fetched.first_offset, fetched.count, fetched.high_watermark),
        (2, 7, 9)
    );
    assert_eq!(values(&fetched), vec!["3", "4", "5", "6", "7", "8", "9"]);

    // max_records and max_bytes cut the answer; one record always fits.
    assert_eq!(reader.read(4, 2, 1 << 20).unwrap().count, 2);
    assert_eq!(reader.read(0, 100, 1).unwrap().count, 1);

    // The end of the log is an empty answer; past it, out of range.
    assert_eq!(reader.read(9, 100, 1 << 20).unwrap().count, 0);
    assert!(matches!(
        reader.read(10, 100, 1 << 20),
        Err(ReadError::OutOfRange {
            high_watermark: 9,
            ..
        })
    ));
}

/// Seek by time: the first offset stamped at or after a time, through the time index and a
/// read; past the newest stamp, the high watermark; after a trim, never below the log start.
#[tokio::test]
async fn offsets_are_found_by_time() {
    let (_dir, _storage, reader, mut sm) = open_partition();
    // `records(from, ..)` stamps record i with i: offsets 0..5 hold stamps 1..=5, 5..10
    // hold 6..=10.
    sm.apply(vec![
        appended(1, records(1, 5, 4)),
        appended(2, records(6, 5, 4)),
    ])
    .await
    .unwrap();
    assert_eq!(reader.offset_for_time(i64::MIN).unwrap(), 0);
    assert_eq!(reader.offset_for_time(3).unwrap(), 2);
    assert_eq!(reader.offset_for_time(6).unwrap(), 5);
    assert_eq!(reader.offset_for_time(10).unwrap(), 9);
    assert_eq!(reader.offset_for_time(11).unwrap(), 10);
    sm.apply(vec![entry(3, trim_command(7))]).await.unwrap();
    assert_eq!(reader.offset_for_time(3).unwrap(), 7);
    assert_eq!(reader.offset_for_time(9).unwrap(), 8);
}

/// Regression (chaos harness, power and kill faults, seed 10): a read whose scan misses a
/// batch the bounds count (the state was being reloaded under it) must not answer the
/// high watermark as its next offset, or a group member skips that batch for good.
#[tokio::test]
async fn a_read_that_misses_a_counted_batch_is_refused_not_skipped() {
    use super::stored::BatchSummary;
    let (_dir, _storage, reader, mut sm) = open_partition();
    sm.apply(vec![
        appended(1, records(0, 3, 4)),
        appended(2, records(3, 3, 4)),
    ])
    .await
    .unwrap();
    assert_eq!(reader.read(0, 100, 1 << 20).unwrap().next_offset, 6);
    // The index (published with the bounds) counts a batch the tree scan cannot meet,
    // as while a snapshot load has cleared the tree and not yet written it back.
    let summary = BatchSummary {
        count: 1,
        bytes: 20,
        max_timestamp_ms: 0,
    };
    reader
        .shared()
        .publish_index(vec![IndexChange::Insert(5, summary)]);
    assert!(matches!(
        reader.read(0, 100, 1 << 20),
        Err(ReadError::NotReady)
    ));
    // A read stopped by its limit before the missing batch is still exact.
    assert_eq!(reader.read(0, 2, 1 << 20).unwrap().next_offset, 2);
}

#[tokio::test]
async fn a_large_entry_is_stored_in_bounded_batches_that_read_as_one_log() {
    let (_dir, storage, reader, mut sm) = open_partition();
    // 40 records of 1,000 bytes in one entry, then a small entry.
    let large = join_batch([&records(1, 40, 1000)].into_iter());
    assert!(large.len() > 4 * MAX_STORED_RUN_BYTES);
    let small = join_batch([&records(41, 2, 4)].into_iter());
    sm.apply(vec![
        entry(1, append_command(&large)),
        entry(2, append_command(&small)),
    ])
    .await
    .unwrap();

    let keys = batch_keys(sm.tree());
    assert!(keys.len() >= 5, "stored as {keys:?}");
    assert_eq!((keys[0], *keys.last().unwrap()), (0, 40));
    let mut stored_total = 0;
    for (key, value) in sm
        .tree()
        .range(&[BATCH_PREFIX], Some(&BATCHES_END))
        .map(Result::unwrap)
    {
        assert!(
            value.len() <= BATCH_HEADER_LEN + MAX_STORED_RUN_BYTES,
            "batch {key:?}"
        );
        stored_total += value.len() as u64 + 9;
    }
    assert_eq!(reader.stored_bytes(), stored_total);

    // Reads cross the pieces in order, from the start and from inside a piece.
    let all = reader.read(0, 1000, 1 << 20).unwrap();
    assert_eq!(offsets(&all), (0..42).collect::<Vec<u64>>());
    let expected: Vec<String> = (1..=42).map(|i| i.to_string()).collect();
    assert_eq!(values(&all), expected);
    let middle = reader.read(13, 5, 1 << 20).unwrap();
    assert_eq!(offsets(&middle), (13..18).collect::<Vec<u64>>());

    // A trim inside the second piece removes only the first.
    sm.apply(vec![entry(3, trim_command(keys[1] + 1))])
        .await
        .unwrap();
    assert_eq!(batch_keys(sm.tree()), keys[1..].to_vec());
    let read = reader.read(keys[1] + 1, 1000, 1 << 20).unwrap();
    assert_eq!(read.first_offset, keys[1] + 1);
    assert_eq!(*offsets(&read).last().unwrap(), 41);

    // A reopened replica indexes the same pieces.
    let before = reader.with_index(|index| index.clone());
    drop(sm);
    let (logic, reopened) = PartitionLogic::new();
    let _sm = storage.state_machine(7, Box::new(logic)).unwrap();
    assert_eq!(reopened.with_index(|index| index.clone()), before);
}

fn batch_keys(tree: &Tree) -> Vec<u64> {
    tree.range(&[BATCH_PREFIX], Some(&BATCHES_END))
        .map(|item| base_offset_of(&item.unwrap().0).unwrap())
        .collect()
}

#[tokio::test]
async fn trim_moves_the_log_start_removes_whole_batches_and_accounts_bytes() {
    let (_dir, _storage, reader, mut sm) = open_partition();
    let batches: Vec<Bytes> = (0..3)
        .map(|i| join_batch([&records(i * 5, 5, 8)].into_iter()))
        .collect();
    let total: u64 = batches.iter().map(|b| b.len() as u64 + 9).sum();
    sm.apply(
        batches
            .iter()
            .enumerate()
            .map(|(i, b)| entry(i as u64 + 1, append_command(b)))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    assert_eq!(reader.stored_bytes(), total);

    // A trim inside the second batch removes only the first (whole batches only).
    sm.apply(vec![entry(4, trim_command(7))]).await.unwrap();
    assert_eq!(
        reader.bounds(),
        LogBounds {
            log_start: 7,
            next_offset: 15
        }
    );
    assert_eq!(reader.stored_bytes(), total - (batches[0].len() as u64 + 9));
    assert_eq!(batch_keys(sm.tree()), vec![5, 10]);
    assert!(matches!(
        reader.read(6, 10, 1 << 20),
        Err(ReadError::OutOfRange { log_start: 7, .. })
    ));
    let fetched = reader.read(7, 100, 1 << 20).unwrap();
    assert_eq!((fetched.first_offset, fetched.count), (7, 8));

    // Never backwards, never past the high watermark; offsets continue after it.
    sm.apply(vec![entry(5, trim_command(3)), entry(6, trim_command(99))])
        .await
        .unwrap();
    assert_eq!(
        reader.bounds(),
        LogBounds {
            log_start: 15,
            next_offset: 15
        }
    );
    assert_eq!(reader.stored_bytes(), 0);
    assert!(batch_keys(sm.tree()).is_empty());
    let next = join_batch([&records(15, 2, 8)].into_iter());
    let responses = sm
        .apply(vec![entry(7, append_command(&next))])
        .await
        .unwrap();
    assert_eq!(decode_append_response(&responses[0]), Some(15));
}

#[tokio::test]
async fn a_snapshot_keeps_every_batch_its_bounds_claim_while_trims_run() {
    let (_dir, _storage, reader, mut sm) = open_partition();
    let batches: Vec<Bytes> = (0..4)
        .map(|i| join_batch([&records(i * 5, 5, 8)].into_iter()))
        .collect();
    sm.apply(
        batches
            .iter()
            .enumerate()
            .map(|(i, b)| entry(i as u64 + 1, append_command(b)))
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    sm.apply(vec![entry(5, trim_command(5))]).await.unwrap();

    // The plan is taken at log start 5; a trim to 15 lands before the range is read.
    let mut builder = sm.get_snapshot_builder().await;
    sm.apply(vec![entry(6, trim_command(15))]).await.unwrap();
    assert_eq!(reader.bounds().log_start, 15);
    sm.apply(vec![entry(7, append_command(&batches[0]))])
        .await
        .unwrap();
    // Held: the trimmed batches are still in the tree (but not readable).
    assert_eq!(batch_keys(sm.tree()), vec![5, 10, 15, 20]);
    assert!(reader.read(10, 1, 1 << 20).is_err());
    let snapshot = openraft::RaftSnapshotBuilder::build_snapshot(&mut builder)
        .await
        .unwrap();
    drop(builder);
    // Released: the next apply removes them.
    let more = join_batch([&records(25, 1, 8)].into_iter());
    sm.apply(vec![entry(8, append_command(&more))])
        .await
        .unwrap();
    assert_eq!(batch_keys(sm.tree()), vec![15, 20, 25]);

    // A fresh replica installing the snapshot has log start 5 and every batch from it.
    let (_other_dir, _other_storage, other_reader, mut other_sm) = open_partition();
    other_sm
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    assert_eq!(
        other_reader.bounds(),
        LogBounds {
            log_start: 5,
            next_offset: 20
        }
    );
    assert_eq!(other_reader.read(5, 100, 1 << 20).unwrap().count, 15);
    assert_eq!(batch_keys(other_sm.tree()), vec![5, 10, 15]);
    let retained: u64 = batches[1..].iter().map(|b| b.len() as u64 + 9).sum();
    assert_eq!(other_reader.stored_bytes(), retained);
}

/// Each phase runs in its own runtime; the first closes its storage, and the second
/// waits for the database lock to be released, as a restarted process would find it.
#[test]
fn state_survives_reopen_and_a_bad_command_is_skipped_alike() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let storage = NodeStorage::open(&path, 1 << 20).unwrap();
        let (logic, _) = PartitionLogic::new();
        let mut sm = storage.state_machine(7, Box::new(logic)).unwrap();
        let batch = join_batch([&records(0, 5, 2)].into_iter());
        // An append whose batch header is cut short.
        let garbage = append_command(&[1]);
        sm.apply(vec![entry(1, append_command(&batch)), entry(2, garbage)])
            .await
            .unwrap();
        storage.close().await.unwrap();
    });
    NodeStorage::wait_until_released(&path, std::time::Duration::from_secs(10)).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let storage = NodeStorage::open(&path, 1 << 20).unwrap();
        let (logic, reader) = PartitionLogic::new();
        let _sm = storage.state_machine(7, Box::new(logic)).unwrap();
        assert_eq!(reader.bounds().next_offset, 5);
        assert_eq!(reader.read(0, 100, 1 << 20).unwrap().count, 5);
    });
}

pub(super) fn keyed(key: &str, value: Option<&str>, ts: i64) -> Record {
    Record {
        timestamp_ms: ts,
        kind: ValueKind::String,
        key: Some(Bytes::copy_from_slice(key.as_bytes())),
        value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
        headers: Vec::new(),
    }
}

fn append(records: &[Record]) -> Command {
    let encoded = EncodedRecords::encode(records).unwrap();
    append_command(&join_batch([&encoded].into_iter()))
}

/// A whole pass over the batches below `pass_end` in one window, on a topic whose
/// `delete_retention_ms` is 100.
fn compact(pass_end: u64, now_ms: i64) -> Command {
    compact_command(&CompactCommand {
        pass_end,
        from: 0,
        to: pass_end,
        purge_before_ms: now_ms - 100,
    })
}

/// A pass over the batches below `pass_end` in the windows a leader holding `tree`
/// would choose (at most 64 batches each), with `delete_retention_ms` 100.
fn pass_in_windows(tree: &Tree, pass_end: u64, now_ms: i64) -> Vec<Command> {
    let mut commands = Vec::new();
    let mut from = 0;
    loop {
        let to = next_window_end(tree, from, pass_end).unwrap();
        commands.push(compact_command(&CompactCommand {
            pass_end,
            from,
            to,
            purge_before_ms: now_ms - 100,
        }));
        if to >= pass_end {
            return commands;
        }
        from = to;
    }
}

fn value_of(reader: &PartitionReader, key: &str) -> Option<(u64, String)> {
    reader.latest(key.as_bytes()).unwrap().map(|r| {
        let record = RecordIter::run(&r.encoded).next().unwrap().unwrap();
        (
            r.offset,
            String::from_utf8(record.value.unwrap().to_vec()).unwrap(),
        )
    })
}

/// The key index follows appends; a compact command (even in the same apply call as
/// the appends it compacts) keeps the latest record per key at its original offset,
/// drops old tombstones with their key, and reads slice the sparse batch.
#[tokio::test]
async fn compaction_keeps_latest_per_key_and_reads_slice_sparse_batches() {
    let dir = tempfile::tempdir().unwrap();
    let storage = NodeStorage::open(dir.path(), 1 << 20).unwrap();
    let (logic, reader) = PartitionLogic::with_policy(CleanupPolicy::Compact);
    let mut sm = storage.state_machine(7, Box::new(logic)).unwrap();
    sm.apply(vec![
        // 0..3
        entry(
            1,
            append(&[
                keyed("a", Some("a0"), 0),
                keyed("b", Some("b1"), 0),
                keyed("c", Some("c2"), 0),
            ]),
        ),
        // 3..6: c deleted long ago, a updated, d deleted just now
        entry(
            2,
            append(&[
                keyed("c", None, 0),
                keyed("a", Some("a4"), 0),
                keyed("d", None, 1_000),
            ]),
        ),
    ])
    .await
    .unwrap();
    assert_eq!(value_of(&reader, "a"), Some((4, "a4".into())));
    assert_eq!(value_of(&reader, "c"), None, "tombstoned");
    // Same apply call: an append of b, then a compaction up to 6 (written end 6).
    sm.apply(vec![
        entry(3, append(&[keyed("b", Some("b6"), 0)])),
        entry(4, compact(6, 1_050)),
    ])
    .await
    .unwrap();
    // The pass covered 0..6 in one chunk: survivors a@4 and d@5 (tombstone too young);
    // b@1 dropped (b6 is newer), c's tombstone purged.
    let fetched = reader.read(0, 100, 1 << 20).unwrap();
    assert_eq!((fetched.first_offset, fetched.count), (4, 3));
    assert!(
        fetched.offsets.is_empty(),
        "4, 5, 6 are consecutive: implied"
    );
    assert_eq!(fetched.next_offset, 7);
    assert_eq!(offsets(&fetched), vec![4, 5, 6]);
    assert_eq!(value_of(&reader, "b"), Some((6, "b6".into())));
    assert_eq!(value_of(&reader, "a"), Some((4, "a4".into())));
    assert_eq!(value_of(&reader, "c"), None);
    assert!(
        lookup(reader.shared().tree().unwrap(), b"c")
            .unwrap()
            .is_none(),
        "c's index entry went with its tombstone"
    );
    // Offsets never move: reads from inside the gap start at the next survivor.
    let from_one = reader.read(1, 100, 1 << 20).unwrap();
    assert_eq!(from_one.first_offset, 4);
    // max_records stops the read; next_offset then follows the last record.
    let one = reader.read(0, 1, 1 << 20).unwrap();
    assert_eq!((one.offsets.len(), one.count, one.next_offset), (0, 1, 5));
    // A later pass (after the tombstone aged) drops d and its key.
    sm.apply(vec![entry(5, compact(7, 5_000))]).await.unwrap();
    let fetched = reader.read(0, 100, 1 << 20).unwrap();
    assert_eq!(fetched.offsets, vec![4, 6]);
    assert_eq!(offsets(&fetched), vec![4, 6]);
    assert_eq!(
        reader.bounds().next_offset,
        7,
        "the high watermark never moves back"
    );
    // New appends continue the offsets.
    let responses = sm
        .apply(vec![entry(6, append(&[keyed("a", Some("a7"), 0)]))])
        .await
        .unwrap();
    assert_eq!(decode_append_response(&responses[0]), Some(7));
    assert_eq!(value_of(&reader, "a"), Some((7, "a7".into())));
    let scan = reader.scan_keys(b"", b"", 10).unwrap();
    let keys: Vec<_> = scan.records.iter().map(|r| r.key.clone()).collect();
    assert_eq!(
        keys,
        vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
    );
}

/// Reads cross compacted gaps and sparse batches up to the limits: every
/// record comes with its original offset, `next_offset` continues past the gaps, and
/// paging by records or by bytes yields every survivor exactly once.
#[tokio::test]
async fn reads_cross_sparse_batches_with_original_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let storage = NodeStorage::open(dir.path(), 1 << 20).unwrap();
    let (logic, reader) = PartitionLogic::with_policy(CleanupPolicy::Compact);
    let mut sm = storage.state_machine(7, Box::new(logic)).unwrap();
    // Entry i holds x{i}, hot, y{i} at 3i, 3i+1, 3i+2 (values name their offset); the
    // last entry a value and an old tombstone of "gone" at 300, 301.
    let value = |offset: u64| format!("v{offset:05}");
    let mut entries: Vec<_> = (0..100u64)
        .map(|i| {
            entry(
                i + 1,
                append(&[
                    keyed(&format!("x{i:03}"), Some(&value(3 * i)), 0),
                    keyed("hot", Some(&value(3 * i + 1)), 0),
                    keyed(&format!("y{i:03}"), Some(&value(3 * i + 2)), 0),
                ]),
            )
        })
        .collect();
    entries.push(entry(
        101,
        append(&[keyed("gone", Some(&value(300)), 0), keyed("gone", None, 0)]),
    ));
    sm.apply(entries).await.unwrap();
    // One window per command (at most 64 batches).
    let compacts: Vec<_> = pass_in_windows(sm.tree(), 302, 5_000)
        .into_iter()
        .enumerate()
        .map(|(i, command)| entry(102 + i as u64, command))
        .collect();
    assert_eq!(compacts.len(), 2);
    sm.apply(compacts).await.unwrap();
    assert!(
        batch_keys(sm.tree()).len() > 1,
        "the survivors span several stored batches"
    );
    // Survivors: x{i} and y{i}, hot only at 298; 300 and 301 gone (a trailing gap).
    let mut survivors: Vec<u64> = (0..100u64).flat_map(|i| [3 * i, 3 * i + 2]).collect();
    survivors.push(298);
    survivors.sort_unstable();
    let check = |fetched: &FetchedRecords| {
        for record in fetched.iter() {
            let (offset, view) = record.unwrap();
            assert_eq!(view.value, Some(value(offset).as_bytes()), "at {offset}");
        }
    };

    // One read returns every survivor at its offset and continues past the trailing gap.
    let all = reader.read(0, 1_000, 1 << 20).unwrap();
    check(&all);
    assert_eq!(offsets(&all), survivors);
    assert_eq!((all.first_offset, all.count as usize), (0, survivors.len()));
    assert_eq!((all.next_offset, all.high_watermark), (302, 302));

    // Limited by records: next_offset follows the last record; pages cover all once.
    let some = reader.read(0, 50, 1 << 20).unwrap();
    assert_eq!(offsets(&some), survivors[..50]);
    assert_eq!(some.next_offset, survivors[49] + 1);
    let page_through = |max_records: u32, max_bytes: usize| {
        let (mut offset, mut seen, mut pages) = (0, Vec::new(), 0);
        loop {
            let page = reader.read(offset, max_records, max_bytes).unwrap();
            check(&page);
            assert!(page.next_offset > offset || page.count == 0);
            if page.count == 0 {
                assert_eq!(page.next_offset, 302);
                return (seen, pages);
            }
            seen.extend(offsets(&page));
            offset = page.next_offset;
            pages += 1;
        }
    };
    assert_eq!(page_through(7, 1 << 20), (survivors.clone(), 29));

    // Limited by bytes: the record that did not fit is where the next read starts
    // (past the gap before it); one record always fits.
    let size = reader.read(0, 1, 1 << 20).unwrap().bytes.len();
    let ten = reader.read(0, 1_000, 10 * size).unwrap();
    assert_eq!(offsets(&ten), survivors[..10]);
    assert_eq!(ten.next_offset, survivors[10]);
    assert_eq!(page_through(1_000, 10 * size), (survivors.clone(), 21));
    let tiny = reader.read(0, 1_000, 1).unwrap();
    assert_eq!((offsets(&tiny), tiny.next_offset), (vec![0], 2));

    // From inside a gap: the next survivor; from inside the trailing gap: empty, at
    // the high watermark.
    let from_gap = reader.read(1, 3, 1 << 20).unwrap();
    assert_eq!(
        (offsets(&from_gap), from_gap.next_offset),
        (vec![2, 3, 5], 6)
    );
    let last = reader.read(299, 100, 1 << 20).unwrap();
    assert_eq!((offsets(&last), last.next_offset), (vec![299], 302));
    let trailing = reader.read(300, 100, 1 << 20).unwrap();
    assert_eq!(
        (trailing.count, trailing.first_offset, trailing.next_offset),
        (0, 302, 302)
    );
    let end = reader.read(302, 100, 1 << 20).unwrap();
    assert_eq!((end.count, end.next_offset), (0, 302));
}

/// Records and key views of a replica, for comparing replicas: every stored record with
/// its offset and value (`None` for a tombstone), and the view of keys k0..k9.
type Content = (Vec<(u64, Option<String>)>, Vec<Option<(u64, String)>>);

fn content(reader: &PartitionReader) -> Content {
    let fetched = reader
        .read(reader.bounds().log_start, 10_000, 1 << 30)
        .unwrap();
    let records = fetched
        .iter()
        .map(|r| {
            let (offset, view) = r.unwrap();
            let value = view.value.map(|v| String::from_utf8(v.to_vec()).unwrap());
            (offset, value)
        })
        .collect();
    let views = (0..10)
        .map(|k| value_of(reader, &format!("k{k}")))
        .collect();
    (records, views)
}

/// A compaction pass applied while a snapshot build holds the batch range runs
/// at once (it is not skipped, so no later write is needed for this replica to catch
/// up) and leaves the same records and key views as on a replica with no build; a
/// replica that installs the snapshot built meanwhile and replays the log after it ends
/// up with them too — including the survivors below the plan's high watermark, which a
/// rewrite into the batch above it would have let the replayed appends overwrite.
#[tokio::test]
async fn compaction_under_a_snapshot_hold_converges_with_other_replicas() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let storages: Vec<_> = dirs
        .iter()
        .map(|d| NodeStorage::open(d.path(), 1 << 20).unwrap())
        .collect();
    let mut replicas = Vec::new();
    for storage in &storages {
        let (logic, reader) = PartitionLogic::with_policy(CleanupPolicy::Compact);
        replicas.push((storage.state_machine(7, Box::new(logic)).unwrap(), reader));
    }
    let (mut held, mut free, mut fresh) = {
        let mut it = replicas.into_iter();
        (it.next().unwrap(), it.next().unwrap(), it.next().unwrap())
    };
    // Before the plan: 40 batches of 3 updates over k0..k9 (values name their offset),
    // then old tombstones of k8 and k9.
    let value = |offset: u64| format!("v{offset}");
    let mut before: Vec<_> = (0..40u64)
        .map(|i| {
            let records: Vec<Record> = (0..3)
                .map(|j| {
                    keyed(
                        &format!("k{}", (3 * i + j) % 10),
                        Some(&value(3 * i + j)),
                        0,
                    )
                })
                .collect();
            entry(i + 1, append(&records))
        })
        .collect();
    before.push(entry(
        41,
        append(&[keyed("k8", None, 0), keyed("k9", None, 0)]),
    ));
    for sm in [&mut held.0, &mut free.0] {
        sm.apply(before.clone()).await.unwrap();
    }
    let plan_high_watermark = held.1.bounds().next_offset;
    assert_eq!(plan_high_watermark, 122);

    // A snapshot build on `held` plans now and reads the range later.
    let mut builder = held.0.get_snapshot_builder().await;
    // After the plan: updates of k0 and k1, a fresh tombstone of k2, then one pass over
    // everything (the window spans the plan's high watermark), as the leader `free`
    // chooses it; k8's and k9's tombstones are old, k2's is young.
    let mut after = vec![
        entry(42, append(&[keyed("k0", Some(&value(122)), 0)])),
        entry(
            43,
            append(&[keyed("k1", Some(&value(123)), 0), keyed("k2", None, 1_000)]),
        ),
    ];
    for sm in [&mut held.0, &mut free.0] {
        sm.apply(after.clone()).await.unwrap();
    }
    let pass = pass_in_windows(free.0.tree(), 125, 1_000);
    assert_eq!(
        pass.len(),
        1,
        "one window, across the plan's high watermark"
    );
    after.push(entry(44, pass[0].clone()));
    for sm in [&mut held.0, &mut free.0] {
        sm.apply(vec![after[2].clone()]).await.unwrap();
    }

    // The held replica compacted at once, to what the free one holds: k3..k7 at their
    // last offsets, k0 and k1 updated, k2's young tombstone; k8, k9 gone with their keys.
    let want = content(&free.1);
    assert_eq!(content(&held.1), want);
    let offsets_kept: Vec<u64> = want.0.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets_kept, vec![113, 114, 115, 116, 117, 122, 123, 124]);
    assert_eq!(want.0[7], (124, None), "k2's tombstone is young: kept");
    assert_eq!(want.1[8], None);
    assert!(lookup(held.1.shared().tree().unwrap(), b"k9")
        .unwrap()
        .is_none());
    assert_eq!(held.1.compaction_progress(), free.1.compaction_progress());
    // Only the layout differs: the held replica kept its survivors below the plan's high
    // watermark in a batch below it.
    assert_eq!(batch_keys(free.0.tree()), vec![123]);
    assert_eq!(batch_keys(held.0.tree()), vec![120, 123]);

    // The snapshot read now sees the rewritten batches under the plan's bounds. A fresh
    // replica installs it and replays the log after the plan: it ends up alike.
    let snapshot = openraft::RaftSnapshotBuilder::build_snapshot(&mut builder)
        .await
        .unwrap();
    drop(builder);
    fresh
        .0
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    assert_eq!(fresh.1.bounds().next_offset, plan_high_watermark);
    fresh.0.apply(after.clone()).await.unwrap();
    assert_eq!(content(&fresh.1), want);

    // The hold is over: a later pass (k2's tombstone aged) is applied alike everywhere.
    let later = entry(45, pass_in_windows(free.0.tree(), 125, 5_000)[0].clone());
    for sm in [&mut held.0, &mut free.0, &mut fresh.0] {
        sm.apply(vec![later.clone()]).await.unwrap();
    }
    let want = content(&free.1);
    assert_eq!(want.0.len(), 7, "k2's tombstone is gone");
    assert_eq!(content(&held.1), want);
    assert_eq!(content(&fresh.1), want);
    assert_eq!(
        batch_keys(held.0.tree()),
        vec![123],
        "no hold: merged again"
    );
}

/// A window reads the batches that earlier commands of the same apply call staged
/// (appends and rewrites not yet in the tree): two passes and the appends between them in
/// one apply call leave what they leave when applied one by one.
#[tokio::test]
async fn windows_in_one_apply_call_see_what_earlier_commands_staged() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas = Vec::new();
    for dir in &dirs {
        let storage = NodeStorage::open(dir.path(), 1 << 20).unwrap();
        let (logic, reader) = PartitionLogic::with_policy(CleanupPolicy::Compact);
        let sm = storage.state_machine(7, Box::new(logic)).unwrap();
        replicas.push((storage, sm, reader));
    }
    let value = |offset: u64| format!("v{offset}");
    let entries: Vec<_> = vec![
        append(&[
            keyed("k0", Some(&value(0)), 0),
            keyed("k1", Some(&value(1)), 0),
        ]),
        append(&[keyed("k0", Some(&value(2)), 0), keyed("k2", None, 0)]),
        compact(4, 1_000),
        append(&[keyed("k1", Some(&value(4)), 0)]),
        compact(5, 1_000),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, command)| entry(i as u64 + 1, command))
    .collect();
    let (_, together, together_reader) = &mut replicas[0];
    together.apply(entries.clone()).await.unwrap();
    let want = content(together_reader);
    let (_, one_by_one, one_by_one_reader) = &mut replicas[1];
    for entry in entries {
        one_by_one.apply(vec![entry]).await.unwrap();
    }
    assert_eq!(content(one_by_one_reader), want);
    let offsets: Vec<u64> = want.0.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        vec![2, 4],
        "k0 and k1 at their latest; k2's old tombstone gone"
    );
}
