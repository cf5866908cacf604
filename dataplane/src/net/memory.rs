//! Socket buffers from the chunk pool.
//!
//! Each TCP connection's receive and send buffers are two chunks of the
//! core's hugepage-backed pool instead of heap vectors: connection memory
//! then lives where the rest of the dataplane's state lives (and where a
//! later handover can find it), and a core takes chunks from its own cache
//! without a lock.
//!
//! smoltcp borrows its buffers for the socket's lifetime, and a socket set
//! that lives in the stack cannot borrow from the stack's own pool, so the
//! buffers are handed to smoltcp as `'static` slices. That is sound because
//! of how [`PooledSocket`] is built and taken apart, which is all in this
//! module:
//! - it owns the chunks (their tokens) for as long as the socket exists,
//!   so no one else can hand the same bytes out;
//! - it holds a reference to the region, so the mapping outlives the
//!   socket whatever order things are dropped in;
//! - the socket never leaves it: callers reach the socket only through
//!   the methods below, never as `&mut tcp::Socket`, so it cannot be
//!   swapped out, and [`SocketMemory::release`] drops the socket before it
//!   frees the chunks.

use std::sync::Arc;

use hugepage_pool::pool::{Chunk, ClassConfig, CoreCache, Pool, PoolConfig, PoolError};
use hugepage_pool::{Region, RegionOptions};
use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::phy::Device;
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::IpEndpoint;

/// The chunk size whose payload holds `bytes` (chunk sizes are multiples
/// of 64, header included).
fn chunk_size(bytes: u32) -> u32 {
    (bytes + hugepage_pool::pool::CHUNK_HEADER).next_multiple_of(64)
}

/// Buffer sizes: an accepted connection's receive and send buffers, and a
/// connection to a server's (both).
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Holds a client's pipeline: smaller, and a pipeline that outgrows
    /// it waits a round trip for the window.
    pub client: u32,
    /// Replies beyond it wait in the application's output.
    pub client_send: u32,
    pub server: u32,
    /// An accepted connection's receive and send buffers until it needs
    /// more (then it moves to `client` and `client_send` buffers); 0:
    /// those from accept on.
    pub idle: u32,
}

/// The pool's classes for `sizes` (one per distinct chunk size, in
/// increasing order, as the pool wants them), with `clients` client
/// connections' worth of chunks to start with.
fn pool_config(sizes: Sizes, clients: u32) -> PoolConfig {
    let mut classes: Vec<ClassConfig> = Vec::new();
    let idle = [(sizes.idle, 2 * clients)];
    let idle = if sizes.idle > 0 { &idle[..] } else { &[] };
    for &(bytes, chunks) in [
        (sizes.client, clients),
        (sizes.client_send, clients),
        (sizes.server, 16),
    ]
    .iter()
    .chain(idle)
    {
        let chunk_size = chunk_size(bytes);
        match classes.iter_mut().find(|c| c.chunk_size == chunk_size) {
            Some(class) => class.chunks += chunks,
            None => classes.push(ClassConfig { chunk_size, chunks }),
        }
    }
    classes.sort_by_key(|c| c.chunk_size);
    PoolConfig { classes }
}

/// Which pool class holds buffers of `bytes` under `sizes`.
fn class_of(sizes: Sizes, bytes: u32) -> usize {
    pool_config(sizes, 0)
        .classes
        .iter()
        .position(|c| c.chunk_size == chunk_size(bytes))
        .expect("every buffer size has its class")
}

/// The socket buffer pool of a dataplane process, one cache per core.
#[derive(Debug)]
pub struct SocketPool {
    pool: Pool,
    sizes: Sizes,
}

impl SocketPool {
    /// A pool in a new region `name` (hugepages when free, else `/dev/shm`),
    /// removed when the last user drops it.
    pub fn create(name: &str, sizes: Sizes, clients: u32) -> Result<SocketPool, PoolError> {
        let config = pool_config(sizes, clients);
        let region = Region::create(
            name,
            &RegionOptions {
                size: config.bytes() + (1 << 20),
                ..RegionOptions::default()
            },
        )?;
        Ok(SocketPool {
            pool: Pool::create(&region, "sockets", &config)?,
            sizes,
        })
    }

    /// The pool named `sockets` in another process's `region` (the
    /// control process's), created there on first use. The region's owner
    /// can then grow it while the cores run (`ferroxctl shm resize`); this
    /// process grows it only into room the region already has. A pool
    /// left by an earlier dataplane is taken over if its chunk sizes are
    /// the ones asked for.
    pub fn in_region(
        region: &Arc<Region>,
        sizes: Sizes,
        clients: u32,
    ) -> Result<SocketPool, PoolError> {
        let config = pool_config(sizes, clients);
        let mut sizes = sizes;
        let pool = match Pool::attach(region, "sockets") {
            Ok(pool) => {
                let found: Vec<u32> = (0..pool.class_count())
                    .map(|c| pool.chunk_size(c))
                    .collect();
                let chunk_sizes = |sizes: Sizes| -> Vec<u32> {
                    let config = pool_config(sizes, 0);
                    config.classes.iter().map(|c| c.chunk_size).collect()
                };
                let wanted = chunk_sizes(sizes);
                let without_idle = Sizes { idle: 0, ..sizes };
                if found != wanted && found == chunk_sizes(without_idle) {
                    // Left by a dataplane without idle buffers (a hot
                    // upgrade from one): full buffers from accept on.
                    tracing::warn!(
                        "the region's socket pool has no class for idle buffers: client connections get full buffers from accept on"
                    );
                    sizes = without_idle;
                } else if found != wanted {
                    return Err(PoolError::Config(format!(
                        "the region's socket pool has chunks of {found:?} bytes; this dataplane wants {wanted:?} (other --client-*-buffer-kib?)"
                    )));
                }
                pool
            }
            Err(_) => Pool::create(region, "sockets", &config)?,
        };
        Ok(SocketPool { pool, sizes })
    }

    /// A pool on the heap, for tests.
    pub fn heap(sizes: Sizes, clients: u32) -> SocketPool {
        let config = pool_config(sizes, clients);
        let region = Region::heap(config.bytes() + (1 << 20));
        SocketPool {
            pool: Pool::create(&region, "sockets", &config).expect("a fresh heap region fits"),
            sizes,
        }
    }

    /// Core `core`'s share.
    pub fn core(&self, core: usize) -> Result<SocketMemory, PoolError> {
        let sizes = self.sizes;
        Ok(SocketMemory {
            cache: self.pool.core(core)?,
            sizes,
            classes: [
                class_of(sizes, sizes.client),
                class_of(sizes, sizes.client_send),
                class_of(sizes, sizes.server),
                if sizes.idle > 0 {
                    class_of(sizes, sizes.idle)
                } else {
                    usize::MAX
                },
            ],
            held: 0,
        })
    }

    /// Chunks handed out and not yet given back, over every class.
    pub fn in_use(&self) -> u64 {
        self.pool.stats().classes.iter().map(|c| c.in_use).sum()
    }

    pub fn region(&self) -> &Arc<Region> {
        self.pool.region()
    }
}

/// One core's socket buffers.
#[derive(Debug)]
pub struct SocketMemory {
    cache: CoreCache,
    sizes: Sizes,
    /// The pool classes of a client's receive and send buffers, a server
    /// connection's, and an idle client's (`usize::MAX`: none).
    classes: [usize; 4],
    /// Bytes of buffers this core's sockets hold.
    held: u64,
}

/// Which buffers a socket gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepted from a client, or one that outgrew its idle buffers.
    Client,
    /// Accepted from a client, with the small buffers it keeps until it
    /// needs more (`Sizes::idle`).
    Idle,
    /// Opened to a server.
    Server,
}

impl SocketMemory {
    /// The receive buffer of an idle client connection (0: none; accepted
    /// connections get the full buffers).
    pub fn idle_size(&self) -> u32 {
        self.sizes.idle
    }

    /// Bytes of buffers this core's sockets hold.
    pub fn held_bytes(&self) -> u64 {
        self.held
    }

    /// The receive buffer size a socket for `role` gets.
    pub fn recv_size(&self, role: Role) -> u32 {
        self.buffers(role).0 .1
    }

    /// The pool class and size of the receive and the send buffer of a
    /// socket for `role` (an idle one gets full buffers when the pool has
    /// no idle class).
    fn buffers(&self, role: Role) -> ((usize, u32), (usize, u32)) {
        let [client, client_send, server, idle] = self.classes;
        match role {
            Role::Idle if idle != usize::MAX => ((idle, self.sizes.idle), (idle, self.sizes.idle)),
            Role::Client | Role::Idle => (
                (client, self.sizes.client),
                (client_send, self.sizes.client_send),
            ),
            Role::Server => ((server, self.sizes.server), (server, self.sizes.server)),
        }
    }

    /// A chunk of `class`; when the pool has none left, it grows by half
    /// the chunks it has: geometric growth keeps the region's segment
    /// count low (from 1,024 connections to 100,000 in a dozen steps per
    /// class), and half rather than double keeps what is reserved and
    /// unused under a third of the pool.
    fn chunk(&mut self, class: usize) -> Result<Chunk, PoolError> {
        match self.cache.alloc(class) {
            Err(PoolError::Exhausted { .. }) => {
                let pool = self.cache.pool();
                let total = pool.stats().classes[class].total as u32;
                pool.add_chunks(class, (total / 2).max(16))?;
                self.cache.alloc(class)
            }
            other => other,
        }
    }

    /// A TCP socket for `role` whose buffers are chunks of this core's
    /// pool, set up by `configure`.
    pub fn socket(
        &mut self,
        role: Role,
        configure: impl FnOnce(&mut tcp::Socket<'static>),
    ) -> Result<PooledSocket, PoolError> {
        let ((rx_class, rx_size), (tx_class, tx_size)) = self.buffers(role);
        let mut rx = self.chunk(rx_class)?;
        let mut tx = match self.chunk(tx_class) {
            Ok(chunk) => chunk,
            Err(e) => {
                self.cache.free(rx);
                return Err(e);
            }
        };
        self.held += u64::from(rx_size) + u64::from(tx_size);
        let pool = self.cache.pool();
        let rx_bytes = unbounded(&mut pool.payload_mut(&mut rx)[..rx_size as usize]);
        let tx_bytes = unbounded(&mut pool.payload_mut(&mut tx)[..tx_size as usize]);
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(rx_bytes),
            tcp::SocketBuffer::new(tx_bytes),
        );
        configure(&mut socket);
        let mut set = SocketSet::new(Vec::with_capacity(1));
        let handle = set.add(socket);
        Ok(PooledSocket {
            set,
            handle,
            chunks: [rx, tx],
            _region: pool.region().clone(),
        })
    }

    /// Drops the socket, then gives its buffers back.
    pub fn release(&mut self, socket: PooledSocket) {
        self.held -= (socket.recv_capacity() + socket.send_capacity()) as u64;
        let PooledSocket {
            set,
            chunks,
            _region,
            ..
        } = socket;
        drop(set);
        for chunk in chunks {
            self.cache.free(chunk);
        }
    }
}

/// Extends a chunk payload borrow to `'static`.
fn unbounded(bytes: &mut [u8]) -> &'static mut [u8] {
    let (ptr, len) = (bytes.as_mut_ptr(), bytes.len());
    // SAFETY: the bytes are a chunk payload inside a mapping of the pool's
    // region. The only caller puts the slice into a socket that a
    // `PooledSocket` owns together with the chunk's token and an `Arc` of
    // the region: the token makes these bytes this socket's alone until
    // `release` frees it, which happens after the socket is dropped, and
    // the `Arc` keeps the mapping alive as long as the socket (module
    // docs). Nothing else reads or writes the payload meanwhile.
    unsafe { std::slice::from_raw_parts_mut(ptr, len) }
}

/// A one-socket set whose buffers are pool chunks. Give it back with
/// [`SocketMemory::release`]; dropping it instead leaks the chunks (the
/// memory stays valid).
#[derive(Debug)]
#[must_use = "give a pooled socket back with SocketMemory::release"]
pub struct PooledSocket {
    // Dropped first: the socket borrows the chunks below.
    set: SocketSet<'static>,
    handle: SocketHandle,
    chunks: [Chunk; 2],
    _region: Arc<Region>,
}

/// Read-only questions a `PooledSocket` passes on to its one socket, under
/// the socket's own names.
macro_rules! socket_queries {
    ($($(#[$doc:meta])* $name:ident -> $ty:ty;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(&self) -> $ty {
                self.socket().$name()
            }
        )*
    };
}

impl PooledSocket {
    fn socket(&self) -> &tcp::Socket<'static> {
        self.set.get::<tcp::Socket>(self.handle)
    }

    fn socket_mut(&mut self) -> &mut tcp::Socket<'static> {
        self.set.get_mut::<tcp::Socket>(self.handle)
    }

    socket_queries! {
        state -> tcp::State;
        can_recv -> bool;
        can_send -> bool;
        may_send -> bool;
        /// Bytes in the send buffer: sent and unacknowledged, or unsent.
        send_queue -> usize;
        /// Bytes received in order and not yet read.
        recv_queue -> usize;
        recv_capacity -> usize;
        send_capacity -> usize;
    }

    /// Receives what is contiguous in the buffer; `f` returns how much it
    /// took.
    pub fn recv<R>(
        &mut self,
        f: impl FnOnce(&mut [u8]) -> (usize, R),
    ) -> Result<R, tcp::RecvError> {
        self.socket_mut().recv(f)
    }

    pub fn send_slice(&mut self, data: &[u8]) -> Result<usize, tcp::SendError> {
        self.socket_mut().send_slice(data)
    }

    pub fn listen(&mut self, port: u16) -> Result<(), tcp::ListenError> {
        self.socket_mut().listen(port)
    }

    pub fn connect(
        &mut self,
        iface: &mut Interface,
        remote: IpEndpoint,
        local_port: u16,
    ) -> Result<(), tcp::ConnectError> {
        self.socket_mut()
            .connect(iface.context(), remote, local_port)
    }

    pub fn close(&mut self) {
        self.socket_mut().close();
    }

    pub fn abort(&mut self) {
        self.socket_mut().abort();
    }

    /// Hands one received frame to the socket.
    pub fn poll_ingress<D: Device + ?Sized>(
        &mut self,
        iface: &mut Interface,
        now: Instant,
        device: &mut D,
    ) {
        iface.poll_ingress_single(now, device, &mut self.set);
    }

    /// Lets the socket send what it has.
    pub fn poll_egress<D: Device + ?Sized>(
        &mut self,
        iface: &mut Interface,
        now: Instant,
        device: &mut D,
    ) {
        iface.poll_egress(now, device, &mut self.set);
    }

    /// When the socket next needs polling.
    pub fn poll_at(&self, iface: &mut Interface, now: Instant) -> Option<Instant> {
        iface.poll_at(now, &self.set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A heap pool of `clients` client sockets' worth, with these sizes.
    fn heap_pool(client: u32, client_send: u32, server: u32, clients: u32) -> SocketPool {
        let sizes = Sizes {
            client,
            client_send,
            server,
            idle: 0,
        };
        SocketPool::heap(sizes, clients)
    }

    #[test]
    fn sockets_take_chunks_and_give_them_back() {
        let pool = heap_pool(4096, 2048, 8192, 2);
        let mut memory = pool.core(0).unwrap();
        let socket = memory.socket(Role::Client, |_| {}).unwrap();
        assert_eq!(socket.socket().recv_capacity(), 4096);
        assert_eq!(socket.socket().send_capacity(), 2048);
        let server = memory.socket(Role::Server, |_| {}).unwrap();
        assert_eq!(server.socket().recv_capacity(), 8192);
        assert_eq!(server.socket().send_capacity(), 8192);
        // Classes by size: 2 KiB (client send), 4 KiB (client receive),
        // 8 KiB (server).
        let in_use: Vec<u64> = pool.pool.stats().classes.iter().map(|c| c.in_use).collect();
        assert_eq!(in_use, [1, 1, 2]);
        memory.release(socket);
        memory.release(server);
        let stats = pool.pool.stats();
        assert!(stats.classes.iter().all(|c| c.in_use == 0));
    }

    #[test]
    fn a_pool_left_without_idle_buffers_is_taken_with_full_buffers() {
        let old = Sizes {
            client: 4096,
            client_send: 2048,
            server: 8192,
            idle: 0,
        };
        let region = Region::heap(1 << 20);
        drop(SocketPool::in_region(&region, old, 4).unwrap());
        // A successor with idle buffers takes the pool, without them.
        let new = Sizes { idle: 1024, ..old };
        let pool = SocketPool::in_region(&region, new, 4).unwrap();
        let mut memory = pool.core(0).unwrap();
        assert_eq!(memory.idle_size(), 0);
        let socket = memory.socket(Role::Idle, |_| {}).unwrap();
        assert_eq!(socket.socket().recv_capacity(), 4096);
        memory.release(socket);
        // Other sizes still are refused.
        let other = Sizes {
            client: 8192,
            ..new
        };
        assert!(SocketPool::in_region(&region, other, 4).is_err());
    }

    #[test]
    fn the_pool_grows_when_sockets_outnumber_its_chunks() {
        let pool = heap_pool(1024, 1024, 2048, 1);
        let mut memory = pool.core(0).unwrap();
        let sockets: Vec<PooledSocket> = (0..40)
            .map(|_| memory.socket(Role::Client, |_| {}).unwrap())
            .collect();
        // One class holds both client buffers (the same size).
        assert_eq!(pool.pool.stats().classes.len(), 2);
        assert!(pool.pool.stats().classes[0].total >= 80);
        for socket in sockets {
            memory.release(socket);
        }
    }
}
