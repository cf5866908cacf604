//! Producer and consumer handles over rings in a region.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::doorbell::{self, EventFd};
use super::layout::{DoorbellShared, FaninHeader, FANIN_MAGIC};
use super::ring::{
    self, PushError, RingHeader, RingRef, KIND, MAX_CAPACITY, MIN_CAPACITY, VERSION,
};
use super::{FANIN_KIND, FANIN_VERSION, MAX_LANES};
use crate::region::{Region, RegionError};
use crate::sync::{current_pid, process_alive};
use crate::Offset;

/// What went wrong with a queue, and whose fault it was.
#[derive(Debug, thiserror::Error)]
pub enum MqError {
    #[error("ring capacity {0} must be a power of two in {MIN_CAPACITY}..={MAX_CAPACITY}")]
    BadCapacity(u64),
    #[error("fan-in must have 1 to {MAX_LANES} lanes, got {0}")]
    BadLanes(usize),
    #[error("queue at {offset} is corrupt: {reason}")]
    Corrupt { offset: Offset, reason: String },
    #[error("the {end} end of queue {name:?} is held by pid {pid}")]
    Busy {
        name: String,
        end: &'static str,
        pid: u32,
    },
    #[error("every lane of fan-in {0:?} has a producer")]
    NoFreeLane(String),
    #[error("eventfd: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Region(#[from] RegionError),
}

type Result<T, E = MqError> = std::result::Result<T, E>;

/// Creates a ring of `capacity` bytes (a power of two) with its own
/// doorbell and names it `name` in the region's directory.
pub fn create_ring(region: &Arc<Region>, name: &str, capacity: u64) -> Result<Offset> {
    let doorbell = region.alloc(std::mem::size_of::<DoorbellShared>() as u64, 64)?;
    let ring = new_ring(region, capacity, doorbell)?;
    region.publish(name, KIND, VERSION, ring)?;
    Ok(ring)
}

fn new_ring(region: &Arc<Region>, capacity: u64, doorbell: Offset) -> Result<Offset> {
    if !capacity.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
        return Err(MqError::BadCapacity(capacity));
    }
    let header_off = region.alloc(std::mem::size_of::<RingHeader>() as u64, 64)?;
    let data = region.alloc(capacity, 64)?;
    let header: &RingHeader = region.view(header_off)?;
    let meta = &header.meta;
    meta.version.store(VERSION, Ordering::Relaxed);
    meta.capacity.store(capacity, Ordering::Relaxed);
    meta.data.store(data.to_raw(), Ordering::Relaxed);
    meta.doorbell.store(doorbell.to_raw(), Ordering::Relaxed);
    meta.magic.store(ring::MAGIC, Ordering::Release);
    Ok(header_off)
}

/// Takes a claim word for this process (free, or held by a dead process).
fn claim(word: &std::sync::atomic::AtomicU32, name: &str, end: &'static str) -> Result<()> {
    let me = current_pid();
    loop {
        let holder = word.load(Ordering::Acquire);
        if holder != 0 && (holder == me || process_alive(holder)) {
            return Err(MqError::Busy {
                name: name.into(),
                end,
                pid: holder,
            });
        }
        if word
            .compare_exchange(holder, me, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return Ok(());
        }
    }
}

/// The producing end of a ring. `Send`, not `Sync`.
#[derive(Debug)]
pub struct Producer {
    ring: RingRef,
    /// Tail including written-but-unpublished records.
    pending: u64,
    doorbell: Offset,
    /// Our descriptor for the consumer's eventfd, and the registration
    /// generation it belongs to.
    wake_fd: Option<(u32, OwnedFd)>,
}

impl Producer {
    /// Attaches to ring `name` as its only producer.
    pub fn attach(region: &Arc<Region>, name: &str) -> Result<Producer> {
        let ring = region.lookup(name, KIND, VERSION)?;
        let ring = RingRef::new(region, ring)?;
        claim(&ring.header().meta.producer_claim, name, "producer")?;
        Ok(Producer::on(ring))
    }

    fn on(ring: RingRef) -> Producer {
        let header = ring.header();
        let pending = header.producer.pos.load(Ordering::Relaxed);
        let doorbell = Offset::from_raw(header.meta.doorbell.load(Ordering::Relaxed));
        Producer {
            ring,
            pending,
            doorbell,
            wake_fd: None,
        }
    }

    /// Largest payload this ring accepts.
    pub fn max_message(&self) -> usize {
        ring::max_payload(ring::Storage::capacity(&self.ring))
    }

    /// Queues a message without publishing it; see [`Producer::flush`].
    pub fn write(&mut self, tag: u32, payload: &[u8]) -> Result<(), PushError> {
        self.write_with(tag, payload.len(), |dst| dst.copy_from_slice(payload))
    }

    /// Queues a `len`-byte message built in place by `fill`.
    pub fn write_with(
        &mut self,
        tag: u32,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), PushError> {
        ring::write(
            self.ring.header(),
            &self.ring,
            &mut self.pending,
            tag,
            len,
            fill,
        )
    }

    /// Publishes everything written and wakes the consumer if it sleeps.
    pub fn flush(&mut self) {
        let header = self.ring.header();
        if header.producer.pos.load(Ordering::Relaxed) == self.pending {
            return;
        }
        ring::publish(header, self.pending);
        let bell: &DoorbellShared = self
            .ring
            .region()
            .view(self.doorbell)
            .expect("doorbell checked at attach");
        if doorbell::should_wake(&bell.sleeping) {
            self.ring_doorbell();
        }
    }

    /// Writes and publishes one message.
    pub fn push(&mut self, tag: u32, payload: &[u8]) -> Result<(), PushError> {
        self.write(tag, payload)?;
        self.flush();
        Ok(())
    }

    #[cold]
    fn ring_doorbell(&mut self) {
        let bell: &DoorbellShared = self
            .ring
            .region()
            .view(self.doorbell)
            .expect("doorbell checked at attach");
        let generation = bell.generation.load(Ordering::Acquire);
        if self.wake_fd.as_ref().is_none_or(|(g, _)| *g != generation) {
            let pid = bell.consumer_pid.load(Ordering::Acquire);
            let fd = bell.consumer_fd.load(Ordering::Acquire);
            if pid == 0 {
                return; // no consumer registered; it will poll when it comes
            }
            match doorbell::obtain(pid, fd) {
                Ok(owned) => self.wake_fd = Some((generation, owned)),
                Err(e) => {
                    tracing::warn!(pid, fd, error = %e, "cannot obtain the consumer's eventfd; it will see the message when it next polls");
                    return;
                }
            }
        }
        if let Some((_, fd)) = &self.wake_fd {
            doorbell::signal(fd.as_fd());
        }
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.flush();
        self.ring
            .header()
            .meta
            .producer_claim
            .store(0, Ordering::Release);
    }
}

/// The sleeping half of a consumer: its eventfd, registered in a doorbell.
#[derive(Debug)]
struct Waiter {
    region: Arc<Region>,
    doorbell: Offset,
    eventfd: EventFd,
}

impl Waiter {
    fn register(region: &Arc<Region>, doorbell: Offset) -> Result<Waiter> {
        let eventfd = EventFd::new()?;
        let bell: &DoorbellShared = region.view(doorbell)?;
        bell.consumer_fd.store(eventfd.raw(), Ordering::Relaxed);
        bell.consumer_pid.store(current_pid(), Ordering::Relaxed);
        bell.generation.fetch_add(1, Ordering::Release);
        Ok(Waiter {
            region: region.clone(),
            doorbell,
            eventfd,
        })
    }

    fn bell(&self) -> &DoorbellShared {
        self.region
            .view(self.doorbell)
            .expect("doorbell checked at register")
    }

    /// [`Sleep::prepare_sleep`] for a consumer whose queue is empty when
    /// `is_empty` says so.
    fn prepare_sleep(&self, is_empty: impl FnOnce() -> bool) -> bool {
        doorbell::prepare_sleep(&self.bell().sleeping, is_empty)
    }

    /// [`Sleep::woken`].
    fn woken(&self) {
        self.eventfd.drain();
        doorbell::awake(&self.bell().sleeping);
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let bell = self.bell();
        if bell.consumer_pid.load(Ordering::Relaxed) == current_pid() {
            bell.consumer_pid.store(0, Ordering::Release);
        }
    }
}

/// How a consumer sleeps, shared by [`Consumer`] and [`fanin::Consumer`].
pub trait Sleep {
    /// Declares the consumer asleep unless a message is waiting. When this
    /// returns `true`, block on [`Sleep::wake_fd`] (epoll, poll), then call
    /// [`Sleep::woken`] and poll the queue again.
    fn prepare_sleep(&mut self) -> bool;
    /// The eventfd to wait on; readable once a producer rang.
    fn wake_fd(&self) -> BorrowedFd<'_>;
    /// Call after waking (or after deciding not to block after all).
    fn woken(&mut self);

    /// Sleeps until a producer rings or `timeout` passes, unless a message
    /// is already waiting. Returns whether a wake-up (or message) came.
    fn wait(&mut self, timeout: Duration) -> std::io::Result<bool> {
        if !self.prepare_sleep() {
            return Ok(true);
        }
        let rung = doorbell::wait_readable(self.wake_fd(), timeout);
        self.woken();
        rung
    }
}

/// The consuming end of a ring. `Send`, not `Sync`.
#[derive(Debug)]
pub struct Consumer {
    ring: RingRef,
    waiter: Waiter,
}

impl Consumer {
    /// Attaches to ring `name` as its only consumer.
    pub fn attach(region: &Arc<Region>, name: &str) -> Result<Consumer> {
        let ring = region.lookup(name, KIND, VERSION)?;
        let ring = RingRef::new(region, ring)?;
        claim(&ring.header().meta.consumer_claim, name, "consumer")?;
        let doorbell = Offset::from_raw(ring.header().meta.doorbell.load(Ordering::Relaxed));
        let waiter = Waiter::register(region, doorbell)
            .inspect_err(|_| release_consumers(std::slice::from_ref(&ring)))?;
        Ok(Consumer { ring, waiter })
    }

    /// Hands the next message (tag, payload) to `f`; `None` when empty. The
    /// payload is read in place and released when `f` returns.
    pub fn pop<R>(&mut self, f: impl FnOnce(u32, &[u8]) -> R) -> Option<R> {
        ring::read(self.ring.header(), &self.ring, f)
    }

    /// Hands up to `max` messages to `f`; returns how many.
    pub fn pop_burst(&mut self, max: usize, mut f: impl FnMut(u32, &[u8])) -> usize {
        let mut n = 0;
        while n < max && self.pop(&mut f).is_some() {
            n += 1;
        }
        n
    }

    pub fn is_empty(&self) -> bool {
        ring::is_empty(self.ring.header())
    }

    fn rings(&self) -> &[RingRef] {
        std::slice::from_ref(&self.ring)
    }
}

/// [`Sleep`], and the release of its claims when dropped, for a consumer
/// end with a `waiter` field and `is_empty` and `rings` methods.
macro_rules! consumer_end {
    ($consumer:ty) => {
        impl Sleep for $consumer {
            fn prepare_sleep(&mut self) -> bool {
                self.waiter.prepare_sleep(|| self.is_empty())
            }

            fn wake_fd(&self) -> BorrowedFd<'_> {
                self.waiter.eventfd.borrow()
            }

            fn woken(&mut self) {
                self.waiter.woken();
            }
        }

        impl Drop for $consumer {
            fn drop(&mut self) {
                release_consumers(self.rings());
            }
        }
    };
}

consumer_end!(Consumer);

/// Gives up the consumer claim on each of `rings`.
fn release_consumers(rings: &[RingRef]) {
    for ring in rings {
        ring.header()
            .meta
            .consumer_claim
            .store(0, Ordering::Release);
    }
}

/// Many producers, one consumer: one SPSC lane per producer, one doorbell.
pub mod fanin {
    use super::*;

    /// Creates a fan-in of `lanes` rings of `capacity` bytes each.
    pub fn create(region: &Arc<Region>, name: &str, lanes: usize, capacity: u64) -> Result<Offset> {
        if lanes == 0 || lanes > MAX_LANES {
            return Err(MqError::BadLanes(lanes));
        }
        let header_off = region.alloc(std::mem::size_of::<FaninHeader>() as u64, 64)?;
        let header: &FaninHeader = region.view(header_off)?;
        let doorbell = header_off.add(std::mem::offset_of!(FaninHeader, doorbell) as u64);
        for lane in 0..lanes {
            let ring = new_ring(region, capacity, doorbell)?;
            header.lane_rings[lane].store(ring.to_raw(), Ordering::Relaxed);
        }
        header.version.store(FANIN_VERSION, Ordering::Relaxed);
        header.lanes.store(lanes as u32, Ordering::Relaxed);
        header.magic.store(FANIN_MAGIC, Ordering::Release);
        region.publish(name, FANIN_KIND, FANIN_VERSION, header_off)?;
        Ok(header_off)
    }

    fn lanes(region: &Arc<Region>, name: &str) -> Result<(Offset, Vec<Offset>)> {
        let at = region.lookup(name, FANIN_KIND, FANIN_VERSION)?;
        let header: &FaninHeader = region.view(at)?;
        let corrupt = |reason: String| MqError::Corrupt { offset: at, reason };
        if header.magic.load(Ordering::Acquire) != FANIN_MAGIC {
            return Err(corrupt("bad fan-in magic".into()));
        }
        let lanes = header.lanes.load(Ordering::Relaxed) as usize;
        if lanes == 0 || lanes > MAX_LANES {
            return Err(corrupt(format!("{lanes} lanes")));
        }
        let rings = header.lane_rings[..lanes]
            .iter()
            .map(|r| Offset::from_raw(r.load(Ordering::Relaxed)))
            .collect();
        Ok((
            at.add(std::mem::offset_of!(FaninHeader, doorbell) as u64),
            rings,
        ))
    }

    /// Attaches a producer to the first free lane of fan-in `name`.
    pub fn producer(region: &Arc<Region>, name: &str) -> Result<Producer> {
        let (_, rings) = lanes(region, name)?;
        for ring in rings {
            let ring = RingRef::new(region, ring)?;
            if claim(&ring.header().meta.producer_claim, name, "producer").is_ok() {
                return Ok(Producer::on(ring));
            }
        }
        Err(MqError::NoFreeLane(name.into()))
    }

    /// The consuming end of a fan-in: reads lanes round-robin.
    #[derive(Debug)]
    pub struct Consumer {
        lanes: Vec<RingRef>,
        next: usize,
        waiter: Waiter,
    }

    impl Consumer {
        pub fn attach(region: &Arc<Region>, name: &str) -> Result<Consumer> {
            let (doorbell, rings) = lanes(region, name)?;
            let mut lanes = Vec::with_capacity(rings.len());
            for ring in rings {
                let ring = RingRef::new(region, ring)?;
                if let Err(e) = claim(&ring.header().meta.consumer_claim, name, "consumer") {
                    release_consumers(&lanes);
                    return Err(e);
                }
                lanes.push(ring);
            }
            let waiter =
                Waiter::register(region, doorbell).inspect_err(|_| release_consumers(&lanes))?;
            Ok(Consumer {
                lanes,
                next: 0,
                waiter,
            })
        }

        /// The next message from any lane, lanes taken in turn.
        pub fn pop<R>(&mut self, f: impl FnOnce(u32, &[u8]) -> R) -> Option<R> {
            let mut f = Some(f);
            for _ in 0..self.lanes.len() {
                let lane = &self.lanes[self.next];
                self.next = (self.next + 1) % self.lanes.len();
                let mut out = None;
                if ring::read(lane.header(), lane, |tag, payload| {
                    out = f.take().map(|f| f(tag, payload))
                })
                .is_some()
                {
                    return out;
                }
            }
            None
        }

        pub fn is_empty(&self) -> bool {
            self.lanes.iter().all(|lane| ring::is_empty(lane.header()))
        }

        fn rings(&self) -> &[RingRef] {
            &self.lanes
        }
    }

    consumer_end!(Consumer);
}

#[cfg(test)]
mod tests;
