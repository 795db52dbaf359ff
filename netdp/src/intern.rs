//! Interned values: the namespaces, port names, node names and zones that thousands of
//! objects repeat, and the label sets that the pods of one ReplicaSet share, are held once,
//! and every object holds a pointer to the one copy.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// How many values may be added between two sweeps of those nothing holds any more.
const SWEEP_EVERY: usize = 4096;

struct Pool<T: ?Sized> {
    values: HashSet<Arc<T>>,
    added: usize,
}

impl<T: ?Sized + Hash + Eq> Pool<T> {
    fn new() -> Self {
        Pool {
            values: HashSet::new(),
            added: 0,
        }
    }

    /// The held copy of `value`, or the one `make` makes, held from now on.
    fn get<Q>(&mut self, value: &Q, make: impl FnOnce() -> Arc<T>) -> Arc<T>
    where
        Arc<T>: Borrow<Q>,
        Q: ?Sized + Hash + Eq,
    {
        if let Some(held) = self.values.get(value) {
            return held.clone();
        }
        self.added += 1;
        if self.added >= SWEEP_EVERY {
            // Values only the pool holds are no object's any more. Sweeping costs one pass
            // over the set, once per SWEEP_EVERY new values, so adding stays O(1) on average.
            self.values.retain(|v| Arc::strong_count(v) > 1);
            self.added = 0;
        }
        let shared = make();
        self.values.insert(shared.clone());
        shared
    }
}

fn strings() -> &'static Mutex<Pool<str>> {
    static STRINGS: OnceLock<Mutex<Pool<str>>> = OnceLock::new();
    STRINGS.get_or_init(|| Mutex::new(Pool::new()))
}

fn label_sets() -> &'static Mutex<Pool<BTreeMap<String, String>>> {
    static LABELS: OnceLock<Mutex<Pool<BTreeMap<String, String>>>> = OnceLock::new();
    LABELS.get_or_init(|| Mutex::new(Pool::new()))
}

/// The one shared copy of `text`.
pub fn intern(text: &str) -> Arc<str> {
    let mut pool = strings().lock().unwrap_or_else(PoisonError::into_inner);
    pool.get(text, || Arc::from(text))
}

/// The one shared copy of a set of labels.
pub fn intern_labels(labels: BTreeMap<String, String>) -> Arc<BTreeMap<String, String>> {
    let mut pool = label_sets().lock().unwrap_or_else(PoisonError::into_inner);
    pool.get(&labels, || Arc::new(labels.clone()))
}

/// The empty string, shared.
pub fn empty() -> Arc<str> {
    static EMPTY: OnceLock<Arc<str>> = OnceLock::new();
    EMPTY.get_or_init(|| Arc::from("")).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_copy_and_unheld_ones_are_swept() {
        let a = intern("kube-system");
        let b = intern(&String::from("kube-system"));
        assert!(Arc::ptr_eq(&a, &b));
        drop(intern("gone-soon"));
        for i in 0..SWEEP_EVERY {
            intern(&format!("filler-{i}"));
        }
        // At least one sweep ran since: it kept what is held and let the rest go.
        assert!(Arc::ptr_eq(&a, &intern("kube-system")));
        let pool = strings().lock().unwrap_or_else(PoisonError::into_inner);
        assert!(!pool.values.contains("gone-soon"));
        drop(pool);
        let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
        assert!(Arc::ptr_eq(
            &intern_labels(labels.clone()),
            &intern_labels(labels)
        ));
    }
}
