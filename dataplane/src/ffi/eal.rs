//! The EAL: start and stop, lcores, and running tasks on them.

use std::ffi::CString;

use dpdk_sys as sys;

use super::{errno_string, last_errno};

pub(crate) fn eal_init(args: Vec<CString>) -> Result<(), String> {
    // DPDK keeps pointers into argv for the life of the process: leak it.
    let args: &'static mut [CString] = Box::leak(args.into_boxed_slice());
    let argv: &'static mut [*mut libc::c_char] = Box::leak(
        args.iter()
            .map(|a| a.as_ptr().cast_mut())
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    // SAFETY: argv holds argc valid NUL-terminated strings that live forever;
    // the caller ensures this runs once per process.
    let rc = unsafe { sys::rte_eal_init(argv.len() as i32, argv.as_mut_ptr()) };
    if rc < 0 {
        Err(errno_string(last_errno()))
    } else {
        Ok(())
    }
}

/// Probes a device after the EAL started (`--vdev`'s argument).
pub(crate) fn dev_probe(devargs: &str) -> Result<(), String> {
    let devargs = CString::new(devargs).map_err(|_| "a NUL in the device arguments".to_owned())?;
    // SAFETY: devargs is a valid NUL-terminated string for the call; the
    // EAL is initialised (an `Eal` exists when this is reached).
    let rc = unsafe { sys::rte_dev_probe(devargs.as_ptr()) };
    if rc < 0 {
        Err(errno_string(-rc))
    } else {
        Ok(())
    }
}

/// Removes the device `name` of `bus` (its port closed), so that it can be
/// probed afresh.
pub(crate) fn dev_remove(bus: &str, name: &str) -> Result<(), String> {
    let bus = CString::new(bus).map_err(|_| "a NUL in the bus name".to_owned())?;
    let name = CString::new(name).map_err(|_| "a NUL in the device name".to_owned())?;
    // SAFETY: two valid NUL-terminated strings for the call; the EAL is
    // initialised.
    let rc = unsafe { sys::rte_eal_hotplug_remove(bus.as_ptr(), name.as_ptr()) };
    if rc < 0 {
        Err(errno_string(-rc))
    } else {
        Ok(())
    }
}

pub(crate) fn eal_cleanup() {
    // SAFETY: called once, after every port is closed and every lcore joined.
    unsafe { sys::rte_eal_cleanup() };
}

pub(crate) fn lcore_id() -> u32 {
    // SAFETY: reads a thread-local set by the EAL.
    unsafe { sys::ferrox_lcore_id() }
}

/// The EAL's lcores: the main one first, then the workers, as `-l` listed.
pub fn lcores() -> Vec<u32> {
    // SAFETY: plain queries after EAL init.
    let main = unsafe { sys::rte_get_main_lcore() };
    let mut all = vec![main];
    let mut at = u32::MAX;
    loop {
        // SAFETY: walks the EAL's lcore table; returns RTE_MAX_LCORE at the end.
        at = unsafe { sys::rte_get_next_lcore(at, 1, 0) };
        if at >= sys::RTE_MAX_LCORE {
            return all;
        }
        all.push(at);
    }
}

pub type Task<'a> = Box<dyn FnOnce() + Send + 'a>;

extern "C" fn run_task(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `Box<Task>` leaked by `run_on_lcores` for exactly
    // this launch; we take it back once.
    let task = unsafe { Box::from_raw(arg.cast::<Task<'_>>()) };
    // Unwinding into C is undefined: a panicking core reports failure.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(task)) {
        Ok(()) => 0,
        Err(_) => -1,
    }
}

/// Runs `tasks[0]` on this (the main) lcore and `tasks[i]` on worker lcore
/// `i`, and returns when all have finished (so tasks may borrow from the
/// caller, as with `std::thread::scope`). Returns how many tasks panicked.
pub fn run_on_lcores(tasks: Vec<Task<'_>>) -> usize {
    let lcores = lcores();
    assert!(
        tasks.len() <= lcores.len(),
        "{} tasks for {} lcores",
        tasks.len(),
        lcores.len()
    );
    let mut tasks = tasks.into_iter();
    let first = tasks.next();
    let mut launched = Vec::new();
    for (task, &lcore) in tasks.zip(&lcores[1..]) {
        let arg = Box::into_raw(Box::new(task)).cast::<libc::c_void>();
        // SAFETY: `run_task` takes the box back; the worker lcore is idle
        // (nothing else launches on it), and we wait for it below before
        // anything the task borrows can go away.
        let rc = unsafe { sys::rte_eal_remote_launch(Some(run_task), arg, lcore) };
        if rc != 0 {
            // SAFETY: the launch failed, so the box is still ours to drop.
            drop(unsafe { Box::from_raw(arg.cast::<Task<'_>>()) });
            panic!("cannot launch on lcore {lcore}: {}", errno_string(rc));
        }
        launched.push(lcore);
    }
    let mut failed = 0;
    if let Some(task) = first {
        failed += std::panic::catch_unwind(std::panic::AssertUnwindSafe(task)).is_err() as usize;
    }
    for lcore in launched {
        // SAFETY: waits for the task launched on `lcore` above.
        failed += (unsafe { sys::rte_eal_wait_lcore(lcore) } != 0) as usize;
    }
    failed
}
