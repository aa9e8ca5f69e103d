//! The fault file system (`jepsen/src/faultfs.rs`) mounted for real: unsynced writes are
//! lost at a power loss, synced ones are not; a capacity gives ENOSPC and a consistent
//! statvfs; a failing fsync answers EIO and drops the data it was to make durable.
//!
//! Needs root and /dev/fuse (CI has both). Elsewhere it says why it is skipped.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use psubd_jepsen::faultfs::FaultFs;

fn can_mount() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: FUSE needs root and /dev/fuse");
        return false;
    }
    true
}

fn read_all(p: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    File::open(p)
        .and_then(|mut f| f.read_to_end(&mut v))
        .expect("read the file back");
    v
}

fn sync_dir(p: &Path) {
    File::open(p)
        .and_then(|d| d.sync_all())
        .expect("fsync a directory");
}

fn statvfs_free(p: &Path) -> u64 {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a zeroed statvfs is a valid out-parameter; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    assert_eq!(rc, 0, "statvfs: {}", std::io::Error::last_os_error());
    st.f_bavail * st.f_frsize
}

#[test]
fn unsynced_writes_are_lost_at_power_loss_and_synced_ones_kept() {
    if !can_mount() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (fs, session) =
        FaultFs::mount(&dir.path().join("backing"), &dir.path().join("mnt")).expect("mount");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(mnt.join("sub")).expect("mkdir");
    let a = mnt.join("sub/a");
    {
        let mut f = File::create(&a).expect("create");
        sync_dir(&mnt);
        sync_dir(&mnt.join("sub"));
        f.write_all(b"hello ").expect("write");
        f.sync_data().expect("fdatasync");
        f.write_all(b"world").expect("write");
        // Reads see the dirty overlay.
        assert_eq!(read_all(&a), b"hello world");
        // An overwrite inside the synced part, unsynced.
        f.write_all_at(b"J", 0).expect("pwrite");
    }
    let b = mnt.join("b");
    std::fs::write(&b, vec![7u8; 10_000]).expect("write b");
    sync_dir(&mnt);
    assert_eq!(read_all(&a), b"Jello world");
    // Nothing of the unsynced data reached the backing file.
    assert_eq!(
        std::fs::read(dir.path().join("backing/sub/a")).expect("backing"),
        b"hello "
    );

    let lost = fs.power_loss();
    assert!(lost.files >= 2, "{lost:?}");
    assert_eq!(read_all(&a), b"hello ");
    assert_eq!(std::fs::metadata(&a).expect("stat").len(), 6);
    assert_eq!(read_all(&b), b"", "a never-synced file comes back empty");

    // A truncate below the synced length, then a write past it, then a sync.
    {
        let f = OpenOptions::new().write(true).open(&a).expect("open");
        f.set_len(2).expect("truncate");
        f.write_all_at(b"!", 4).expect("pwrite");
        assert_eq!(read_all(&a), b"he\0\0!");
        f.sync_all().expect("fsync");
    }
    fs.power_loss();
    assert_eq!(read_all(&a), b"he\0\0!");
    drop(session);
}

#[test]
fn namespace_operations_are_undone_at_power_loss_unless_their_directory_was_synced() {
    if !can_mount() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (fs, session) =
        FaultFs::mount(&dir.path().join("backing"), &dir.path().join("mnt")).expect("mount");
    let mnt = dir.path().join("mnt");
    let write_synced = |p: &Path, data: &[u8]| {
        let mut f = File::create(p).expect("create");
        f.write_all(data).expect("write");
        f.sync_all().expect("fsync");
    };
    write_synced(&mnt.join("kept"), b"old");
    write_synced(&mnt.join("gone"), b"x");
    sync_dir(&mnt);
    // Unsynced directory: a new file, a rename over `kept`, an unlink, a new directory.
    write_synced(&mnt.join("tmp"), b"new");
    std::fs::rename(mnt.join("tmp"), mnt.join("kept")).expect("rename");
    std::fs::remove_file(mnt.join("gone")).expect("unlink");
    std::fs::create_dir(mnt.join("d")).expect("mkdir");
    assert_eq!(read_all(&mnt.join("kept")), b"new");
    let lost = fs.power_loss();
    assert_eq!(lost.namespace_ops, 4, "{lost:?}");
    assert_eq!(read_all(&mnt.join("kept")), b"old");
    assert_eq!(read_all(&mnt.join("gone")), b"x");
    assert!(!mnt.join("tmp").exists());
    assert!(!mnt.join("d").exists());
    // The same with a directory sync: durable.
    write_synced(&mnt.join("tmp"), b"new");
    std::fs::rename(mnt.join("tmp"), mnt.join("kept")).expect("rename");
    std::fs::remove_file(mnt.join("gone")).expect("unlink");
    sync_dir(&mnt);
    assert_eq!(fs.power_loss().namespace_ops, 0);
    assert_eq!(read_all(&mnt.join("kept")), b"new");
    assert!(!mnt.join("gone").exists());
    assert!(!mnt.join("tmp").exists());
    drop(session);
}

#[test]
fn a_capacity_gives_enospc_and_statvfs_agrees() {
    if !can_mount() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (fs, session) =
        FaultFs::mount(&dir.path().join("backing"), &dir.path().join("mnt")).expect("mount");
    let mnt = dir.path().join("mnt");
    std::fs::write(mnt.join("x"), vec![1u8; 8192]).expect("write");
    assert_eq!(fs.used(), 8192);
    fs.set_capacity(Some(8192 + 4096));
    assert_eq!(statvfs_free(&mnt), 4096);
    let mut f = OpenOptions::new()
        .append(true)
        .open(mnt.join("x"))
        .expect("open");
    f.write_all(&[2u8; 4096]).expect("fits");
    let err = f.write_all(&[3u8; 1]).expect_err("past the capacity");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert_eq!(statvfs_free(&mnt), 0);
    fs.set_capacity(None);
    f.write_all(&[3u8; 1]).expect("room again");
    drop(f);
    drop(session);
}

#[test]
fn a_failing_fsync_answers_eio_and_drops_its_data() {
    if !can_mount() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (fs, session) =
        FaultFs::mount(&dir.path().join("backing"), &dir.path().join("mnt")).expect("mount");
    let p = dir.path().join("mnt/log");
    let mut f = File::create(&p).expect("create");
    f.write_all(b"durable").expect("write");
    f.sync_data().expect("fdatasync");
    f.write_all(b" lost").expect("write");
    fs.set_fail_sync(true);
    let err = f.sync_data().expect_err("EIO");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(fs.failed_syncs(), 1);
    assert_eq!(read_all(&p), b"durable");
    fs.set_fail_sync(false);
    f.sync_data().expect("fdatasync after the fault");
    drop(f);
    drop(session);
}
