//! Interned strings: the namespaces, port names, node names and zones that thousands of
//! objects repeat are held once, and every object holds a pointer to the one copy.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// How many strings may be added between two sweeps of those nothing holds any more.
const SWEEP_EVERY: usize = 4096;

#[derive(Default)]
struct Interner {
    strings: HashSet<Arc<str>>,
    added: usize,
}

fn interner() -> &'static Mutex<Interner> {
    static INTERNER: OnceLock<Mutex<Interner>> = OnceLock::new();
    INTERNER.get_or_init(Mutex::default)
}

/// The one shared copy of `text`.
pub fn intern(text: &str) -> Arc<str> {
    let mut interner = interner().lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(held) = interner.strings.get(text) {
        return held.clone();
    }
    interner.added += 1;
    if interner.added >= SWEEP_EVERY {
        // Strings only the interner holds are no object's any more. Sweeping costs one pass
        // over the set, once per SWEEP_EVERY new strings, so adding stays O(1) on average.
        interner.strings.retain(|s| Arc::strong_count(s) > 1);
        interner.added = 0;
    }
    let shared: Arc<str> = Arc::from(text);
    interner.strings.insert(shared.clone());
    shared
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
        let interner = interner().lock().unwrap_or_else(PoisonError::into_inner);
        assert!(!interner.strings.contains("gone-soon"));
    }
}
