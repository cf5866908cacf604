//! A named shared-memory region that can grow, addressed by [`Offset`]s.
//!
//! The creating process is the region's owner: it alone grows it and, unless
//! told to persist it, removes its files when it drops the region. Any number
//! of processes attach by name; a segment added after they attached is
//! mapped the first time they touch an offset inside it.
//!
//! Backing, in order of preference ([`Backing::Auto`]): files on a hugetlbfs
//! mount (2 MiB pages, reserved at map time so a later touch cannot fault),
//! or files in `/dev/shm` with a logged warning when no hugepages are free.
//! [`Region::heap`] gives the same API over heap memory for Miri and loom.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

#[allow(unsafe_code)] // declares RegionHeader `Shared`
mod header;
#[allow(unsafe_code)]
mod mapping;

pub use header::{DIRECTORY_ENTRIES, LAYOUT_VERSION, MAX_ENTRY_NAME, MAX_SEGMENTS};
pub use mapping::Shared;

use crate::{Offset, SegmentId};
use header::{RegionHeader, HEADER_SIZE, MAGIC, SEGMENT_HUGEPAGES};
use mapping::{Mapping, SegmentMemory, SEGMENT_ALIGN};

/// Size of a hugepage on the mounts ferrox uses.
pub const HUGEPAGE_SIZE: u64 = 2 << 20;
const DEFAULT_SHM_DIR: &str = "/dev/shm";
const HUGEPAGES_SYSFS: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";

/// Where a region's memory comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backing {
    /// Hugepages when a hugetlbfs mount has enough free pages, otherwise
    /// ordinary shared memory (with a warning).
    #[default]
    Auto,
    /// Hugepages or an error.
    Hugepages,
    /// Ordinary shared memory (`/dev/shm`).
    Shm,
    /// Process-private heap memory: the same API for Miri, loom and unit
    /// tests; cannot be attached by another process.
    Heap,
}

/// How to create a region (and where to look for one when attaching).
#[derive(Debug, Clone, Default)]
pub struct RegionOptions {
    /// Size of the first segment in bytes (rounded up to the page size).
    pub size: u64,
    pub backing: Backing,
    /// hugetlbfs mount to use; default: the first 2 MiB mount in /proc/mounts.
    pub huge_dir: Option<PathBuf>,
    /// Directory for non-hugepage segments; default `/dev/shm`.
    pub shm_dir: Option<PathBuf>,
    /// Keep the files when the owner drops the region (a later process, for
    /// example a restarted control process, attaches to it).
    pub persist: bool,
}

/// What went wrong with a region, and whose fault it was.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("region name {name:?} is invalid: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("region {name:?} already exists ({path})")]
    AlreadyExists { name: String, path: String },
    #[error("no region named {name:?} (looked in {looked_in})")]
    NotFound { name: String, looked_in: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("region {name:?} belongs to process {pid}, which is alive")]
    OwnerAlive { name: String, pid: u32 },
    #[error("region {name:?} is not initialised yet (creator still starting, or it crashed)")]
    NotInitialised { name: String },
    #[error("region {name:?} is not a ferrox region (magic {found:#018x})")]
    BadMagic { name: String, found: u64 },
    #[error("region {name:?} has layout version {found}, this binary speaks {expected}")]
    LayoutVersion {
        name: String,
        found: u32,
        expected: u32,
    },
    #[error("region {name:?} header is corrupt: {reason}")]
    Corrupt { name: String, reason: String },
    #[error("no hugepages for {bytes} bytes: {reason}")]
    HugepagesUnavailable { bytes: u64, reason: String },
    #[error("region is full: no segment has {requested} free bytes; grow it")]
    OutOfSpace { requested: u64 },
    #[error("region already has the maximum of {MAX_SEGMENTS} segments")]
    TooManySegments,
    #[error("offset {offset} (+{len} bytes) is outside the region")]
    BadOffset { offset: Offset, len: u64 },
    #[error("offset {offset} is not aligned for a {type_name}")]
    Misaligned {
        offset: Offset,
        type_name: &'static str,
    },
    #[error("only the owner process may grow the region")]
    NotOwner,
    #[error("a heap-backed region cannot be attached from another process")]
    HeapNotShared,
    #[error("directory entry name {0:?} is empty or longer than {MAX_ENTRY_NAME} bytes")]
    BadEntryName(String),
    #[error("the region directory already names {0:?}")]
    DuplicateEntry(String),
    #[error("the region directory is full ({DIRECTORY_ENTRIES} entries)")]
    DirectoryFull,
    #[error("the region directory has no {0:?}")]
    NoSuchEntry(String),
    #[error(
        "directory entry {name:?} is a {found_kind}/v{found_version}, expected {kind}/v{version}"
    )]
    EntryMismatch {
        name: String,
        kind: u32,
        version: u32,
        found_kind: u32,
        found_version: u32,
    },
}

type Result<T, E = RegionError> = std::result::Result<T, E>;

/// A directory entry: a named object inside the region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub offset: Offset,
    /// What the object is (each object type picks a constant).
    pub kind: u32,
    /// The object's own layout version.
    pub version: u32,
}

/// One segment, as [`Region::stats`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentStats {
    pub id: SegmentId,
    pub size: u64,
    pub used: u64,
    pub hugepages: bool,
}

/// A snapshot of a region's segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionStats {
    pub name: String,
    pub generation: u64,
    pub segments: Vec<SegmentStats>,
}

impl RegionStats {
    pub fn size(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    pub fn used(&self) -> u64 {
        self.segments.iter().map(|s| s.used).sum()
    }
}

/// A region mapped into this process. Share it between threads with `Arc`.
#[derive(Debug)]
pub struct Region {
    name: String,
    owner: bool,
    persist: bool,
    heap: bool,
    auto_hugepages: bool,
    huge_dir: Option<PathBuf>,
    shm_dir: PathBuf,
    mapping: Mapping,
}

impl Region {
    /// Creates region `name` and becomes its owner.
    pub fn create(name: &str, options: &RegionOptions) -> Result<Arc<Region>> {
        validate_name(name)?;
        // Not the owner until segment 0 exists: a failed create must not
        // remove the files of a region that was already there.
        let mut region = Region::new_local(name, options, false);
        let size = options.size.max(HEADER_SIZE + 4096);
        let (memory, flags) = region.create_segment(0, size, options.backing)?;
        region.owner = true;
        region.mapping.install(0, || Ok::<_, RegionError>(memory))?;
        let huge_dir = region.huge_dir.as_deref().map(path_str).unwrap_or_default();
        let shm_dir = path_str(&region.shm_dir);
        let (_, seg_len) = region
            .mapping
            .segment(0)
            .expect("segment 0 was just installed");
        region
            .header()
            .initialise(name, &huge_dir, &shm_dir, (seg_len, flags));
        region.auto_hugepages = options.backing == Backing::Auto;
        Ok(Arc::new(region))
    }

    /// A heap-backed region of `size` bytes: same API, no files, one process.
    pub fn heap(size: u64) -> Arc<Region> {
        let options = RegionOptions {
            size,
            backing: Backing::Heap,
            ..RegionOptions::default()
        };
        Region::create("heap", &options).expect("heap regions cannot fail to be created")
    }

    /// Attaches to region `name` created by another process (or this one).
    ///
    /// `options` says where to look (`huge_dir`, `shm_dir`); its size and
    /// backing are ignored.
    pub fn attach(name: &str, options: &RegionOptions) -> Result<Arc<Region>> {
        validate_name(name)?;
        if options.backing == Backing::Heap {
            return Err(RegionError::HeapNotShared);
        }
        let region = Region::new_local(name, options, false);
        let mut looked_in = Vec::new();
        let candidates = region
            .huge_dir
            .iter()
            .chain(std::iter::once(&region.shm_dir));
        let mut found = None;
        for dir in candidates {
            let path = segment_path(dir, name, 0);
            looked_in.push(path_str(dir));
            match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(file) => {
                    found = Some((file, path));
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(io_error("open", &path)(source)),
            }
        }
        let Some((file, path)) = found else {
            return Err(RegionError::NotFound {
                name: name.into(),
                looked_in: looked_in.join(", "),
            });
        };
        let len = file_len(&file, &path)?;
        if len < HEADER_SIZE {
            return Err(RegionError::Corrupt {
                name: name.into(),
                reason: format!(
                    "segment 0 has {len} bytes, less than its {HEADER_SIZE}-byte header"
                ),
            });
        }
        region.mapping.install(0, || {
            SegmentMemory::map_file(&file, len).map_err(io_error("map", &path))
        })?;
        region.check_header(len)?;
        Ok(Arc::new(region))
    }

    /// Removes the files of region `name` left behind by a process that
    /// died or persisted it. Attached processes keep their mappings.
    pub fn remove(name: &str, options: &RegionOptions) -> Result<usize> {
        validate_name(name)?;
        let local = Region::new_local(name, options, false);
        let mut removed = 0;
        for dir in local.huge_dir.iter().chain(std::iter::once(&local.shm_dir)) {
            for seg in 0..MAX_SEGMENTS as SegmentId {
                if std::fs::remove_file(segment_path(dir, name, seg)).is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Removes the files of region `name` if the process recorded as its
    /// owner is gone (it died without removing them); returns that
    /// process's id, or `None` when there is no such region. A region
    /// whose owner lives is refused ([`RegionError::OwnerAlive`]), and so
    /// is one whose header cannot be read (the error says why; `ferrox-shm
    /// remove` takes it away by hand).
    ///
    /// The owner counts as alive only while it still maps segment 0, so a
    /// recorded pid that now names another process (pid reuse, a container
    /// restarted with the same pids, this very process) does not keep a
    /// dead region forever. Where that process's mappings cannot be read
    /// (another user's), it counts as alive.
    pub fn remove_if_orphaned(name: &str, options: &RegionOptions) -> Result<Option<u32>> {
        validate_name(name)?;
        let local = Region::new_local(name, options, false);
        // Where `attach` finds it.
        let seg0 = local
            .huge_dir
            .iter()
            .chain(std::iter::once(&local.shm_dir))
            .map(|dir| segment_path(dir, name, 0))
            .find(|path| path.exists());
        let Some(seg0) = seg0 else {
            // Segment 0 is created first and removed last: without it,
            // whatever is left has no owner.
            Region::remove(name, options)?;
            return Ok(None);
        };
        // Mapped only for this statement: unmapped before this process's
        // own mappings are read.
        let owner = Region::attach(name, options)?
            .header()
            .owner_pid
            .load(Ordering::Acquire);
        if maps_file(owner, &seg0) {
            return Err(RegionError::OwnerAlive {
                name: name.into(),
                pid: owner,
            });
        }
        Region::remove(name, options)?;
        Ok(Some(owner))
    }

    fn new_local(name: &str, options: &RegionOptions, owner: bool) -> Region {
        let heap = options.backing == Backing::Heap;
        Region {
            name: name.to_owned(),
            owner,
            persist: options.persist,
            heap,
            auto_hugepages: false,
            huge_dir: if heap {
                None
            } else {
                options.huge_dir.clone().or_else(find_hugetlbfs)
            },
            shm_dir: options
                .shm_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SHM_DIR)),
            mapping: Mapping::new(),
        }
    }

    fn check_header(&self, seg0_len: u64) -> Result<()> {
        let header = self.header();
        let magic = header.magic.load(Ordering::Acquire);
        if magic == 0 {
            return Err(RegionError::NotInitialised {
                name: self.name.clone(),
            });
        }
        if magic != MAGIC {
            return Err(RegionError::BadMagic {
                name: self.name.clone(),
                found: magic,
            });
        }
        let version = header.layout_version.load(Ordering::Relaxed);
        if version != LAYOUT_VERSION {
            return Err(RegionError::LayoutVersion {
                name: self.name.clone(),
                found: version,
                expected: LAYOUT_VERSION,
            });
        }
        let corrupt = |reason: String| RegionError::Corrupt {
            name: self.name.clone(),
            reason,
        };
        let header_size = header.header_size.load(Ordering::Relaxed) as u64;
        if header_size != HEADER_SIZE {
            return Err(corrupt(format!(
                "header size {header_size}, expected {HEADER_SIZE}"
            )));
        }
        let count = header.segment_count.load(Ordering::Acquire) as usize;
        if count == 0 || count > MAX_SEGMENTS {
            return Err(corrupt(format!("segment count {count}")));
        }
        let size0 = header.segments[0].size.load(Ordering::Relaxed);
        if size0 != seg0_len {
            return Err(corrupt(format!(
                "segment 0 is {seg0_len} bytes, header says {size0}"
            )));
        }
        for (id, seg) in header.segments[..count].iter().enumerate() {
            let (size, used) = (
                seg.size.load(Ordering::Relaxed),
                seg.used.load(Ordering::Relaxed),
            );
            if used > size {
                return Err(corrupt(format!("segment {id} uses {used} of {size} bytes")));
            }
        }
        Ok(())
    }

    pub(crate) fn header(&self) -> &RegionHeader {
        self.view(Offset::new(0, 0))
            .expect("segment 0 holds the header")
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_owner(&self) -> bool {
        self.owner
    }

    /// Adds a segment of at least `size` bytes and returns its id. Offsets
    /// handed out before stay valid; attached processes map the new segment
    /// when they first touch it.
    pub fn grow(&self, size: u64) -> Result<SegmentId> {
        if !self.owner {
            return Err(RegionError::NotOwner);
        }
        let header = self.header();
        let _guard = header.lock.lock();
        let id = header.segment_count.load(Ordering::Relaxed) as usize;
        if id >= MAX_SEGMENTS {
            return Err(RegionError::TooManySegments);
        }
        let backing = match (self.heap, self.auto_hugepages) {
            (true, _) => Backing::Heap,
            (false, true) => Backing::Auto,
            // An explicit backing holds for every segment.
            (false, false) if header.segments[0].flags.load(Ordering::Relaxed) != 0 => {
                Backing::Hugepages
            }
            (false, false) => Backing::Shm,
        };
        let (memory, flags) = self.create_segment(id as SegmentId, size, backing)?;
        self.mapping.install(id, || Ok::<_, RegionError>(memory))?;
        let (_, len) = self
            .mapping
            .segment(id)
            .expect("segment was just installed");
        let desc = &header.segments[id];
        desc.used.store(0, Ordering::Relaxed);
        desc.flags.store(flags, Ordering::Relaxed);
        desc.size.store(len, Ordering::Relaxed);
        header.segment_count.store(id as u32 + 1, Ordering::Release);
        header.generation.fetch_add(1, Ordering::Release);
        tracing::info!(region = %self.name, segment = id, bytes = len, hugepages = flags != 0, "region grew");
        Ok(id as SegmentId)
    }

    /// Creates and maps the memory of segment `id`.
    fn create_segment(
        &self,
        id: SegmentId,
        size: u64,
        backing: Backing,
    ) -> Result<(SegmentMemory, u64)> {
        match backing {
            Backing::Heap => Ok((SegmentMemory::heap(round_up(size, SEGMENT_ALIGN as u64)), 0)),
            Backing::Shm => Ok((self.create_file_segment(&self.shm_dir, id, size, 4096)?, 0)),
            Backing::Hugepages => {
                let dir =
                    self.huge_dir
                        .as_deref()
                        .ok_or_else(|| RegionError::HugepagesUnavailable {
                            bytes: size,
                            reason: "no hugetlbfs mount (mount -t hugetlbfs nodev /dev/hugepages)"
                                .into(),
                        })?;
                let memory = self.create_file_segment(dir, id, size, HUGEPAGE_SIZE)?;
                Ok((memory, SEGMENT_HUGEPAGES))
            }
            Backing::Auto => match self.create_segment(id, size, Backing::Hugepages) {
                Ok(done) => Ok(done),
                Err(RegionError::HugepagesUnavailable { reason, .. }) => {
                    tracing::warn!(
                        region = %self.name, segment = id, bytes = size, %reason,
                        "no hugepages; falling back to ordinary shared memory in {}",
                        self.shm_dir.display()
                    );
                    self.create_segment(id, size, Backing::Shm)
                }
                Err(other) => Err(other),
            },
        }
    }

    fn create_file_segment(
        &self,
        dir: &Path,
        id: SegmentId,
        size: u64,
        page: u64,
    ) -> Result<SegmentMemory> {
        let len = round_up(size, page);
        let hugepages = page == HUGEPAGE_SIZE;
        if hugepages {
            let free = free_hugepages();
            if free * HUGEPAGE_SIZE < len {
                return Err(RegionError::HugepagesUnavailable {
                    bytes: len,
                    reason: format!(
                        "{free} free 2 MiB hugepages, {} needed",
                        len / HUGEPAGE_SIZE
                    ),
                });
            }
        }
        let path = segment_path(dir, &self.name, id);
        let io = |what, source| io_error(what, &path)(source);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => RegionError::AlreadyExists {
                    name: self.name.clone(),
                    path: path_str(&path),
                },
                _ => io("create", e),
            })?;
        let mapped = file
            .set_len(len)
            .map_err(|e| io("size", e))
            .and_then(|()| SegmentMemory::map_file(&file, len).map_err(|e| io("map", e)));
        match mapped {
            Ok(memory) => Ok(memory),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                match e {
                    // hugetlbfs reserves pages at map time; ENOMEM means the
                    // pool ran dry between our check and the map.
                    RegionError::Io { source, .. } if hugepages => {
                        Err(RegionError::HugepagesUnavailable {
                            bytes: len,
                            reason: source.to_string(),
                        })
                    }
                    other => Err(other),
                }
            }
        }
    }

    /// Maps segment `seg` of an attached region on first use.
    #[cold]
    fn map_missing(&self, seg: usize) -> Result<(*mut u8, u64)> {
        if self.heap || seg >= MAX_SEGMENTS {
            return Err(RegionError::BadOffset {
                offset: Offset::new(seg as SegmentId, 0),
                len: 0,
            });
        }
        let header = self.header();
        if seg >= header.segment_count.load(Ordering::Acquire) as usize {
            return Err(RegionError::BadOffset {
                offset: Offset::new(seg as SegmentId, 0),
                len: 0,
            });
        }
        let desc = &header.segments[seg];
        let size = desc.size.load(Ordering::Relaxed);
        let dir = if desc.flags.load(Ordering::Relaxed) & SEGMENT_HUGEPAGES != 0 {
            PathBuf::from(header.huge_dir())
        } else {
            PathBuf::from(header.shm_dir())
        };
        let path = segment_path(&dir, &self.name, seg as SegmentId);
        self.mapping.install(seg, || {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_error("open", &path))?;
            let len = file_len(&file, &path)?;
            if len != size {
                return Err(RegionError::Corrupt {
                    name: self.name.clone(),
                    reason: format!("segment {seg} file is {len} bytes, header says {size}"),
                });
            }
            SegmentMemory::map_file(&file, len).map_err(io_error("map", &path))
        })?;
        Ok(self
            .mapping
            .segment(seg)
            .expect("segment was just installed"))
    }

    /// Address of `len` bytes at `offset` in this process.
    #[inline]
    pub(crate) fn ptr(&self, offset: Offset, len: u64) -> Result<*mut u8> {
        let seg = offset.segment() as usize;
        let (base, seg_len) = match self.mapping.segment(seg) {
            Some(found) => found,
            None => self.map_missing(seg)?,
        };
        let end = offset.byte().checked_add(len);
        if offset.is_null() || end.is_none_or(|end| end > seg_len) {
            return Err(RegionError::BadOffset { offset, len });
        }
        Ok(base.wrapping_add(offset.byte() as usize))
    }

    /// Carves `size` bytes aligned to `align` out of the region (zeroed).
    ///
    /// Region-level allocations are for long-lived objects (pool arenas,
    /// rings, tables) and are never freed one by one; the newest segment is
    /// tried first so that growing makes room at once.
    pub fn alloc(&self, size: u64, align: u64) -> Result<Offset> {
        assert!(align.is_power_of_two() && align <= SEGMENT_ALIGN as u64);
        let header = self.header();
        let _guard = header.lock.lock();
        let count = header.segment_count.load(Ordering::Acquire) as usize;
        for id in (0..count).rev() {
            let desc = &header.segments[id];
            let used = desc.used.load(Ordering::Relaxed);
            let start = round_up(used, align);
            if start
                .checked_add(size)
                .is_some_and(|end| end <= desc.size.load(Ordering::Relaxed))
            {
                desc.used.store(start + size, Ordering::Relaxed);
                return Ok(Offset::new(id as SegmentId, start));
            }
        }
        Err(RegionError::OutOfSpace { requested: size })
    }

    /// Names the object at `offset` in the region's directory so that other
    /// processes can find it with [`Region::lookup`].
    pub fn publish(&self, name: &str, kind: u32, version: u32, offset: Offset) -> Result<()> {
        if name.is_empty() || name.len() > MAX_ENTRY_NAME {
            return Err(RegionError::BadEntryName(name.into()));
        }
        let header = self.header();
        let _guard = header.lock.lock();
        if self.entries().any(|e| e.name == name) {
            return Err(RegionError::DuplicateEntry(name.into()));
        }
        let slot = header
            .directory
            .iter()
            .find(|e| e.offset.load(Ordering::Acquire) == u64::MAX)
            .ok_or(RegionError::DirectoryFull)?;
        slot.set_name(name);
        slot.kind_version
            .store(((kind as u64) << 32) | version as u64, Ordering::Relaxed);
        slot.offset.store(offset.to_raw(), Ordering::Release);
        Ok(())
    }

    /// Finds object `name`, checking that it is of `kind` and `version`.
    pub fn lookup(&self, name: &str, kind: u32, version: u32) -> Result<Offset> {
        let entry = self
            .entries()
            .find(|e| e.name == name)
            .ok_or_else(|| RegionError::NoSuchEntry(name.into()))?;
        if entry.kind != kind || entry.version != version {
            return Err(RegionError::EntryMismatch {
                name: name.into(),
                kind,
                version,
                found_kind: entry.kind,
                found_version: entry.version,
            });
        }
        Ok(entry.offset)
    }

    /// Every named object in the region.
    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        self.header().directory.iter().filter_map(|e| {
            let raw = e.offset.load(Ordering::Acquire);
            if raw == u64::MAX {
                return None;
            }
            let kv = e.kind_version.load(Ordering::Relaxed);
            Some(Entry {
                name: e.name(),
                offset: Offset::from_raw(raw),
                kind: (kv >> 32) as u32,
                version: kv as u32,
            })
        })
    }

    /// Segments, sizes and use, as every process sees them.
    pub fn stats(&self) -> RegionStats {
        let header = self.header();
        let count = header.segment_count.load(Ordering::Acquire) as usize;
        RegionStats {
            name: header.name(),
            generation: header.generation.load(Ordering::Acquire),
            segments: header.segments[..count]
                .iter()
                .enumerate()
                .map(|(id, d)| SegmentStats {
                    id: id as SegmentId,
                    size: d.size.load(Ordering::Relaxed),
                    used: d.used.load(Ordering::Relaxed),
                    hugepages: d.flags.load(Ordering::Relaxed) & SEGMENT_HUGEPAGES != 0,
                })
                .collect(),
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if self.owner && !self.persist && !self.heap {
            let options = RegionOptions {
                huge_dir: self.huge_dir.clone(),
                shm_dir: Some(self.shm_dir.clone()),
                ..RegionOptions::default()
            };
            let _ = Region::remove(&self.name, &options);
        }
    }
}

fn validate_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(RegionError::InvalidName {
            name: name.into(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 48 {
        return bad("must be 1 to 48 bytes");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return bad("only letters, digits, '-' and '_' are allowed");
    }
    Ok(())
}

fn segment_path(dir: &Path, name: &str, seg: SegmentId) -> PathBuf {
    dir.join(format!("ferrox-{name}.{seg}"))
}

fn path_str(path: &Path) -> String {
    path.display().to_string()
}

/// Makes an I/O error of `what` (open, map, ...) on `path`.
fn io_error<'p>(
    what: &'static str,
    path: &'p Path,
) -> impl FnOnce(std::io::Error) -> RegionError + 'p {
    move |source| RegionError::Io {
        what,
        path: path_str(path),
        source,
    }
}

fn file_len(file: &File, path: &Path) -> Result<u64> {
    file.metadata()
        .map(|m| m.len())
        .map_err(io_error("stat", path))
}

/// Whether process `pid` maps the file at `path` (the same inode), as its
/// `/proc/<pid>/maps` says; `true` when it exists but its mappings cannot
/// be read.
fn maps_file(pid: u32, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if pid == 0 || !crate::sync::process_alive(pid) {
        return false;
    }
    let Ok(inode) = std::fs::metadata(path).map(|m| m.ino()) else {
        return true;
    };
    let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
        return true;
    };
    match std::fs::read_to_string(format!("/proc/{pid}/maps")) {
        // address perms offset dev inode path
        Ok(maps) => maps.lines().any(|line| {
            let mut fields = line.split_whitespace();
            let ino = fields.nth(4).and_then(|i| i.parse::<u64>().ok());
            let mapped = fields.next().unwrap_or_default();
            ino == Some(inode) && mapped.ends_with(&format!("/{file_name}"))
        }),
        // Gone meanwhile, or not ours to read.
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

fn round_up(value: u64, to: u64) -> u64 {
    value.div_ceil(to) * to
}

/// The first hugetlbfs mount with 2 MiB pages, from /proc/mounts.
fn find_hugetlbfs() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, fstype, opts) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        let two_mib = !opts.contains("pagesize=") || opts.contains("pagesize=2M");
        (fstype == "hugetlbfs" && two_mib).then(|| PathBuf::from(dir))
    })
}

/// 2 MiB hugepages free and not reserved by someone else's mapping.
fn free_hugepages() -> u64 {
    let read = |file: &str| {
        std::fs::read_to_string(format!("{HUGEPAGES_SYSFS}/{file}"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    read("free_hugepages").saturating_sub(read("resv_hugepages"))
}

#[cfg(test)]
#[allow(unsafe_code)] // tests read and write raw region bytes
mod tests;
