//! Waking a sleeping consumer: the sleeping-flag protocol and the eventfd
//! system calls behind it.
//!
//! The protocol (checked by loom below): a consumer about to sleep swaps
//! the flag to 1, then looks at its rings once more; a producer, after
//! publishing, swaps the flag to 0 and rings the eventfd only if it saw 1.
//! Both swaps are read-modify-writes of one word, so one of them sees the
//! other: either the producer sees 1 and rings, or the consumer's swap
//! synchronises with the producer's and its last look sees the message.
//! While the consumer is busy the flag stays 0 and producers make no system
//! call.

use crate::sync::model::{AtomicU32, Ordering};

/// Producer side, after publishing: whether to ring the consumer.
#[inline]
pub(crate) fn should_wake(sleeping: &AtomicU32) -> bool {
    sleeping.swap(0, Ordering::AcqRel) == 1
}

/// Consumer side: declares itself asleep unless `is_empty` says there is
/// work. Returns whether the consumer may now block on its eventfd.
pub(crate) fn prepare_sleep(sleeping: &AtomicU32, is_empty: impl FnOnce() -> bool) -> bool {
    sleeping.swap(1, Ordering::AcqRel);
    if is_empty() {
        true
    } else {
        sleeping.swap(0, Ordering::AcqRel);
        false
    }
}

/// Consumer side, after waking (or giving up on sleeping).
pub(crate) fn awake(sleeping: &AtomicU32) {
    sleeping.swap(0, Ordering::AcqRel);
}

#[cfg(not(loom))]
pub(crate) use sys::*;

#[cfg(not(loom))]
mod sys {
    use std::io;
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
    use std::time::Duration;

    use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};

    /// A non-blocking eventfd a consumer sleeps on.
    #[derive(Debug)]
    pub(crate) struct EventFd(OwnedFd);

    impl EventFd {
        pub(crate) fn new() -> io::Result<EventFd> {
            let fd = rustix::event::eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?;
            Ok(EventFd(fd))
        }

        pub(crate) fn raw(&self) -> RawFd {
            self.0.as_raw_fd()
        }

        pub(crate) fn borrow(&self) -> BorrowedFd<'_> {
            self.0.as_fd()
        }

        /// Resets the counter; returns how many signals were pending.
        pub(crate) fn drain(&self) -> u64 {
            let mut value = [0u8; 8];
            match rustix::io::read(&self.0, &mut value) {
                Ok(8) => u64::from_ne_bytes(value),
                _ => 0,
            }
        }
    }

    /// Adds 1 to the eventfd behind `fd`, waking whoever sleeps on it. A
    /// full counter (EAGAIN) means a wake-up is already pending, which is
    /// all we want.
    pub(crate) fn signal(fd: BorrowedFd<'_>) {
        let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
    }

    /// This process's own descriptor for descriptor `fd` of process `pid`:
    /// `dup` when it is us, `pidfd_getfd` otherwise (Linux 5.6, same user or
    /// CAP_SYS_PTRACE).
    pub(crate) fn obtain(pid: u32, fd: RawFd) -> io::Result<OwnedFd> {
        if pid == std::process::id() {
            // SAFETY: `fd` names a descriptor of this process that its
            // owner keeps open while it is registered (the caller found it
            // in a live registration); the borrow ends with this call.
            let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
            return Ok(rustix::io::fcntl_dupfd_cloexec(borrowed, 0)?);
        }
        let pid = rustix::process::Pid::from_raw(pid as i32)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pid 0"))?;
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
        Ok(rustix::process::pidfd_getfd(
            &pidfd,
            fd,
            rustix::process::PidfdGetfdFlags::empty(),
        )?)
    }

    /// Blocks until `fd` is readable or `timeout` passes (nanosecond
    /// resolution: a wait under a millisecond is a wait, not a spin).
    /// Returns readiness.
    pub(crate) fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
        let timeout = Timespec {
            tv_sec: timeout.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        loop {
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(n) => return Ok(n > 0),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::mq::ring::{self, RingHeader, Storage};
    use loom::sync::{Arc, Condvar, Mutex};

    struct Bytes(Vec<loom::cell::UnsafeCell<u8>>);

    impl Storage for Bytes {
        fn capacity(&self) -> usize {
            self.0.len()
        }
        unsafe fn write(&self, at: usize, src: &[u8]) {
            for (i, b) in src.iter().enumerate() {
                // SAFETY: loom checks this access.
                self.0[at + i].with_mut(|p| unsafe { *p = *b });
            }
        }
        unsafe fn read<R>(&self, at: usize, len: usize, f: impl FnOnce(&[u8]) -> R) -> R {
            // SAFETY: loom checks this access.
            let buf: Vec<u8> = (at..at + len)
                .map(|i| self.0[i].with(|p| unsafe { *p }))
                .collect();
            f(&buf)
        }
        unsafe fn fill(&self, at: usize, len: usize, f: impl FnOnce(&mut [u8])) {
            let mut buf = vec![0u8; len];
            f(&mut buf);
            // SAFETY: forwarded contract.
            unsafe { self.write(at, &buf) }
        }
    }

    /// No lost wake-up: a consumer that sleeps whenever the ring looks empty
    /// still receives both messages (loom reports a deadlock otherwise).
    #[test]
    fn loom_sleeping_consumer_is_always_woken() {
        loom::model(|| {
            let shared = Arc::new((
                RingHeader::default(),
                Bytes((0..64).map(|_| loom::cell::UnsafeCell::new(0)).collect()),
                AtomicU32::new(0),
                (Mutex::new(false), Condvar::new()),
            ));
            let producer = {
                let shared = shared.clone();
                loom::thread::spawn(move || {
                    let mut pending = 0;
                    for tag in 0..2 {
                        ring::write(&shared.0, &shared.1, &mut pending, tag, 1, |b| {
                            b[0] = tag as u8
                        })
                        .unwrap();
                        ring::publish(&shared.0, pending);
                        if should_wake(&shared.2) {
                            let (flag, cv) = &shared.3;
                            *flag.lock().unwrap() = true;
                            cv.notify_one();
                        }
                    }
                })
            };
            let mut got = 0;
            while got < 2 {
                if ring::read(&shared.0, &shared.1, |tag, p| assert_eq!(p[0] as u32, tag)).is_some()
                {
                    got += 1;
                    continue;
                }
                if prepare_sleep(&shared.2, || ring::is_empty(&shared.0)) {
                    let (flag, cv) = &shared.3;
                    let mut rung = flag.lock().unwrap();
                    while !*rung {
                        rung = cv.wait(rung).unwrap();
                    }
                    *rung = false;
                    awake(&shared.2);
                }
            }
            producer.join().unwrap();
        });
    }
}
