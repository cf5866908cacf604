//! Signals as flags: a handler only sets an atomic (async-signal-safe),
//! and the loops read it. Through `signal-hook`, as in the control
//! process.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

fn flag_for(cell: &'static OnceLock<Arc<AtomicBool>>, signals: &[i32]) -> &'static AtomicBool {
    cell.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        for &signal in signals {
            signal_hook::flag::register(signal, flag.clone())
                .expect("a handler for a catchable signal");
        }
        flag
    })
}

/// Makes SIGINT and SIGTERM set the returned flag (and nothing else), so
/// the poll loops finish their burst and the process cleans up.
pub fn stop_on_signals() -> &'static AtomicBool {
    static STOP: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    flag_for(
        &STOP,
        &[signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM],
    )
}

/// Counts SIGUSR2s in the returned counter: each asks every core for an
/// in-process handover (the test trigger of `--handover-on-sigusr2`).
pub fn handovers_on_sigusr2() -> &'static AtomicU64 {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    static WATCH: OnceLock<()> = OnceLock::new();
    WATCH.get_or_init(|| {
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGUSR2])
            .expect("a handler for SIGUSR2");
        std::thread::spawn(move || {
            for _ in signals.forever() {
                COUNT.fetch_add(1, Ordering::Relaxed);
            }
        });
    });
    &COUNT
}

/// Makes SIGHUP set the returned flag (and nothing else): a request to
/// read the configuration again.
pub fn reload_on_sighup() -> &'static AtomicBool {
    static RELOAD: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    flag_for(&RELOAD, &[signal_hook::consts::SIGHUP])
}

/// SIGUSR1 opens the log file again (after logrotate moved it), on a
/// thread of its own; caught in any case, as its default action would end
/// the process.
pub fn reopen_log_on_sigusr1() {
    static WATCH: OnceLock<()> = OnceLock::new();
    WATCH.get_or_init(|| {
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGUSR1])
            .expect("a handler for SIGUSR1");
        std::thread::spawn(move || {
            for _ in signals.forever() {
                match ferrox_log::reopen() {
                    Ok(Some(path)) => {
                        tracing::info!(path = %path.display(), "SIGUSR1: log file opened again")
                    }
                    Ok(None) => {}
                    Err(e) => tracing::error!(
                        "SIGUSR1: the log file could not be opened again ({e}); the log goes on to the old one"
                    ),
                }
            }
        });
    });
}
