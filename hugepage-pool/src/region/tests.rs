use super::*;
use std::sync::atomic::{AtomicU32 as Counter, Ordering as O};

/// A region name no other test (or test process) uses.
pub(crate) fn unique(tag: &str) -> String {
    static NEXT: Counter = Counter::new(0);
    format!(
        "t{}-{tag}-{}",
        std::process::id(),
        NEXT.fetch_add(1, O::Relaxed)
    )
}

fn shm(size: u64) -> RegionOptions {
    RegionOptions {
        size,
        backing: Backing::Shm,
        ..RegionOptions::default()
    }
}

#[test]
fn heap_region_allocates_aligned_zeroed_space_and_grows() {
    let region = Region::heap(64 << 10);
    let a = region.alloc(100, 64).unwrap();
    let b = region.alloc(8, 8).unwrap();
    assert_eq!(a.byte() % 64, 0);
    assert!(b.byte() >= a.byte() + 100);
    // SAFETY: freshly allocated, nobody else knows these offsets.
    assert!(unsafe { region.bytes(a, 100) }
        .unwrap()
        .iter()
        .all(|&x| x == 0));
    assert!(matches!(
        region.alloc(1 << 20, 8),
        Err(RegionError::OutOfSpace { .. })
    ));
    let seg = region.grow(2 << 20).unwrap();
    assert_eq!(seg, 1);
    let c = region.alloc(1 << 20, 8).unwrap();
    assert_eq!(c.segment(), 1, "the newest segment is used first");
    let stats = region.stats();
    assert_eq!(stats.segments.len(), 2);
    assert_eq!(stats.generation, 1);
}

#[test]
fn offsets_outside_the_region_are_refused() {
    let region = Region::heap(16 << 10);
    let end = region.stats().segments[0].size;
    assert!(matches!(
        region.ptr(Offset::new(0, end - 4), 8),
        Err(RegionError::BadOffset { .. })
    ));
    assert!(matches!(
        region.ptr(Offset::new(5, 0), 1),
        Err(RegionError::BadOffset { .. })
    ));
    assert!(matches!(
        region.ptr(Offset::NULL, 1),
        Err(RegionError::BadOffset { .. })
    ));
    assert!(matches!(
        region.ptr(Offset::new(0, u64::MAX >> 16), 2),
        Err(RegionError::BadOffset { .. })
    ));
}

#[test]
fn directory_publishes_and_checks_kind_and_version() {
    let region = Region::heap(16 << 10);
    let at = region.alloc(64, 64).unwrap();
    region.publish("thing", 7, 1, at).unwrap();
    assert_eq!(region.lookup("thing", 7, 1).unwrap(), at);
    assert!(matches!(
        region.lookup("thing", 7, 2),
        Err(RegionError::EntryMismatch {
            found_version: 1,
            ..
        })
    ));
    assert!(matches!(
        region.lookup("other", 7, 1),
        Err(RegionError::NoSuchEntry(_))
    ));
    assert!(matches!(
        region.publish("thing", 7, 1, at),
        Err(RegionError::DuplicateEntry(_))
    ));
    assert!(matches!(
        region.publish(&"x".repeat(33), 7, 1, at),
        Err(RegionError::BadEntryName(_))
    ));
    for i in 1..DIRECTORY_ENTRIES {
        region.publish(&format!("e{i}"), 1, 1, at).unwrap();
    }
    assert!(matches!(
        region.publish("full", 1, 1, at),
        Err(RegionError::DirectoryFull)
    ));
    assert_eq!(region.entries().count(), DIRECTORY_ENTRIES);
}

#[test]
fn invalid_names_are_refused() {
    for bad in ["", "a/b", "../x", "has space", &"n".repeat(49)] {
        assert!(
            matches!(
                Region::create(bad, &shm(1 << 20)),
                Err(RegionError::InvalidName { .. })
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn attach_sees_objects_and_segments_added_after_it_attached() {
    let name = unique("attach");
    let owner = Region::create(&name, &shm(1 << 20)).unwrap();
    let at = owner.alloc(8, 8).unwrap();
    owner.publish("word", 1, 1, at).unwrap();
    let peer = Region::attach(&name, &shm(0)).unwrap();
    assert!(!peer.is_owner());
    assert_eq!(peer.lookup("word", 1, 1).unwrap(), at);
    assert!(matches!(peer.grow(1 << 20), Err(RegionError::NotOwner)));

    owner.grow(4 << 20).unwrap();
    let late = owner.alloc(64, 64).unwrap();
    assert_eq!(late.segment(), 1);
    // SAFETY: only this test touches the object, one handle at a time.
    unsafe { owner.bytes_mut(late, 4) }
        .unwrap()
        .copy_from_slice(b"grow");
    // SAFETY: as above.
    let seen = unsafe { peer.bytes(late, 4) }.unwrap();
    assert_eq!(seen, b"grow", "peer maps segment 1 on demand");
    assert_eq!(peer.stats().segments.len(), 2);
    assert!(std::path::Path::new(&format!("/dev/shm/ferrox-{name}.1")).exists());
    drop(peer);
    drop(owner);
    assert!(
        !std::path::Path::new(&format!("/dev/shm/ferrox-{name}.0")).exists(),
        "owner removes its files"
    );
}

#[test]
fn creating_an_existing_region_fails_and_leaves_it_intact() {
    let name = unique("dup");
    let owner = Region::create(&name, &shm(1 << 20)).unwrap();
    assert!(matches!(
        Region::create(&name, &shm(1 << 20)),
        Err(RegionError::AlreadyExists { .. })
    ));
    assert!(Region::attach(&name, &shm(0)).is_ok());
    drop(owner);
}

#[test]
fn attaching_a_missing_region_says_where_it_looked() {
    let err = Region::attach(&unique("missing"), &shm(0)).unwrap_err();
    assert!(matches!(err, RegionError::NotFound { .. }));
    assert!(err.to_string().contains("/dev/shm"), "{err}");
}

fn corrupt_first_word(name: &str, at: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = OpenOptions::new()
        .write(true)
        .open(format!("/dev/shm/ferrox-{name}.0"))
        .unwrap();
    file.seek(SeekFrom::Start(at)).unwrap();
    file.write_all(bytes).unwrap();
}

#[test]
fn corrupt_or_foreign_headers_are_refused_with_a_reason() {
    let name = unique("corrupt");
    let owner = Region::create(&name, &shm(1 << 20)).unwrap();
    corrupt_first_word(&name, 0, b"NOTOURS!");
    let err = Region::attach(&name, &shm(0)).unwrap_err();
    assert!(matches!(err, RegionError::BadMagic { .. }), "{err}");
    corrupt_first_word(&name, 0, &MAGIC.to_le_bytes());
    corrupt_first_word(&name, 8, &(LAYOUT_VERSION + 1).to_le_bytes());
    let err = Region::attach(&name, &shm(0)).unwrap_err();
    assert!(
        matches!(err, RegionError::LayoutVersion { found, .. } if found == LAYOUT_VERSION + 1),
        "{err}"
    );
    corrupt_first_word(&name, 8, &LAYOUT_VERSION.to_le_bytes());
    corrupt_first_word(&name, 0, &0u64.to_le_bytes());
    assert!(matches!(
        Region::attach(&name, &shm(0)),
        Err(RegionError::NotInitialised { .. })
    ));
    corrupt_first_word(&name, 0, &MAGIC.to_le_bytes());
    assert!(
        Region::attach(&name, &shm(0)).is_ok(),
        "restored header attaches again"
    );
    drop(owner);
}

#[test]
fn a_truncated_segment_file_is_refused() {
    let name = unique("short");
    std::fs::write(format!("/dev/shm/ferrox-{name}.0"), b"tiny").unwrap();
    let err = Region::attach(&name, &shm(0)).unwrap_err();
    assert!(matches!(err, RegionError::Corrupt { .. }), "{err}");
    Region::remove(&name, &shm(0)).unwrap();
}

/// With hugepages free (the test command reserves them), `Auto` uses them;
/// without, it falls back to /dev/shm. Either way the region works.
#[test]
fn auto_backing_prefers_hugepages_and_falls_back() {
    let name = unique("auto");
    let options = RegionOptions {
        size: 4 << 20,
        ..RegionOptions::default()
    };
    let expect_huge = find_hugetlbfs().is_some() && free_hugepages() >= 2;
    let region = Region::create(&name, &options).unwrap();
    assert_eq!(region.stats().segments[0].hugepages, expect_huge);
    if expect_huge {
        assert_eq!(region.stats().segments[0].size % HUGEPAGE_SIZE, 0);
        let peer = Region::attach(&name, &RegionOptions::default()).unwrap();
        assert!(peer.stats().segments[0].hugepages);
    }
    let at = region.alloc(4096, 64).unwrap();
    // SAFETY: private to this test.
    unsafe { region.bytes_mut(at, 4096) }.unwrap().fill(0xab);
}

#[test]
fn explicit_hugepages_fail_cleanly_when_too_few_are_free() {
    let options = RegionOptions {
        size: 1 << 50,
        backing: Backing::Hugepages,
        ..RegionOptions::default()
    };
    let err = Region::create(&unique("huge"), &options).unwrap_err();
    assert!(
        matches!(err, RegionError::HugepagesUnavailable { .. }),
        "{err}"
    );
}

/// A pid that names no process: a child that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Removes region files a test persisted, even when it fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Region::remove(&self.0, &shm(0));
    }
}

fn exists(name: &str, seg: u32) -> bool {
    std::path::Path::new(&format!("/dev/shm/ferrox-{name}.{seg}")).exists()
}

/// A region whose files outlive its handle, as a crashed owner's do: its
/// name, the guard that removes the files, and the region.
fn persisted(prefix: &str) -> (String, Cleanup, Arc<Region>) {
    let name = unique(prefix);
    let cleanup = Cleanup(name.clone());
    let options = RegionOptions {
        persist: true,
        ..shm(1 << 20)
    };
    let region = Region::create(&name, &options).unwrap();
    (name, cleanup, region)
}

#[test]
fn a_region_left_by_a_dead_owner_is_reclaimed() {
    let (name, _cleanup, region) = persisted("orphan");
    region.grow(1 << 20).unwrap();
    let dead = dead_pid();
    region.header().owner_pid.store(dead, O::Relaxed);
    drop(region);
    assert!(exists(&name, 0) && exists(&name, 1));
    assert!(matches!(
        Region::create(&name, &shm(1 << 20)),
        Err(RegionError::AlreadyExists { .. })
    ));

    assert_eq!(
        Region::remove_if_orphaned(&name, &shm(0)).unwrap(),
        Some(dead)
    );
    assert!(!exists(&name, 0) && !exists(&name, 1));
    assert_eq!(Region::remove_if_orphaned(&name, &shm(0)).unwrap(), None);
    drop(Region::create(&name, &shm(1 << 20)).unwrap());
}

#[test]
fn a_region_whose_owner_lives_is_not_reclaimed() {
    let name = unique("owned");
    let owner = Region::create(&name, &shm(1 << 20)).unwrap();
    let err = Region::remove_if_orphaned(&name, &shm(0)).unwrap_err();
    assert!(
        matches!(err, RegionError::OwnerAlive { pid, .. } if pid == std::process::id()),
        "{err}"
    );
    assert!(err.to_string().contains("alive"), "{err}");
    // Still whole and usable.
    assert!(Region::attach(&name, &shm(0)).is_ok());
    owner.alloc(64, 64).unwrap();
    drop(owner);
}

/// The recorded pid names a live process that does not map the region
/// (pid reuse; here this very process, after dropping it).
#[test]
fn a_recorded_pid_that_no_longer_maps_the_region_does_not_keep_it() {
    let (name, _cleanup, region) = persisted("reused");
    drop(region);
    assert!(exists(&name, 0));
    assert_eq!(
        Region::remove_if_orphaned(&name, &shm(0)).unwrap(),
        Some(std::process::id())
    );
    assert!(!exists(&name, 0));
}

#[test]
fn segments_without_segment_zero_are_removed() {
    let (name, _cleanup, region) = persisted("stray");
    region.grow(1 << 20).unwrap();
    drop(region);
    std::fs::remove_file(format!("/dev/shm/ferrox-{name}.0")).unwrap();
    assert_eq!(Region::remove_if_orphaned(&name, &shm(0)).unwrap(), None);
    assert!(!exists(&name, 1));
}
