//! Chunk and node handles, and access to their payload bytes.
//!
//! The soundness of every byte access here rests on one invariant: for each
//! allocated chunk there is exactly one [`Chunk`] token (or one [`Node`]
//! holding it) in the whole system. Tokens are created only by `alloc` and
//! by `adopt` (which wins a compare-exchange from "in transit" to "owned"),
//! and destroyed by `free` and `send`. So `&Chunk` means nobody writes the
//! payload and `&mut Chunk` means nobody else touches it.

use std::sync::atomic::Ordering;

use super::layout::CHUNK_HEADER;
use super::{CoreCache, Pool, PoolError, Result};
use crate::Offset;

/// An allocated chunk. Move-only: free it with [`CoreCache::free`] or hand
/// it to another core with [`CoreCache::send`]; dropping it leaks it.
#[must_use = "a chunk must be freed or sent, or it leaks"]
#[derive(Debug, PartialEq, Eq)]
pub struct Chunk {
    offset: Offset,
    class: u8,
}

impl Chunk {
    pub(super) fn new(offset: Offset, class: u8) -> Chunk {
        Chunk { offset, class }
    }

    pub(super) fn into_offset(self) -> Offset {
        self.offset
    }

    /// Where the chunk is in the region (its header; the payload follows).
    pub fn offset(&self) -> Offset {
        self.offset
    }

    pub fn class(&self) -> usize {
        self.class as usize
    }

    fn payload_offset(&self) -> Offset {
        self.offset.add(CHUNK_HEADER as u64)
    }
}

impl Pool {
    /// The bytes written into `chunk` so far.
    pub fn payload<'a>(&'a self, chunk: &'a Chunk) -> &'a [u8] {
        let len = self
            .chunk_header(chunk.offset)
            .map(|h| h.len.load(Ordering::Relaxed))
            .unwrap_or(0);
        let len = len.min(self.payload_size(chunk.class())) as usize;
        // SAFETY: `&Chunk` proves no writer exists (module invariant); the
        // range lies inside the chunk, which lies inside a live mapping.
        unsafe { self.region.bytes(chunk.payload_offset(), len) }.expect("chunk lies in the region")
    }

    /// The whole payload capacity of `chunk`, for writing in place; follow
    /// with [`Pool::set_len`].
    pub fn payload_mut<'a>(&'a self, chunk: &'a mut Chunk) -> &'a mut [u8] {
        let cap = self.payload_size(chunk.class()) as usize;
        // SAFETY: `&mut Chunk` proves exclusive access (module invariant).
        unsafe { self.region.bytes_mut(chunk.payload_offset(), cap) }
            .expect("chunk lies in the region")
    }

    /// Sets how many payload bytes of `chunk` are in use.
    pub fn set_len(&self, chunk: &mut Chunk, len: usize) {
        assert!(
            len <= self.payload_size(chunk.class()) as usize,
            "length beyond chunk capacity"
        );
        let header = self
            .chunk_header(chunk.offset)
            .expect("chunk lies in the region");
        header.len.store(len as u32, Ordering::Relaxed);
    }

    /// Copies `bytes` into `chunk`, replacing its content.
    pub fn write(&self, chunk: &mut Chunk, bytes: &[u8]) -> Result<()> {
        let cap = self.payload_size(chunk.class()) as usize;
        if bytes.len() > cap {
            return Err(PoolError::Config(format!(
                "{} bytes do not fit a {cap}-byte chunk",
                bytes.len()
            )));
        }
        self.payload_mut(chunk)[..bytes.len()].copy_from_slice(bytes);
        self.set_len(chunk, bytes.len());
        Ok(())
    }

    /// The payload slices of `node`'s chunks, in order.
    pub fn node_slices<'a>(&'a self, node: &'a Node) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut at = node.head;
        std::iter::from_fn(move || {
            if at.is_null() {
                return None;
            }
            let header = self
                .chunk_header(at)
                .expect("node chain lies in the region");
            let len = header.len.load(Ordering::Relaxed) as usize;
            let this = at.add(CHUNK_HEADER as u64);
            at = Offset::from_raw(header.next.load(Ordering::Relaxed));
            // SAFETY: `&Node` proves no writer of its chunks exists (module
            // invariant: a node owns its chain as a Chunk owns its chunk).
            Some(unsafe { self.region.bytes(this, len) }.expect("node chain lies in the region"))
        })
    }

    /// Appends `node`'s bytes to `out`.
    pub fn read_node(&self, node: &Node, out: &mut Vec<u8>) {
        out.reserve(node.len as usize);
        for slice in self.node_slices(node) {
            out.extend_from_slice(slice);
        }
    }
}

/// A buffer larger than one chunk: chunks of one class chained through
/// their headers. Plain data (offsets and a length), move-only like a chunk.
#[must_use = "a node must be freed with CoreCache::free_node, or it leaks"]
#[derive(Debug, PartialEq, Eq)]
pub struct Node {
    head: Offset,
    tail: Offset,
    len: u64,
    class: u8,
}

impl Node {
    /// An empty node that will grow in chunks of `class`.
    pub fn new(class: usize) -> Node {
        Node {
            head: Offset::NULL,
            tail: Offset::NULL,
            len: 0,
            class: class as u8,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn class(&self) -> usize {
        self.class as usize
    }
}

impl CoreCache {
    /// Appends `bytes` to `node`, taking as many chunks as needed. All or
    /// nothing: on exhaustion the node is left exactly as it was.
    pub fn append(&mut self, node: &mut Node, bytes: &[u8]) -> Result<()> {
        let pool = self.pool.clone();
        let class = node.class();
        let payload = pool.payload_size(class) as usize;
        let tail_room = if node.tail.is_null() {
            0
        } else {
            payload - pool.chunk_header(node.tail)?.len.load(Ordering::Relaxed) as usize
        };
        let needed = bytes.len().saturating_sub(tail_room).div_ceil(payload);

        // Take every new chunk first, chained through their headers.
        let (mut first, mut last) = (Offset::NULL, Offset::NULL);
        for _ in 0..needed {
            match self.alloc(class) {
                Ok(chunk) => {
                    let at = chunk.into_offset();
                    if first.is_null() {
                        first = at;
                    } else {
                        pool.chunk_header(last)?
                            .next
                            .store(at.to_raw(), Ordering::Relaxed);
                    }
                    last = at;
                }
                Err(e) => {
                    self.free_chain(first);
                    return Err(e);
                }
            }
        }

        let (head_part, mut rest) = bytes.split_at(tail_room.min(bytes.len()));
        if !head_part.is_empty() {
            let tail = pool.chunk_header(node.tail)?;
            let used = tail.len.load(Ordering::Relaxed) as usize;
            // SAFETY: `&mut Node` proves exclusive access to its chain; the
            // range [used, used + len) is inside the tail chunk's payload.
            let dst = unsafe {
                pool.region.bytes_mut(
                    node.tail.add(CHUNK_HEADER as u64 + used as u64),
                    head_part.len(),
                )
            }?;
            dst.copy_from_slice(head_part);
            tail.len
                .store((used + head_part.len()) as u32, Ordering::Relaxed);
        }
        let mut at = first;
        while !at.is_null() {
            let header = pool.chunk_header(at)?;
            let (now, later) = rest.split_at(payload.min(rest.len()));
            // SAFETY: the chunk was just allocated by this core and is reachable
            // only through the private chain being built; range within payload.
            let dst = unsafe {
                pool.region
                    .bytes_mut(at.add(CHUNK_HEADER as u64), now.len())
            }?;
            dst.copy_from_slice(now);
            header.len.store(now.len() as u32, Ordering::Relaxed);
            rest = later;
            at = Offset::from_raw(header.next.load(Ordering::Relaxed));
        }
        if !first.is_null() {
            if node.head.is_null() {
                node.head = first;
            } else {
                pool.chunk_header(node.tail)?
                    .next
                    .store(first.to_raw(), Ordering::Relaxed);
            }
            node.tail = last;
        }
        node.len += bytes.len() as u64;
        Ok(())
    }

    /// Frees every chunk of `node`.
    pub fn free_node(&mut self, node: Node) {
        self.free_chain(node.head);
    }

    fn free_chain(&mut self, mut at: Offset) {
        while !at.is_null() {
            let next = self
                .pool
                .chunk_header(at)
                .expect("chain lies in the region")
                .next
                .load(Ordering::Relaxed);
            self.free_offset(at);
            at = Offset::from_raw(next);
        }
    }
}
