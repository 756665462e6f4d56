//! The worker registry: workers by local name, read by every dispatch without a lock.
//!
//! Workers are only ever added, never removed or replaced, so the registry is an append-only
//! open-addressing hash table whose slots are `OnceLock`s: a lookup reads atomics only and
//! borrows the entry for as long as the runtime lives. It writes no shared memory (a
//! `RwLock` read, or an `Arc` clone, would be two atomic writes to one cache line that every
//! dispatch to the runtime, or to the worker, bounces between cores).
//!
//! When the table is half full, the next insertion builds a table of twice the capacity with
//! every entry, publishes it, then makes it the current one; readers that still hold the
//! previous table find every entry that was registered before the switch. Old tables are kept
//! (their total size is below the current one's). Insertions must be serialised by the caller
//! (registration runs under the state lock).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use super::WorkerEntry;
use crate::name::NameHash;

/// Tables of capacity `8 << level`: enough levels for any number of workers that fits memory.
const LEVELS: usize = 48;

/// Workers by local name; see the module docs.
pub(crate) struct Registry {
    tables: [OnceLock<Table>; LEVELS],
    /// The level of the table that holds every entry.
    current: AtomicUsize,
    /// Entries (only insertions, which are serialised, touch it).
    len: AtomicUsize,
}

struct Table {
    slots: Box<[OnceLock<Arc<WorkerEntry>>]>,
    /// `64 - log2(capacity)`: a slot index is the top bits of the name's hash.
    shift: u32,
}

impl Table {
    fn new(level: usize) -> Self {
        let capacity = 8_usize << level;
        Self {
            slots: (0..capacity).map(|_| OnceLock::new()).collect(),
            shift: 64 - capacity.trailing_zeros(),
        }
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    fn start(&self, name: &str) -> usize {
        // The multiplicative hash mixes into the top bits best.
        let hash = NameHash::default().hash_one(name);
        usize::try_from(hash >> self.shift).unwrap_or(0) & self.mask()
    }

    fn get(&self, name: &str) -> Option<&Arc<WorkerEntry>> {
        let mut index = self.start(name);
        loop {
            let entry = self.slots[index].get()?;
            // A removed worker's entry stays as a tombstone: the probe goes on past it (its
            // name may have been registered again, further along).
            if crate::name::same_name(&entry.local, name)
                && !entry.removed.load(std::sync::atomic::Ordering::Acquire)
            {
                return Some(entry);
            }
            index = (index + 1) & self.mask();
        }
    }

    /// Puts `entry` into a free slot (the table is never full: see [`Registry::insert`]).
    fn put(&self, entry: Arc<WorkerEntry>) {
        let mut index = self.start(&entry.local);
        let mut entry = Some(entry);
        while let Some(value) = entry.take() {
            if let Err(value) = self.slots[index].set(value) {
                entry = Some(value);
                index = (index + 1) & self.mask();
            }
        }
    }
}

impl Registry {
    pub(crate) fn new() -> Self {
        let registry = Self {
            tables: [const { OnceLock::new() }; LEVELS],
            current: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
        };
        let _ = registry.tables[0].set(Table::new(0));
        registry
    }

    fn table(&self) -> Option<&Table> {
        self.tables[self.current.load(Ordering::Acquire)].get()
    }

    /// The worker registered under `local`, without a lock.
    pub(crate) fn get(&self, local: &str) -> Option<&Arc<WorkerEntry>> {
        self.table()?.get(local)
    }

    /// Adds a worker whose name is not registered yet. Callers serialise insertions.
    pub(crate) fn insert(&self, entry: Arc<WorkerEntry>) {
        let level = self.current.load(Ordering::Acquire);
        let Some(table) = self.tables[level].get() else {
            return;
        };
        let len = self.len.load(Ordering::Relaxed) + 1;
        if len * 2 <= table.slots.len() || level + 1 == LEVELS {
            table.put(entry);
        } else {
            let next = Table::new(level + 1);
            for old in table.slots.iter().filter_map(OnceLock::get) {
                next.put(Arc::clone(old));
            }
            next.put(entry);
            let _ = self.tables[level + 1].set(next);
            self.current.store(level + 1, Ordering::Release);
        }
        self.len.store(len, Ordering::Relaxed);
    }
}
