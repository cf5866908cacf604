//! Sliding-window rate limits (`[[pools.NAME.rate_limits]]`), per core.
//!
//! A [`Window`] is a ring of time slices, each counting the requests and
//! bytes of one tenth of the span: the slices kept cover the span ending
//! now and at most one slice more, so a window never admits more than its
//! limit in any span of that length (it may refuse a little early), and
//! admits again once the span has passed. No allocation per request: a
//! rule's windows are made when the pool is built (per user, per
//! command), when a session first counts (per client, indexed by session),
//! or live in a fixed table (per key).
//!
//! **Per key** the table has [`KEY_SETS`] × [`KEY_WAYS`] windows,
//! set-associative by the key's hash: a key not in its set takes the way
//! whose window counts least (an idle one first), so keys busy enough to
//! be limited keep their place and a flood of distinct keys costs only
//! the table, whose size is fixed. A key evicted with a small count
//! starts afresh when it returns; that only ever admits more, never
//! refuses what was allowed.

use ferrox_config::{RateBy, RateLimit};

use super::Micros;

/// Slices per span.
const SLICES: usize = 10;
/// Key table geometry: sets × ways windows per key rule.
pub(super) const KEY_SETS: usize = 256;
pub(super) const KEY_WAYS: usize = 4;

/// Requests and bytes over the last span, in slices.
#[derive(Debug, Clone)]
pub(super) struct Window {
    /// Slice `current` started at `started`; the ring holds the slices
    /// before it.
    started: Micros,
    current: usize,
    requests: [u32; SLICES + 1],
    bytes: [u64; SLICES + 1],
    total_requests: u64,
    total_bytes: u64,
}

impl Window {
    pub fn new(now: Micros) -> Window {
        Window {
            started: now,
            current: 0,
            requests: [0; SLICES + 1],
            bytes: [0; SLICES + 1],
            total_requests: 0,
            total_bytes: 0,
        }
    }

    /// Drops the slices that ended a span or more before `now`.
    fn advance(&mut self, now: Micros, slice: Micros) {
        if now < self.started + slice {
            return;
        }
        let elapsed = ((now - self.started) / slice) as usize;
        for _ in 0..elapsed.min(SLICES + 1) {
            self.current = (self.current + 1) % (SLICES + 1);
            self.total_requests -= u64::from(self.requests[self.current]);
            self.total_bytes -= self.bytes[self.current];
            self.requests[self.current] = 0;
            self.bytes[self.current] = 0;
        }
        self.started += elapsed as Micros * slice;
    }

    /// Whether the rule admits a request of `bytes` bytes now (the window
    /// moved up to `now`, nothing counted).
    fn admits(&mut self, rule: &Rule, now: Micros, bytes: u64) -> bool {
        self.advance(now, rule.slice);
        let requests_ok = rule.requests.is_none_or(|max| self.total_requests < max);
        let bytes_ok = rule
            .bytes
            .is_none_or(|max| self.total_bytes.saturating_add(bytes) <= max);
        requests_ok && bytes_ok
    }

    /// Counts a request of `bytes` bytes (after [`Window::admits`]).
    fn count(&mut self, bytes: u64) {
        self.requests[self.current] = self.requests[self.current].saturating_add(1);
        self.total_requests += 1;
        self.add_bytes(bytes);
    }

    /// Counts bytes already sent (a reply's).
    fn charge(&mut self, rule: &Rule, now: Micros, bytes: u64) {
        self.advance(now, rule.slice);
        self.add_bytes(bytes);
    }

    fn add_bytes(&mut self, bytes: u64) {
        self.bytes[self.current] = self.bytes[self.current].saturating_add(bytes);
        self.total_bytes = self.total_bytes.saturating_add(bytes);
    }
}

/// One rule as the engine applies it.
#[derive(Debug, Clone)]
pub(super) struct Rule {
    /// Command ids it counts; empty: every command.
    commands: Vec<u16>,
    requests: Option<u64>,
    bytes: Option<u64>,
    /// A slice of the span.
    slice: Micros,
    /// How errors name it.
    pub name: String,
}

impl Rule {
    pub fn new(limit: &RateLimit) -> Rule {
        let commands = limit
            .commands
            .iter()
            .filter_map(|name| {
                crate::command::lookup_blocked(name.as_bytes(), &[])
                    .0
                    .map(|(id, _)| id.index() as u16)
            })
            .collect();
        Rule {
            commands,
            requests: limit.requests,
            bytes: limit.bytes.map(|b| b as u64),
            slice: (limit.per_ms * 1_000 / SLICES as u64).max(1),
            name: limit.describe(),
        }
    }

    pub fn counts(&self, command: Option<u16>) -> bool {
        self.commands.is_empty() || command.is_some_and(|c| self.commands.contains(&c))
    }
}

/// Who a request is, for the rules that count separately.
#[derive(Debug, Clone, Copy)]
pub(super) struct Who {
    /// The session's index and generation.
    pub session: (u32, u32),
    /// Its user: 0 the default, `u + 1` the pool's user `u`.
    pub user: usize,
    pub command: Option<u16>,
    /// A hash of the request's first key, if it has one.
    pub key: Option<u64>,
}

/// One rule's windows.
#[derive(Debug)]
enum Windows {
    Pool(Window),
    /// By session index, with the generation that made it.
    Client(Vec<Option<(u32, Window)>>),
    /// By user (0: the default user).
    User(Vec<Window>),
    /// By command id.
    Command(Vec<Window>),
    /// Set-associative by key hash.
    Key(Vec<Option<(u64, Window)>>),
}

/// A pool's rules and their windows.
#[derive(Debug, Default)]
pub(super) struct Limiter {
    rules: Vec<(Rule, Windows)>,
    /// Whether a rule counts by key (only then is a request's key hashed).
    by_key: bool,
}

impl Limiter {
    pub fn new(limits: &[RateLimit], users: usize, now: Micros) -> Limiter {
        let rules = limits
            .iter()
            .map(|limit| {
                let rule = Rule::new(limit);
                let windows = match limit.by {
                    RateBy::Pool => Windows::Pool(Window::new(now)),
                    RateBy::Client => Windows::Client(Vec::new()),
                    RateBy::User => Windows::User(vec![Window::new(now); users + 1]),
                    RateBy::Command => {
                        Windows::Command(vec![Window::new(now); crate::command::COMMAND_IDS])
                    }
                    RateBy::Key => Windows::Key(vec![None; KEY_SETS * KEY_WAYS]),
                };
                (rule, windows)
            })
            .collect();
        let by_key = limits.iter().any(|l| l.by == RateBy::Key);
        Limiter { rules, by_key }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether a rule counts by key (only then is a request's key hashed).
    pub fn by_key(&self) -> bool {
        self.by_key
    }

    /// Counts a request of `bytes` bytes by `who` against every rule that
    /// counts it; `Err` names the first rule that refuses it (nothing is
    /// counted then).
    pub fn admit(&mut self, who: Who, now: Micros, bytes: u64) -> Result<(), &str> {
        // Checked first, counted after: a refused request counts nowhere.
        for i in 0..self.rules.len() {
            let (rule, windows) = &mut self.rules[i];
            if !rule.counts(who.command) {
                continue;
            }
            let Some(window) = window_of(windows, who, now) else {
                continue;
            };
            if !window.admits(rule, now, bytes) {
                return Err(&self.rules[i].0.name);
            }
        }
        for (rule, windows) in &mut self.rules {
            if rule.counts(who.command) {
                if let Some(window) = window_of(windows, who, now) {
                    window.count(bytes);
                }
            }
        }
        Ok(())
    }

    /// Counts a reply of `bytes` bytes to `who`'s request.
    pub fn charge(&mut self, who: Who, now: Micros, bytes: u64) {
        for (rule, windows) in &mut self.rules {
            if rule.bytes.is_some() && rule.counts(who.command) {
                if let Some(window) = window_of(windows, who, now) {
                    window.charge(rule, now, bytes);
                }
            }
        }
    }

    /// Whether any rule counts bytes (replies need charging).
    pub fn counts_bytes(&self) -> bool {
        self.rules.iter().any(|(rule, _)| rule.bytes.is_some())
    }
}

/// `who`'s window in `windows`, made when first needed; `None` when the
/// rule cannot tell (a key rule and a request without a key).
fn window_of(windows: &mut Windows, who: Who, now: Micros) -> Option<&mut Window> {
    match windows {
        Windows::Pool(window) => Some(window),
        Windows::Client(list) => {
            let (index, generation) = (who.session.0 as usize, who.session.1);
            if list.len() <= index {
                list.resize(index + 1, None);
            }
            let entry = &mut list[index];
            if entry.as_ref().is_none_or(|(g, _)| *g != generation) {
                *entry = Some((generation, Window::new(now)));
            }
            entry.as_mut().map(|(_, w)| w)
        }
        Windows::User(list) => list.get_mut(who.user),
        Windows::Command(list) => list.get_mut(who.command? as usize),
        Windows::Key(table) => {
            let hash = who.key?;
            let set = (hash as usize % KEY_SETS) * KEY_WAYS;
            let ways = &mut table[set..set + KEY_WAYS];
            let at = match ways
                .iter()
                .position(|w| w.as_ref().is_some_and(|(h, _)| *h == hash))
            {
                Some(at) => at,
                None => {
                    // A free way, else the one that counts least.
                    let victim = ways
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, w)| w.as_ref().map_or(0, |(_, w)| w.total_requests + 1))
                        .map(|(i, _)| i)
                        .expect("ways");
                    ways[victim] = Some((hash, Window::new(now)));
                    victim
                }
            };
            ways[at].as_mut().map(|(_, w)| w)
        }
    }
}

/// A key's hash for the key table (FNV-1a).
pub(super) fn key_hash(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn limit(by: RateBy, requests: Option<u64>, bytes: Option<usize>, per_ms: u64) -> RateLimit {
        RateLimit {
            by,
            commands: Vec::new(),
            requests,
            bytes,
            per_ms,
        }
    }

    fn who(session: u32, key: Option<&[u8]>) -> Who {
        Who {
            session: (session, 1),
            user: 0,
            command: Some(0),
            key: key.map(key_hash),
        }
    }

    #[test]
    fn each_client_and_key_is_counted_apart() {
        let mut limiter = Limiter::new(&[limit(RateBy::Client, Some(2), None, 1000)], 0, 0);
        assert!(limiter.admit(who(0, None), 0, 1).is_ok());
        assert!(limiter.admit(who(0, None), 1, 1).is_ok());
        assert_eq!(
            limiter.admit(who(0, None), 2, 1),
            Err("by client: 2 requests per 1000 ms")
        );
        assert!(limiter.admit(who(1, None), 3, 1).is_ok(), "another client");
        // A new occupant of the session starts afresh.
        let mut next = who(0, None);
        next.session.1 = 2;
        assert!(limiter.admit(next, 4, 1).is_ok());
        let mut limiter = Limiter::new(&[limit(RateBy::Key, Some(1), None, 1000)], 0, 0);
        assert!(limiter.admit(who(0, Some(b"a")), 0, 1).is_ok());
        assert!(limiter.admit(who(1, Some(b"a")), 0, 1).is_err());
        assert!(limiter.admit(who(0, Some(b"b")), 0, 1).is_ok());
        assert!(
            limiter.admit(who(0, None), 0, 1).is_ok(),
            "no key: not counted"
        );
    }

    #[test]
    fn bytes_count_requests_and_replies() {
        let mut limiter = Limiter::new(&[limit(RateBy::Pool, None, Some(100), 1000)], 0, 0);
        assert!(limiter.admit(who(0, None), 0, 40).is_ok());
        limiter.charge(who(0, None), 1, 50);
        assert!(
            limiter.admit(who(0, None), 2, 11).is_err(),
            "40 + 50 + 11 > 100"
        );
        assert!(limiter.admit(who(0, None), 2, 10).is_ok());
    }

    #[test]
    fn a_refused_request_counts_nowhere() {
        let rules = [
            limit(RateBy::Pool, Some(10), None, 1000),
            limit(RateBy::Client, Some(1), None, 1000),
        ];
        let mut limiter = Limiter::new(&rules, 0, 0);
        assert!(limiter.admit(who(0, None), 0, 0).is_ok());
        for _ in 0..20 {
            assert!(limiter.admit(who(0, None), 0, 0).is_err());
        }
        // The pool's window counted one request only.
        for session in 1..10 {
            assert!(limiter.admit(who(session, None), 0, 0).is_ok(), "{session}");
        }
        assert!(limiter.admit(who(10, None), 0, 0).is_err());
    }

    #[test]
    fn a_flood_of_distinct_keys_keeps_a_busy_key_limited() {
        let mut limiter = Limiter::new(&[limit(RateBy::Key, Some(5), None, 1_000_000)], 0, 0);
        for _ in 0..5 {
            assert!(limiter.admit(who(0, Some(b"hot")), 0, 0).is_ok());
        }
        for i in 0..100_000u32 {
            let key = i.to_be_bytes();
            let _ = limiter.admit(who(0, Some(&key)), 1, 0);
        }
        assert!(limiter.admit(who(0, Some(b"hot")), 2, 0).is_err());
    }

    proptest! {
        /// Whatever the arrival times, no span of `per_ms` holds more
        /// admitted requests than the limit, and a request after a quiet
        /// span (plus a slice) is admitted.
        #[test]
        fn never_more_than_the_limit_in_any_span(
            limit_n in 1u64..20,
            per_ms in 1u64..50,
            gaps in prop::collection::vec(0u64..20_000, 1..300),
        ) {
            let rule = limit_n;
            let mut limiter = Limiter::new(&[limit(RateBy::Pool, Some(rule), None, per_ms)], 0, 0);
            let span = per_ms * 1_000;
            let mut now = 0;
            let mut admitted: Vec<u64> = Vec::new();
            for gap in gaps {
                now += gap;
                let quiet = admitted.last().is_none_or(|&last| now > last + span + span / SLICES as u64);
                let ok = limiter.admit(who(0, None), now, 0).is_ok();
                if quiet {
                    prop_assert!(ok, "refused after a quiet span at {now}");
                }
                if ok {
                    admitted.push(now);
                    let in_span = admitted.iter().filter(|&&t| t + span > now).count() as u64;
                    prop_assert!(in_span <= rule, "{in_span} admitted in the span ending {now}");
                }
            }
        }
    }
}
