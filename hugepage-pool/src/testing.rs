//! What the crate's property tests share.

use proptest::test_runner::Config;

/// Property-test settings Miri can run too: it is slow, so few cases, and
/// it may not touch files, so no failure store.
pub(crate) fn proptest_config() -> Config {
    Config {
        cases: if cfg!(miri) { 4 } else { 256 },
        failure_persistence: if cfg!(miri) {
            None
        } else {
            Config::default().failure_persistence
        },
        ..Config::default()
    }
}
