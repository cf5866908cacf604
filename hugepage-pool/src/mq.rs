//! Message queues in shared memory.
//!
//! A [`Producer`]/[`Consumer`] pair shares one ring: variable-size messages
//! (a `u32` tag and a payload, typically a few offsets of chunks), no lock,
//! and an eventfd that wakes the consumer only when it declared itself
//! asleep, so the busy path makes no system call. Either end may live in any
//! process that attaches to the region; the producer obtains its own
//! descriptor for the consumer's eventfd with `pidfd_getfd`.
//!
//! Several producers feed one consumer through a [`fanin`]: one SPSC ring
//! per producer (a lane), all sharing one doorbell. That is chosen over one
//! ring behind a lock because the producers are poll-mode cores: a lock
//! would make one core's latency depend on another core being descheduled
//! inside its critical section, and a contended lock line would bounce
//! between cores on every message. Lanes cost memory (one ring each) and
//! give no order between producers, which no user of a fan-in needs.
//!
//! Records are written with [`Producer::write`] and become visible with
//! [`Producer::flush`] (one publish and at most one wake-up for a burst);
//! [`Producer::push`] does both.

#[allow(unsafe_code)]
mod doorbell;
#[allow(unsafe_code)] // declares its records `Shared`
mod layout;
#[allow(unsafe_code)]
mod ring;

pub use layout::{FANIN_KIND, FANIN_VERSION, MAX_LANES};
pub use ring::{PushError, KIND, MAX_CAPACITY, MIN_CAPACITY, VERSION};

// The handles over shared memory; under `--cfg loom` only the protocol
// core above is built, and checked.
#[cfg(not(loom))]
mod ends;
#[cfg(not(loom))]
pub use ends::{create_ring, fanin, Consumer, MqError, Producer, Sleep};
