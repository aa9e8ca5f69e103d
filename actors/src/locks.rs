//! Locks that stay usable after a writer panicked.
//!
//! Every writer behind these locks (the node's replica tables, a partition's published
//! state) inserts, removes or replaces whole entries in one operation, so a value whose
//! writer panicked (a poisoned lock) is still consistent: refusing it would turn one failed
//! actor into a node that can no longer route or read.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Reads the table behind `lock`, poisoned or not (see the module docs).
pub fn read_lock<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// Writes the table behind `lock`, poisoned or not (see the module docs).
pub fn write_lock<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// Locks `mutex`, poisoned or not (see the module docs).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
