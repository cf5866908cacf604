//! Which keys are hot on this core.
//!
//! Reads are counted per one-second window in a count-min sketch
//! (`DEPTH` rows of `WIDTH` counters, conservative update), which
//! never underestimates. A key whose estimate reaches a quarter of
//! `min_rate` becomes a candidate in a table of `top` entries that count
//! its reads exactly from then on, replacing the entry with the lowest
//! rate when full (only by a key estimated busier). At each window close
//! every entry's rate decays, `rate = (rate + count) / 2`, then the
//! sketch and the window counts are cleared. A key is hot while its
//! count in the current window or its decayed rate is at least
//! `min_rate`; it is cold when both are below, which a key read at a
//! little over `min_rate` reaches within two windows of its last read
//! (each further doubling of its former rate adds a window). Once warmed
//! up, recording a read allocates nothing.

use super::hash;
use crate::engine::Micros;

/// Sketch rows, each indexed by its own 16-bit slice of the key's hash.
const DEPTH: usize = 4;
/// Counters per row (a power of two, at most 1 << 16).
const WIDTH: usize = 4096;
/// The counting window.
const WINDOW: Micros = 1_000_000;

/// Hot keys over this core's reads.
pub struct Detector {
    min_rate: u32,
    top: usize,
    /// Row `r`'s counter `i` is at `r * WIDTH + i`.
    sketch: Box<[u32]>,
    /// Start of the current window; set by the first call that has a time.
    window_start: Option<Micros>,
    /// At most `top` entries; unused ones keep their key buffer for reuse.
    entries: Vec<Entry>,
    cooled: Cooled,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Without the sketch's 16,384 counters.
        f.debug_struct("Detector")
            .field("min_rate", &self.min_rate)
            .field("window_start", &self.window_start)
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Entry {
    used: bool,
    hash: u64,
    key: Vec<u8>,
    /// Reads in the current window (from the sketch's estimate when the
    /// entry was taken, exact after).
    count: u32,
    /// Decayed reads per second over the closed windows.
    rate: u32,
    hot: bool,
}

impl Entry {
    /// The reads per second shown to operators: the decayed rate, or the
    /// current window's count when higher (at least that many reads within
    /// the last second, so it is a lower bound of the current rate and
    /// needs no projection, which would be noisy early in a window).
    fn rate(&self) -> u32 {
        self.rate.max(self.count)
    }
}

/// Keys gone cold not yet taken by the caller; buffers reused.
#[derive(Debug)]
struct Cooled {
    keys: Vec<Vec<u8>>,
    len: usize,
    limit: usize,
}

impl Cooled {
    /// Notes a key gone cold. Past the limit (a caller not taking them)
    /// the key is dropped: its cache entry then leaves by eviction.
    fn push(&mut self, key: &[u8]) {
        if self.len == self.limit {
            return;
        }
        if self.len == self.keys.len() {
            self.keys.push(Vec::new());
        }
        let buf = &mut self.keys[self.len];
        buf.clear();
        buf.extend_from_slice(key);
        self.len += 1;
    }
}

impl Detector {
    /// A detector of keys read at least `min_rate` times a second (at
    /// least 1), tracking up to `top` candidates.
    pub fn new(min_rate: u32, top: usize) -> Detector {
        Detector {
            min_rate: min_rate.max(1),
            top,
            sketch: vec![0; DEPTH * WIDTH].into_boxed_slice(),
            window_start: None,
            entries: Vec::with_capacity(top),
            cooled: Cooled {
                keys: Vec::new(),
                len: 0,
                limit: top.saturating_mul(4).max(16),
            },
        }
    }

    pub fn min_rate(&self) -> u32 {
        self.min_rate
    }

    /// Changes the rate that makes a key hot; keys it makes cold are
    /// reported by [`take_cooled`](Self::take_cooled).
    pub fn set_min_rate(&mut self, min_rate: u32) {
        self.min_rate = min_rate.max(1);
        for e in self.entries.iter_mut().filter(|e| e.used) {
            let hot = e.count >= self.min_rate || e.rate >= self.min_rate;
            if e.hot && !hot {
                self.cooled.push(&e.key);
            }
            e.hot = hot;
        }
    }

    /// The sketch estimate at which a key becomes a candidate: low enough
    /// that a key reaching `min_rate` in a window is tracked well before.
    fn threshold(&self) -> u32 {
        (self.min_rate / 4).max(1)
    }

    /// Counts one read of `key`; whether the key is hot now.
    pub fn record(&mut self, key: &[u8], now: Micros) -> bool {
        self.tick(now);
        let hash = hash(key);
        let estimate = self.count(hash);
        let min_rate = self.min_rate;
        if let Some(e) = self.find_mut(hash, key) {
            e.count = e.count.saturating_add(1);
            e.hot |= e.count >= min_rate;
            return e.hot;
        }
        estimate >= self.threshold() && self.admit(hash, key, estimate)
    }

    /// Adds one to the key's counters, raising only those below the new
    /// estimate (conservative update); the key's estimate after.
    fn count(&mut self, hash: u64) -> u32 {
        let at = |row: usize| row * WIDTH + ((hash >> (16 * row)) as usize & (WIDTH - 1));
        let estimate = (0..DEPTH)
            .map(|row| self.sketch[at(row)])
            .min()
            .unwrap_or(0)
            .saturating_add(1);
        for row in 0..DEPTH {
            let counter = &mut self.sketch[at(row)];
            *counter = (*counter).max(estimate);
        }
        estimate
    }

    fn find_mut(&mut self, hash: u64, key: &[u8]) -> Option<&mut Entry> {
        self.entries
            .iter_mut()
            .find(|e| e.used && e.hash == hash && e.key == key)
    }

    /// Tracks a candidate in a free entry, or in place of the entry with
    /// the lowest rate if the candidate's estimate is higher; whether the
    /// key is hot.
    fn admit(&mut self, hash: u64, key: &[u8], estimate: u32) -> bool {
        let at = match self.entries.iter().position(|e| !e.used) {
            Some(free) => free,
            None if self.entries.len() < self.top => {
                self.entries.push(Entry::default());
                self.entries.len() - 1
            }
            None => {
                let Some((at, lowest)) = self
                    .entries
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, e)| e.rate())
                else {
                    return false; // `top` is 0
                };
                if lowest.rate() >= estimate {
                    return false;
                }
                if lowest.hot {
                    self.cooled.push(&lowest.key);
                }
                at
            }
        };
        let hot = estimate >= self.min_rate;
        let e = &mut self.entries[at];
        e.used = true;
        e.hash = hash;
        e.key.clear();
        e.key.extend_from_slice(key);
        e.count = estimate;
        e.rate = 0;
        e.hot = hot;
        hot
    }

    /// Closes the window if it is due (also called by `record`; call it
    /// when idle so keys cool without reads).
    pub fn tick(&mut self, now: Micros) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_sub(start);
        if elapsed < WINDOW {
            return;
        }
        let windows = elapsed / WINDOW;
        self.window_start = Some(start + windows * WINDOW);
        // Windows skipped while idle each halve the rate once more.
        let idle = (windows - 1).min(32) as u32;
        for e in self.entries.iter_mut().filter(|e| e.used) {
            // Round toward the count so a steady rate is reached exactly
            // (no flapping at `min_rate`) and a stopped one reaches 0.
            let up = u64::from(e.count > e.rate);
            let rate = ((u64::from(e.rate) + u64::from(e.count) + up) / 2) >> idle;
            e.rate = rate as u32; // at most the larger of two u32s
            e.count = 0;
            let hot = e.rate >= self.min_rate;
            if e.hot && !hot {
                self.cooled.push(&e.key);
            }
            e.hot = hot;
            e.used = e.rate > 0;
        }
        self.sketch.fill(0);
    }

    /// Whether `key` is hot, as of the last `record` or `tick`.
    pub fn is_hot(&self, key: &[u8]) -> bool {
        let hash = hash(key);
        self.entries
            .iter()
            .any(|e| e.used && e.hot && e.hash == hash && e.key == key)
    }

    /// The hot keys and their reads per second, unordered.
    pub fn hot(&self) -> impl Iterator<Item = (&[u8], u32)> + '_ {
        self.entries
            .iter()
            .filter(|e| e.used && e.hot)
            .map(|e| (&e.key[..], e.rate()))
    }

    /// The hot keys into `out` (cleared first), highest rate first.
    pub fn hot_sorted<'a>(&'a self, out: &mut Vec<(&'a [u8], u32)>) {
        out.clear();
        out.extend(self.hot());
        out.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    }

    /// Keys tracked as candidates (hot or not), at most `top`.
    pub fn tracked(&self) -> usize {
        self.entries.iter().filter(|e| e.used).count()
    }

    /// Calls `each` with every key gone cold (at a window close, by a new
    /// `min_rate`, or pushed out of the table) since the last call, so its
    /// cache entry can be dropped. A key may appear twice if it heated and
    /// cooled again in between; past `max(4 * top, 16)` keys the rest are
    /// dropped.
    pub fn take_cooled(&mut self, mut each: impl FnMut(&[u8])) {
        for key in &self.cooled.keys[..self.cooled.len] {
            each(key);
        }
        self.cooled.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn cooled(detector: &mut Detector) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        detector.take_cooled(|key| out.push(key.to_vec()));
        out
    }

    #[test]
    fn a_busy_key_becomes_hot_within_its_first_second() {
        let mut detector = Detector::new(500, 32);
        let hot: Vec<bool> = (0..1000u64)
            .map(|i| detector.record(b"busy", i * 1000))
            .collect();
        assert_eq!(
            hot.iter().position(|&h| h),
            Some(499),
            "hot at its 500th read"
        );
        assert!(hot[499..].iter().all(|&h| h));
        assert!(detector.is_hot(b"busy"));
        assert!(!detector.is_hot(b"other"));
        let hot: Vec<_> = detector.hot().collect();
        assert_eq!(hot, [(&b"busy"[..], 1000)]);
    }

    #[test]
    fn a_slow_key_among_many_one_shot_keys_never_becomes_hot() {
        let mut detector = Detector::new(100, 32);
        for i in 0..300_000u32 {
            let now = u64::from(i) * 10; // 100,000 reads per second
            if i % 10_000 == 0 {
                assert!(!detector.record(b"slow", now), "at {i}");
            }
            assert!(!detector.record(&i.to_le_bytes(), now), "{i}");
        }
        assert!(!detector.is_hot(b"slow"));
        assert_eq!(detector.hot().count(), 0);
        assert!(detector.tracked() <= 32);
    }

    #[test]
    fn a_key_no_longer_read_cools_and_is_reported() {
        let mut detector = Detector::new(500, 32);
        for i in 0..1000u64 {
            detector.record(b"k", i * 1000);
        }
        detector.tick(1_000_000); // rate (0 + 1000) / 2 = 500: still hot
        assert!(detector.is_hot(b"k"));
        assert!(cooled(&mut detector).is_empty());
        detector.tick(2_000_000); // rate 250
        assert!(!detector.is_hot(b"k"));
        assert_eq!(cooled(&mut detector), [b"k".to_vec()]);
        assert!(cooled(&mut detector).is_empty(), "taken once");
        // The idle windows decay it to nothing and free its entry.
        detector.tick(60_000_000);
        assert_eq!(detector.tracked(), 0);
    }

    #[test]
    fn a_steady_rate_stays_hot_and_a_new_min_rate_cools() {
        let mut detector = Detector::new(200, 32);
        for i in 0..5000u64 {
            detector.record(b"k", i * 2000); // 500 reads per second
        }
        detector.tick(10_000_000);
        let mut sorted = Vec::new();
        detector.hot_sorted(&mut sorted);
        assert!(sorted[0].1 >= 200, "{sorted:?}");
        detector.set_min_rate(100_000);
        assert!(!detector.is_hot(b"k"));
        assert_eq!(cooled(&mut detector), [b"k".to_vec()]);
    }

    #[test]
    fn the_table_holds_the_busiest_and_never_exceeds_top() {
        let mut detector = Detector::new(10, 4);
        let mut now = 0;
        for round in 0..50u32 {
            for key in 0..20u32 {
                // Key k is read k + 1 times a round.
                for _ in 0..=key {
                    detector.record(&key.to_le_bytes(), now);
                    now += 100;
                }
                assert!(detector.tracked() <= 4, "round {round}");
            }
        }
        let mut sorted = Vec::new();
        detector.hot_sorted(&mut sorted);
        let keys: Vec<_> = sorted.iter().map(|(k, _)| k.to_vec()).collect();
        let busiest: Vec<_> = (16..20u32)
            .rev()
            .map(|k| k.to_le_bytes().to_vec())
            .collect();
        assert_eq!(keys, busiest);
    }

    #[test]
    fn the_same_reads_give_the_same_answers() {
        let run = || {
            let mut detector = Detector::new(50, 8);
            let answers: Vec<bool> = (0..20_000u32)
                .map(|i| detector.record(&(i % 7 + (i % 3) * 11).to_le_bytes(), u64::from(i) * 300))
                .collect();
            let mut sorted = Vec::new();
            detector.hot_sorted(&mut sorted);
            let hot: Vec<_> = sorted.iter().map(|(k, r)| (k.to_vec(), *r)).collect();
            (answers, hot)
        };
        assert_eq!(run(), run());
    }

    proptest! {
        /// Never panics; at most `top` keys tracked or hot; `is_hot`
        /// agrees with `hot`; a key never read is never hot; and while the
        /// table has room for every key, a key with at least `min_rate`
        /// exact reads in the current window is hot (tracked counts never
        /// fall below the exact ones).
        #[test]
        fn hot_agrees_with_exact_counts(
            min_rate in 1u32..20,
            top in 0usize..12,
            reads in prop::collection::vec((0u8..8, prop_oneof![3 => Just(0u64), 1 => 0u64..400_000]), 0..400),
        ) {
            let mut detector = Detector::new(min_rate, top);
            let mut start = None;
            let mut counts: HashMap<u8, u32> = HashMap::new();
            let mut now = 0;
            for (key, advance) in reads {
                now += advance;
                let start = start.get_or_insert(now);
                if now - *start >= WINDOW {
                    *start += (now - *start) / WINDOW * WINDOW;
                    counts.clear();
                }
                let hot = detector.record(&[key], now);
                *counts.entry(key).or_default() += 1;
                prop_assert_eq!(hot, detector.is_hot(&[key]));
                prop_assert!(detector.tracked() <= top);
                prop_assert!(detector.hot().count() <= top);
                for (hot_key, rate) in detector.hot() {
                    prop_assert!(hot_key.len() == 1 && hot_key[0] < 8);
                    prop_assert!(rate >= min_rate);
                }
                if top >= 8 {
                    for (&k, &n) in &counts {
                        prop_assert!(n < min_rate || detector.is_hot(&[k]), "key {k}: {n} reads");
                    }
                }
            }
        }
    }
}
