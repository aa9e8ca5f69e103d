//! State-machine trees whose writes reach the engine in bulk, not one batch per apply.
//!
//! Why: an engine batch has a fixed price well above its bytes (sled rolls its I/O buffer
//! twice per batch and range-syncs each roll), and a state machine applied one committed
//! entry per call, so small entries paid it once each, on every replica. A state machine
//! needs no durability of its own (docs/architecture.md § Storage and durability: the log keeps
//! every entry until a durable snapshot file covers it, and openraft re-applies the log after a
//! crash), so its batches may wait.
//!
//! A [`DeferredTree`] stages every applied batch in memory, where readers see it at once,
//! and writes what is staged to the engine as one batch: at every engine flush (the
//! flusher's background write-back runs one every 100 ms) and at once when more than
//! [`MAX_STAGED_BYTES`] are staged. Staged writes are the net effect of whole applied
//! batches, so what reaches the engine is always the state after some apply call: a crash
//! loses a suffix of applies, never part of one.
//!
//! [`DeferredTrees`] keeps one staging area per tree name, shared by every handle, and
//! [`DeferringEngine`] puts them under an engine: its flush writes every staged batch out
//! first, and dropping a tree discards what was staged for it.

use std::collections::{BTreeMap, HashMap};
use std::iter::Peekable;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures::future::BoxFuture;

use crate::engine::{Engine, EngineTree, PairIter, Tree, Value, WriteBatch};
use crate::error::StorageIoError;

/// Staged bytes (keys and values) past which an apply writes its tree out at once, so one
/// busy tree holds at most this much in memory between two engine flushes.
pub(crate) const MAX_STAGED_BYTES: usize = 4 << 20;

/// One staged write: the value (None = removed) and the sequence number of the apply that
/// staged it, so a write-out removes only what it wrote.
struct Staged {
    value: Option<Value>,
    seq: u64,
}

impl Staged {
    /// Bytes this write stages under a key of `key_len` bytes.
    fn bytes(&self, key_len: usize) -> usize {
        key_len + self.value.as_ref().map_or(0, |v| v.len())
    }
}

#[derive(Default)]
struct Staging {
    writes: BTreeMap<Vec<u8>, Staged>,
    /// Sum of [`Staged::bytes`] over `writes`.
    bytes: usize,
    /// Sequence number of the last apply.
    seq: u64,
    /// The tree was dropped: nothing is written out any more.
    dropped: bool,
}

impl Staging {
    /// Forgets every staged write.
    fn clear(&mut self) {
        self.writes.clear();
        self.bytes = 0;
    }
}

/// A tree whose applied batches are staged in memory and written to the engine in bulk. See
/// the module docs.
pub(crate) struct DeferredTree {
    engine_tree: Tree,
    staging: RwLock<Staging>,
    /// Held for a whole write-out (and by `clear` and `discard`), so write-outs never
    /// overlap and none lands after a clear or a drop.
    writing: Mutex<()>,
    /// Something was staged since the last engine flush's write-out looked, so the
    /// flush (ten a second) visits only the trees that were written: on a node of
    /// thousands of idle groups, visiting every tree was a tenth of its idle CPU.
    dirty: AtomicBool,
}

impl DeferredTree {
    fn staging(&self) -> RwLockReadGuard<'_, Staging> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters more than losing the process would: keep serving.
        self.staging.read().unwrap_or_else(|e| e.into_inner())
    }

    fn staging_mut(&self) -> RwLockWriteGuard<'_, Staging> {
        self.staging.write().unwrap_or_else(|e| e.into_inner())
    }

    fn writing(&self) -> MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes everything staged to the engine as one batch (blocking).
    ///
    /// # Errors
    /// The engine's; what was staged stays staged, for the next write-out.
    pub(crate) fn write_out(&self) -> Result<(), StorageIoError> {
        let _writing = self.writing();
        let mut batch = WriteBatch::default();
        let written: Vec<(Vec<u8>, u64)> = {
            let staging = self.staging();
            if staging.dropped || staging.writes.is_empty() {
                return Ok(());
            }
            let mut written = Vec::with_capacity(staging.writes.len());
            for (key, staged) in &staging.writes {
                batch.stage(key.clone(), staged.value.clone());
                written.push((key.clone(), staged.seq));
            }
            written
        };
        self.engine_tree.apply(batch)?;
        let mut staging = self.staging_mut();
        for (key, seq) in written {
            // Applied again since the snapshot above: the newer write stays staged.
            if staging.writes.get(&key).is_some_and(|s| s.seq == seq) {
                if let Some(staged) = staging.writes.remove(&key) {
                    staging.bytes -= staged.bytes(key.len());
                }
            }
        }
        Ok(())
    }

    /// Forgets everything staged and writes nothing more (the tree is being dropped).
    fn discard(&self) {
        let _writing = self.writing();
        let mut staging = self.staging_mut();
        staging.clear();
        staging.dropped = true;
    }

    /// The greatest pair below `key` (or at it, when `inclusive`) in the merged view.
    fn last_under(
        &self,
        key: &[u8],
        inclusive: bool,
    ) -> Result<Option<(Value, Value)>, StorageIoError> {
        let staging = self.staging();
        let (mut key, mut inclusive) = (key, inclusive);
        loop {
            let upper = if inclusive {
                Bound::Included(key)
            } else {
                Bound::Excluded(key)
            };
            let staged = staging
                .writes
                .range::<[u8], _>((Bound::Unbounded, upper))
                .next_back();
            let stored = if inclusive {
                self.engine_tree.get_at_or_before(key)?
            } else {
                self.engine_tree.get_before(key)?
            };
            let Some((staged_key, staged)) = staged else {
                return Ok(stored);
            };
            if let Some((stored_key, stored_value)) = stored {
                if stored_key.as_ref() > staged_key.as_slice() {
                    // No staged write between it and the bound: it stands.
                    return Ok(Some((stored_key, stored_value)));
                }
            }
            match &staged.value {
                Some(value) => return Ok(Some((Value::from(staged_key.clone()), value.clone()))),
                // Removed (hiding a stored pair with that key too): look below it.
                None => (key, inclusive) = (staged_key.as_slice(), false),
            }
        }
    }
}

impl EngineTree for DeferredTree {
    fn get(&self, key: &[u8]) -> Result<Option<Value>, StorageIoError> {
        if let Some(staged) = self.staging().writes.get(key) {
            return Ok(staged.value.clone());
        }
        self.engine_tree.get(key)
    }

    fn get_at_or_before(&self, key: &[u8]) -> Result<Option<(Value, Value)>, StorageIoError> {
        self.last_under(key, true)
    }

    fn get_before(&self, key: &[u8]) -> Result<Option<(Value, Value)>, StorageIoError> {
        self.last_under(key, false)
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>) -> PairIter {
        // The staged writes in the range as they are now (values are shared, not copied);
        // the engine's pairs are read lazily. An empty range (end <= start) stages nothing:
        // a map range with its end before its start would panic.
        let staged: Vec<(Vec<u8>, Option<Value>)> = match end {
            Some(end) if end <= start => Vec::new(),
            _ => self
                .staging()
                .writes
                .range::<[u8], _>((
                    Bound::Included(start),
                    end.map_or(Bound::Unbounded, Bound::Excluded),
                ))
                .map(|(key, staged)| (key.clone(), staged.value.clone()))
                .collect(),
        };
        Box::new(Merged {
            staged: staged.into_iter().peekable(),
            stored: (Box::new(self.engine_tree.range(start, end)) as PairIter).peekable(),
        })
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), StorageIoError> {
        let over = {
            let mut staging = self.staging_mut();
            if staging.dropped {
                return Ok(());
            }
            staging.seq += 1;
            let seq = staging.seq;
            for (key, value) in batch.into_ops() {
                let key_len = key.len();
                let staged = Staged { value, seq };
                staging.bytes += staged.bytes(key_len);
                // One map lookup per write: the replaced write's bytes come back with it.
                if let Some(old) = staging.writes.insert(key, staged) {
                    staging.bytes -= old.bytes(key_len);
                }
            }
            // Under the staging lock: a write-out that sees the flag sees what it flags.
            self.dirty.store(true, Ordering::Release);
            staging.bytes > MAX_STAGED_BYTES
        };
        if over {
            self.write_out()?;
        }
        Ok(())
    }

    fn clear(&self) -> Result<(), StorageIoError> {
        let _writing = self.writing();
        self.staging_mut().clear();
        self.engine_tree.clear()
    }
}

/// Staged writes merged over the engine's pairs, ascending; a staged write wins over the
/// engine's pair with the same key, and a staged removal hides it.
struct Merged {
    staged: Peekable<std::vec::IntoIter<(Vec<u8>, Option<Value>)>>,
    stored: Peekable<PairIter>,
}

impl Iterator for Merged {
    type Item = Result<(Value, Value), StorageIoError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let take_staged = match (self.staged.peek(), self.stored.peek()) {
                (None, None) => return None,
                (None, Some(_)) | (Some(_), Some(Err(_))) => false,
                (Some(_), None) => true,
                (Some((staged_key, _)), Some(Ok((stored_key, _)))) => {
                    match staged_key.as_slice().cmp(stored_key.as_ref()) {
                        std::cmp::Ordering::Less => true,
                        std::cmp::Ordering::Equal => {
                            // Shadowed by the staged write.
                            self.stored.next();
                            true
                        }
                        std::cmp::Ordering::Greater => false,
                    }
                }
            };
            if !take_staged {
                return self.stored.next();
            }
            if let Some((key, Some(value))) = self.staged.next() {
                return Some(Ok((Value::from(key), value)));
            }
            // A staged removal: nothing to yield for its key.
        }
    }
}

/// The staging areas of one engine's deferred trees, by tree name. Cloning shares them.
#[derive(Clone, Default)]
pub(crate) struct DeferredTrees {
    /// A tree stays here after its last handle is dropped until a write-out finds it with
    /// nothing staged, so closing a state machine never loses what it staged, and a tree
    /// reopened meanwhile sees it.
    trees: Arc<Mutex<HashMap<String, Arc<DeferredTree>>>>,
}

impl DeferredTrees {
    fn trees(&self) -> MutexGuard<'_, HashMap<String, Arc<DeferredTree>>> {
        self.trees.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The deferred tree `name` of `engine`: the one already here if any (two staging areas
    /// of one tree would diverge), else a new one.
    ///
    /// # Errors
    /// The engine's, if the tree cannot be opened.
    pub(crate) fn open(&self, engine: &dyn Engine, name: &str) -> Result<Tree, StorageIoError> {
        let mut trees = self.trees();
        if let Some(tree) = trees.get(name) {
            return Ok(Tree::from_engine_tree(tree.clone()));
        }
        let tree = Arc::new(DeferredTree {
            engine_tree: engine.open_tree(name)?,
            staging: RwLock::default(),
            writing: Mutex::new(()),
            dirty: AtomicBool::new(false),
        });
        trees.insert(name.to_string(), tree.clone());
        Ok(Tree::from_engine_tree(tree))
    }

    /// Writes every tree's staged batch to the engine (blocking), then forgets the trees
    /// no handle holds any more and nothing is staged in.
    ///
    /// # Errors
    /// The first engine error; the other trees are still written out.
    pub(crate) fn write_out_all(&self) -> Result<(), StorageIoError> {
        let dirty: Vec<Arc<DeferredTree>> = self
            .trees()
            .values()
            .filter(|tree| tree.dirty.swap(false, Ordering::AcqRel))
            .cloned()
            .collect();
        let mut first_error = None;
        for tree in dirty {
            if let Err(error) = tree.write_out() {
                // Still staged: the next write-out must visit it again.
                tree.dirty.store(true, Ordering::Release);
                first_error.get_or_insert(error);
            }
        }
        // Under the lock no handle can be made, so a count of 1 (this map's) stays 1.
        self.trees()
            .retain(|_name, tree| Arc::strong_count(tree) > 1 || !tree.staging().writes.is_empty());
        first_error.map_or(Ok(()), Err)
    }

    /// Forgets what is staged for `name` and stops its handles writing (before a drop).
    fn discard(&self, name: &str) {
        if let Some(tree) = self.trees().remove(name) {
            tree.discard();
        }
    }
}

/// An engine whose deferred trees ([`DeferredTrees::open`]) are written out before each of its
/// flushes, so [`Engine::flush`] still makes every visible write durable.
pub(crate) struct DeferringEngine {
    engine: Arc<dyn Engine>,
    deferred: DeferredTrees,
}

impl DeferringEngine {
    /// Puts `deferred` under `engine`.
    pub(crate) fn new(engine: Arc<dyn Engine>, deferred: DeferredTrees) -> Self {
        Self { engine, deferred }
    }
}

impl Engine for DeferringEngine {
    fn open_tree(&self, name: &str) -> Result<Tree, StorageIoError> {
        self.engine.open_tree(name)
    }

    fn tree_exists(&self, name: &str) -> bool {
        self.engine.tree_exists(name)
    }

    fn tree_names(&self) -> Vec<String> {
        self.engine.tree_names()
    }

    fn drop_tree(&self, name: &str) -> Result<(), StorageIoError> {
        self.deferred.discard(name);
        self.engine.drop_tree(name)
    }

    fn flush(&self) -> BoxFuture<'static, Result<(), StorageIoError>> {
        let deferred = self.deferred.clone();
        let engine = self.engine.clone();
        Box::pin(async move {
            crate::blocking::blocking("write out deferred state", move || deferred.write_out_all())
                .await?;
            engine.flush().await
        })
    }

    fn size_on_disk(&self) -> Result<u64, StorageIoError> {
        self.engine.size_on_disk()
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::engine::sled_engine::sled_engine_for_tests;

    struct Fixture {
        _dir: tempfile::TempDir,
        sled: Arc<dyn Engine>,
        trees: DeferredTrees,
        engine: DeferringEngine,
    }

    impl Fixture {
        /// The deferred tree `name` and the engine's own tree under it.
        fn open(&self, name: &str) -> (Tree, Tree) {
            (
                self.trees.open(self.sled.as_ref(), name).unwrap(),
                self.sled.open_tree(name).unwrap(),
            )
        }
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let sled = sled_engine_for_tests(dir.path());
        let trees = DeferredTrees::default();
        let engine = DeferringEngine::new(sled.clone(), trees.clone());
        Fixture {
            _dir: dir,
            sled,
            trees,
            engine,
        }
    }

    fn pairs(
        iter: impl Iterator<Item = Result<(Value, Value), StorageIoError>>,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        iter.map(|pair| {
            let (k, v) = pair.unwrap();
            (k.to_vec(), v.to_vec())
        })
        .collect()
    }

    fn batch(ops: &[(&[u8], Option<&[u8]>)]) -> WriteBatch {
        let mut batch = WriteBatch::default();
        for (key, value) in ops {
            match value {
                Some(value) => batch.insert(key.to_vec(), value.to_vec()),
                None => batch.remove(key.to_vec()),
            }
        }
        batch
    }

    #[test]
    fn applies_are_read_at_once_and_reach_the_engine_only_when_written_out() {
        let f = fixture();
        let (tree, stored) = f.open("sm/1");
        tree.apply(batch(&[(b"a", Some(b"1")), (b"b", Some(b"2"))]))
            .unwrap();
        tree.apply(batch(&[(b"a", None), (b"c", Some(b"3"))]))
            .unwrap();

        assert_eq!(tree.get(b"b").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(tree.get(b"a").unwrap(), None);
        assert_eq!(pairs(stored.range(b"", None)), vec![]);

        f.trees.write_out_all().unwrap();
        let expected = vec![
            (b"b".to_vec(), b"2".to_vec()),
            (b"c".to_vec(), b"3".to_vec()),
        ];
        assert_eq!(pairs(stored.range(b"", None)), expected);
        assert_eq!(pairs(tree.range(b"", None)), expected);

        // A tree reopened after its last handle was dropped still sees what was staged.
        tree.apply(batch(&[(b"d", Some(b"4"))])).unwrap();
        drop(tree);
        let again = f.trees.open(f.sled.as_ref(), "sm/1").unwrap();
        assert_eq!(again.get(b"d").unwrap().as_deref(), Some(&b"4"[..]));
        drop(again);
        f.trees.write_out_all().unwrap();
        assert_eq!(stored.get(b"d").unwrap().as_deref(), Some(&b"4"[..]));
        assert!(
            f.trees.trees().is_empty(),
            "an unheld, written-out tree is forgotten"
        );
    }

    #[tokio::test]
    async fn an_engine_flush_writes_out_first_and_a_dropped_tree_writes_nothing() {
        let f = fixture();
        let (tree, stored) = f.open("sm/1");
        tree.apply(batch(&[(b"k", Some(b"v"))])).unwrap();
        f.engine.flush().await.unwrap();
        assert_eq!(stored.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));

        tree.apply(batch(&[(b"late", Some(b"v"))])).unwrap();
        f.engine.drop_tree("sm/1").unwrap();
        // The old handle can neither stage nor write anything into a tree of that name.
        tree.apply(batch(&[(b"later", Some(b"v"))])).unwrap();
        f.engine.flush().await.unwrap();
        assert!(!f.sled.tree_exists("sm/1"));
        // A tree made again under that name starts empty: nothing staged before the drop
        // is read or written there.
        let fresh = f.trees.open(f.sled.as_ref(), "sm/1").unwrap();
        assert_eq!(fresh.get(b"late").unwrap(), None);
        assert_eq!(fresh.get(b"later").unwrap(), None);
        f.engine.flush().await.unwrap();
        assert_eq!(
            f.sled.open_tree("sm/1").unwrap().get(b"late").unwrap(),
            None
        );
    }

    #[test]
    fn a_large_apply_is_written_out_at_once() {
        let f = fixture();
        let (tree, stored) = f.open("sm/1");
        tree.apply(batch(&[(b"small", Some(b"v"))])).unwrap();
        assert_eq!(stored.get(b"small").unwrap(), None);
        let large = vec![7u8; MAX_STAGED_BYTES];
        tree.apply(batch(&[(b"large", Some(&large))])).unwrap();
        assert_eq!(stored.get(b"small").unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(
            stored.get(b"large").unwrap().map(|v| v.len()),
            Some(large.len())
        );
    }

    /// Random applies, removals and write-outs over a small key space; after every step every
    /// read of the tree must agree with a plain map holding the same writes.
    #[test]
    fn reads_agree_with_a_model_whatever_is_staged_or_written() {
        let f = fixture();
        let tree = f.trees.open(f.sled.as_ref(), "sm/1").unwrap();
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut rng = StdRng::seed_from_u64(7);
        let key = |rng: &mut StdRng| vec![rng.gen_range(b'a'..=b'p'), rng.gen_range(b'0'..=b'3')];
        let stored = |pair: Option<(Value, Value)>| pair.map(|(k, v)| (k.to_vec(), v.to_vec()));
        let modeled =
            |pair: Option<(&Vec<u8>, &Vec<u8>)>| pair.map(|(k, v)| (k.clone(), v.clone()));
        for step in 0..2_000u32 {
            match rng.gen_range(0..10) {
                0 => f.trees.write_out_all().unwrap(),
                _ => {
                    let mut batch = WriteBatch::default();
                    for _ in 0..rng.gen_range(1..6) {
                        let k = key(&mut rng);
                        if rng.gen_bool(0.35) {
                            batch.remove(k.clone());
                            model.remove(&k);
                        } else {
                            let v = step.to_be_bytes().to_vec();
                            batch.insert(k.clone(), v.clone());
                            model.insert(k, v);
                        }
                    }
                    tree.apply(batch).unwrap();
                }
            }
            let probe = key(&mut rng);
            assert_eq!(
                tree.get(&probe).unwrap().map(|v| v.to_vec()),
                model.get(&probe).cloned(),
                "get at step {step}"
            );
            assert_eq!(
                stored(tree.get_at_or_before(&probe).unwrap()),
                modeled(model.range(..=probe.clone()).next_back()),
                "get_at_or_before at step {step}"
            );
            assert_eq!(
                stored(tree.get_before(&probe).unwrap()),
                modeled(model.range(..probe.clone()).next_back()),
                "get_before at step {step}"
            );
            let end = key(&mut rng);
            let expected: Vec<_> = model
                .range(probe.clone()..)
                .take_while(|(k, _)| **k < end)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(
                pairs(tree.range(&probe, Some(&end))),
                expected,
                "range at step {step}"
            );
        }
    }
}
