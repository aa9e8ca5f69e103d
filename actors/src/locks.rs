//! Locks over the node's replica tables that stay usable after a writer panicked.
//!
//! Every writer of these tables inserts, removes or replaces whole entries in one
//! operation, so a table whose writer panicked (a poisoned lock) is still consistent:
//! refusing it would turn one failed actor into a node that can no longer route.

use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Reads the table behind `lock`, poisoned or not (see the module docs).
pub fn read_lock<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Writes the table behind `lock`, poisoned or not (see the module docs).
pub fn write_lock<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}
