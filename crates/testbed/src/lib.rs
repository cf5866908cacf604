//! The end-to-end tests' test bed, a dev-dependency of the two processes'
//! crates: network namespaces this test creates, a veth pair, real
//! `redis-server` backends and clients in them ([`netns`]), and a running
//! `ferrox-dataplane` on a DPDK virtual NIC there ([`dataplane`]), each
//! removed on every path (guards), failure included.
#![allow(clippy::disallowed_methods)] // test support waits for processes

pub mod dataplane;
pub mod netns;

pub use dataplane::*;
pub use netns::*;

/// A config file in the temporary directory, removed when dropped.
#[derive(Debug)]
pub struct ConfigFile(std::path::PathBuf);

impl ConfigFile {
    pub fn new(extension: &str, text: &str) -> ConfigFile {
        // One name per file: tests run in parallel, and several write the
        // same text.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "ferrox-test-{}-{n}.{extension}",
            std::process::id()
        ));
        std::fs::write(&path, text).unwrap();
        ConfigFile(path)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
