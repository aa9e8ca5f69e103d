//! Storage faults a user can run into: a disk filling up while clients publish.
//!
//! Node 1's data directory sits on its own small tmpfs (mounting one needs root, as CI runs;
//! elsewhere the test says it cannot run and passes without checking anything), so its
//! free space can be taken and given back without touching the machine's disk.
//!
//! Needs the binary: `cargo build -p psubd` first.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use psubd_tests::{eventually, expect_error, Cluster, NewRecord, NodeClient, PublishOutcome};
use serde_json::{json, Value};
use support::{assert_all_present, Acked};

/// Size of node 1's file system.
const DISK_BYTES: u64 = 192 << 20;

/// The free-space threshold every node runs with.
const MIN_FREE_BYTES: u64 = 64 << 20;

/// How long a change of free space may take to reach every partition leader: the node
/// measures once a second and tells its peers at once.
const SPACE_NOTICED_WITHIN: Duration = Duration::from_secs(10);

/// Time allowed for a publish.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(15);

/// A tmpfs of [`DISK_BYTES`] mounted on a directory, unmounted when dropped.
struct SmallDisk {
    at: PathBuf,
}

impl SmallDisk {
    /// Mounts it on `at`, or says why it cannot.
    fn mount(at: &Path) -> Result<SmallDisk, String> {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={DISK_BYTES}"), "tmpfs"])
            .arg(at)
            .status()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !status.success() {
            return Err(format!("mount -t tmpfs failed ({status}); it needs root"));
        }
        Ok(SmallDisk {
            at: at.to_path_buf(),
        })
    }

    /// Free bytes on it now.
    fn free_bytes(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.at)
            .output()
            .expect("run df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|line| line.trim().parse().ok())
            .expect("df prints the free bytes")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

/// Waits until `GET /readyz` on `node` reports the storage state `state`.
async fn await_storage_state(node: &NodeClient, state: &str) {
    eventually(
        SPACE_NOTICED_WITHIN,
        &format!("storage state {state} on {}", node.base()),
        || async {
            let ready = node.try_get_json("/readyz").await?;
            match ready.pointer("/storage/state").and_then(Value::as_str) {
                Some(now) if now == state => Ok(()),
                now => Err(format!("storage state {now:?}")),
            }
        },
    )
    .await;
}

fn batch(from: usize, n: usize) -> Vec<NewRecord> {
    (from..from + n)
        .map(|i| NewRecord::keyed(format!("k{i}"), json!({"i": i, "pad": "x".repeat(200)})))
        .collect()
}

/// Publishes `records` through `node`, expecting every one acknowledged.
async fn publish_acked(node: &NodeClient, topic: &str, records: Vec<NewRecord>) -> Vec<Acked> {
    match node.try_publish(topic, &records, PUBLISH_TIMEOUT).await {
        PublishOutcome::Acked(reports) => Acked::from_publish(&records, &reports),
        other => panic!("publish through {}: {other:?}", node.base()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_records_keeps_reads_and_recovers_without_a_restart() {
    let mount_error = std::sync::Mutex::new(None);
    let disk = std::sync::Mutex::new(None);
    let min_free = MIN_FREE_BYTES.to_string();
    let mut cluster =
        Cluster::start_prepared(3, &[("PSUBD_MIN_FREE_BYTES", &min_free)], |id, dir| {
            if id == 1 {
                match SmallDisk::mount(dir) {
                    Ok(mounted) => *disk.lock().unwrap() = Some(mounted),
                    Err(e) => *mount_error.lock().unwrap() = Some(e),
                }
            }
        })
        .await;
    if let Some(why) = mount_error.into_inner().unwrap() {
        eprintln!("SKIPPED: node 1 needs a small file system of its own: {why}");
        return;
    }
    let disk = disk.into_inner().unwrap().expect("mounted");
    let topic = "filling";
    let via = cluster.node(2);
    via.create_topic(topic, 3, 3).await;

    // Before: records are taken.
    let mut acked = publish_acked(&via, topic, batch(0, 300)).await;

    // Node 1's disk fills up (a ballast file leaves half the threshold free).
    let ballast = cluster.data_dir(1).join("ballast");
    let fill = disk.free_bytes().saturating_sub(MIN_FREE_BYTES / 2);
    std::fs::write(&ballast, vec![0u8; fill as usize]).expect("write the ballast");
    let node1 = cluster.node(1);
    await_storage_state(&node1, "low_space").await;

    // Every partition has a replica on node 1, so every leader refuses new records with
    // 507, whichever node it is on. Until node 1's word reaches a leader, a publish may
    // still be taken: those records count as acknowledged like any other.
    let taken_meanwhile = std::sync::Mutex::new(Vec::new());
    let refusal = eventually(SPACE_NOTICED_WITHIN, "a publish refused with 507", || {
        let via = &via;
        let taken = &taken_meanwhile;
        async move {
            // One partition, so the answer is that partition's (no 207 mixing leaders that
            // have heard and leaders that have not).
            let records: Vec<NewRecord> = batch(10_000, 3)
                .into_iter()
                .map(|r| NewRecord {
                    partition: Some(0),
                    ..r
                })
                .collect();
            let resp = via
                .http()
                .post(via.url(&format!("/v1/topics/{topic}/records?acks=all")))
                .json(&json!({ "records": records }))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            match resp.status().as_u16() {
                507 => Ok(resp),
                200 => {
                    let body: Value = resp.json().await.map_err(|e| e.to_string())?;
                    let reports: Vec<psubd_tests::DeliveryReport> =
                        serde_json::from_value(body["offsets"].clone())
                            .map_err(|e| e.to_string())?;
                    taken
                        .lock()
                        .unwrap()
                        .extend(Acked::from_publish(&records, &reports));
                    Err("still taken".into())
                }
                status => Err(format!(
                    "status {status}: {}",
                    resp.text().await.unwrap_or_default()
                )),
            }
        }
    })
    .await;
    acked.extend(taken_meanwhile.into_inner().unwrap());
    assert!(
        refusal.headers().contains_key(reqwest::header::RETRY_AFTER),
        "a 507 tells when to retry"
    );
    let error = expect_error(
        refusal,
        507,
        "insufficient_storage",
        "publish to a full disk",
    )
    .await;
    assert!(error.retriable, "insufficient_storage is retriable");
    assert_eq!(error.error_code, 50701);

    // Reads go on, on the full node too.
    assert_all_present(&cluster, topic, &acked, &[1, 2, 3], PUBLISH_TIMEOUT).await;

    // Space returns: publishing resumes by itself, without a restart.
    std::fs::remove_file(&ballast).expect("remove the ballast");
    await_storage_state(&node1, "ok").await;
    let resumed = eventually(SPACE_NOTICED_WITHIN, "publishing to resume", || {
        let via = &via;
        async move {
            let records = batch(20_000, 300);
            match via.try_publish(topic, &records, PUBLISH_TIMEOUT).await {
                PublishOutcome::Acked(reports) => Ok(Acked::from_publish(&records, &reports)),
                // A leader that has not yet heard that space is back refuses its share.
                PublishOutcome::Rejected { status: 507, body }
                | PublishOutcome::Partial { body } => Err(body),
                other => panic!("publish after space returned: {other:?}"),
            }
        }
    })
    .await;
    acked.extend(resumed);

    // Nothing acknowledged was lost, on any replica.
    assert_all_present(&cluster, topic, &acked, &[1, 2, 3], PUBLISH_TIMEOUT).await;
    cluster.stop_all().await;
    drop(disk);
}
