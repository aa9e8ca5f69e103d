//! The storage engine seam: named trees of ordered keys in one database with one durability
//! point ([`Engine`], [`Tree`], [`WriteBatch`]), with the sled implementation under it and the
//! deferred state trees above it.
//!
//! Everything above this module (log stores, state machines, snapshots) reaches the database
//! only through these types, as docs/architecture.md § Storage and durability asks: if the
//! chaos tests ever find sled wanting, another engine can be put under the two traits without
//! touching the Raft code. sled is named only in this module.
//!
//! - `sled_engine`: the sled implementation and the syncs that make its flush durable.
//! - `deferred`: state trees whose applied batches are staged in memory and written to the
//!   engine in bulk at the next flush.

pub(crate) mod deferred;
pub(crate) mod sled_engine;

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use futures::future::BoxFuture;

use std::sync::Arc;

use crate::error::StorageIoError;

// ---------------------------------------------------------------------------------------------
// Engine-neutral values and batches
// ---------------------------------------------------------------------------------------------

/// A stored key or value, shared with the engine's cache without copying.
///
/// Cloning is cheap (reference counted). Turn it into [`Bytes`] with [`Value::into_bytes`] to
/// hand it to an HTTP body without a copy.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Value(sled::IVec);

impl Value {
    /// The value as `Bytes`, sharing the engine's buffer (no copy).
    pub fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self.0)
    }
}

impl Deref for Value {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Value {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<&[u8]> for Value {
    fn from(bytes: &[u8]) -> Self {
        Value(sled::IVec::from(bytes))
    }
}

impl From<Vec<u8>> for Value {
    fn from(bytes: Vec<u8>) -> Self {
        Value(sled::IVec::from(bytes))
    }
}

impl fmt::Debug for Value {
    // Never log payloads: only their size.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Value({} bytes)", self.0.len())
    }
}

/// Writes to one tree, applied atomically (all or none, also across a crash).
///
/// Operations apply in the order they were staged: a later write to the same key wins.
#[derive(Default)]
pub struct WriteBatch {
    /// Values are held as [`Value`]s, so the engine (or a deferred tree) takes them without
    /// another copy.
    ops: Vec<(Vec<u8>, Option<Value>)>,
    /// Sum of key and value lengths staged so far, to bound batches (e.g. snapshot loading).
    bytes: usize,
}

impl WriteBatch {
    /// Stages `key = value`.
    pub fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.stage(key.into(), Some(Value::from(value.into())));
    }

    /// Stages `key = value` for a value already made (e.g. copied once from a slice).
    pub fn insert_value(&mut self, key: impl Into<Vec<u8>>, value: Value) {
        self.stage(key.into(), Some(value));
    }

    /// Stages the removal of `key` (no error if it is absent).
    pub fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.stage(key.into(), None);
    }

    /// Stages `key = value`, or its removal when `value` is None.
    pub(crate) fn stage(&mut self, key: Vec<u8>, value: Option<Value>) {
        self.bytes += key.len() + value.as_ref().map_or(0, |v| v.len());
        self.ops.push((key, value));
    }

    /// The staged operations, in order.
    pub(crate) fn into_ops(self) -> Vec<(Vec<u8>, Option<Value>)> {
        self.ops
    }

    /// Number of staged operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Bytes of keys and values staged so far.
    pub fn size_bytes(&self) -> usize {
        self.bytes
    }

    /// Moves `other`'s operations after this batch's (they win on equal keys).
    pub(crate) fn append(&mut self, other: &mut WriteBatch) {
        self.ops.append(&mut other.ops);
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl fmt::Debug for WriteBatch {
    // Never log payloads: only the batch's shape.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBatch")
            .field("ops", &self.ops.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

/// An iterator over stored pairs, owned (no borrow of the tree), so it can move into a task.
pub(crate) type PairIter = Box<dyn Iterator<Item = Result<(Value, Value), StorageIoError>> + Send>;

// ---------------------------------------------------------------------------------------------
// The seam
// ---------------------------------------------------------------------------------------------

/// A storage engine: named trees (ordered keyspaces) in one database with one durability point.
///
/// ### To ensure correctness:
/// - A batch applied to one tree is atomic, also across a crash.
/// - After a crash the database recovers a prefix of the writes made before it, in order
///   (a write is never durable while an earlier one is lost). A deferred state tree
///   ([`crate::engine::deferred`]) writes to the engine later than its applies, so after a
///   crash it may be further behind than other trees; its own applies stay in order.
/// - [`Engine::flush`] returns only when every write that was visible before it was called is
///   durable, in every tree.
pub(crate) trait Engine: Send + Sync + 'static {
    /// Opens (creating if needed) the tree `name`.
    fn open_tree(&self, name: &str) -> Result<Tree, StorageIoError>;
    /// True when the tree `name` exists (without creating it).
    fn tree_exists(&self, name: &str) -> bool;
    /// The names of every tree (those that are not valid UTF-8 are left out).
    fn tree_names(&self) -> Vec<String>;
    /// Removes the tree `name` and its contents; no error if it does not exist.
    fn drop_tree(&self, name: &str) -> Result<(), StorageIoError>;
    /// Makes everything written so far durable.
    fn flush(&self) -> BoxFuture<'static, Result<(), StorageIoError>>;
    /// Bytes the database uses on disk.
    fn size_on_disk(&self) -> Result<u64, StorageIoError>;
}

/// One ordered keyspace of an [`Engine`].
pub(crate) trait EngineTree: Send + Sync + 'static {
    /// The value at `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Value>, StorageIoError>;
    /// The greatest pair with key `<= key`.
    fn get_at_or_before(&self, key: &[u8]) -> Result<Option<(Value, Value)>, StorageIoError>;
    /// The greatest pair with key `< key`.
    fn get_before(&self, key: &[u8]) -> Result<Option<(Value, Value)>, StorageIoError>;
    /// Ascending pairs in `[start, end)`; `end = None` is unbounded.
    fn range(&self, start: &[u8], end: Option<&[u8]>) -> PairIter;
    /// Applies `batch` atomically.
    fn apply(&self, batch: WriteBatch) -> Result<(), StorageIoError>;
    /// Removes every pair. Not atomic with anything else: callers must tolerate a crash midway.
    fn clear(&self) -> Result<(), StorageIoError>;
}

/// A handle on one keyspace (a group's state tree, or its log tree). Cheap to clone.
#[derive(Clone)]
pub struct Tree {
    inner: Arc<dyn EngineTree>,
}

impl Tree {
    /// A handle on `inner`.
    pub(crate) fn from_engine_tree(inner: Arc<dyn EngineTree>) -> Self {
        Tree { inner }
    }

    /// The value stored at `key`.
    ///
    /// # Errors
    /// [`StorageIoError::Engine`] if the engine fails to read.
    pub fn get(&self, key: &[u8]) -> Result<Option<Value>, StorageIoError> {
        self.inner.get(key)
    }

    /// Greatest entry with key <= `key` (find the batch holding an offset).
    ///
    /// # Errors
    /// [`StorageIoError::Engine`] if the engine fails to read.
    pub fn get_at_or_before(&self, key: &[u8]) -> Result<Option<(Value, Value)>, StorageIoError> {
        self.inner.get_at_or_before(key)
    }

    /// Greatest entry with key < `key`.
    ///
    /// # Errors
    /// [`StorageIoError::Engine`] if the engine fails to read.
    pub(crate) fn get_before(&self, key: &[u8]) -> Result<Option<(Value, Value)>, StorageIoError> {
        self.inner.get_before(key)
    }

    /// Ascending iteration over `[start, end)` (`end` None = unbounded).
    ///
    /// The iterator owns its bounds and reads lazily, so it may outlive this call and move
    /// into another task. Writes made while it runs may or may not be seen (a state tree's
    /// staged writes are taken as they are when it starts, its stored pairs key by key).
    pub fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
    ) -> impl Iterator<Item = Result<(Value, Value), StorageIoError>> + Send + 'static {
        self.inner.range(start, end)
    }

    /// Applies `batch` atomically. Only the storage code writes trees directly; a group's
    /// logic writes by staging into the batch its state machine hands it.
    pub(crate) fn apply(&self, batch: WriteBatch) -> Result<(), StorageIoError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.inner.apply(batch)
    }

    /// Removes every pair (snapshot install).
    pub(crate) fn clear(&self) -> Result<(), StorageIoError> {
        self.inner.clear()
    }
}

impl fmt::Debug for Tree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tree")
    }
}
