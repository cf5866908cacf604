//! Binds the system DPDK found by pkg-config: bindgen over an allow-list of
//! what ferrox uses, and a C shim compiled with exactly DPDK's cflags for the
//! functions DPDK only offers as `static inline`.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=shim/shim.h");
    println!("cargo:rerun-if-changed=shim/shim.c");
    let dpdk = match pkg_config::Config::new()
        .atleast_version("22.11")
        .probe("libdpdk")
    {
        Ok(lib) => lib,
        Err(e) => panic!(
            "\n\nlibdpdk (22.11 or newer) was not found by pkg-config: {e}\n\
             On Debian: apt-get install libdpdk-dev pkg-config\n\
             (or run ./ferrox.sh test, which installs it)\n\n"
        ),
    };
    let cflags = pkg_config_cflags();
    // Where this DPDK loads its driver plugins from (`RTE_EAL_PMD_PATH`,
    // empty for a build without one): a path that changes with DPDK's ABI.
    println!(
        "cargo:rustc-env=FERROX_DPDK_PMD_PATH={}",
        eal_pmd_path(&cflags).unwrap_or_default()
    );

    let mut shim = cc::Build::new();
    shim.file("shim/shim.c")
        .include("shim")
        .opt_level(3)
        .warnings(true);
    for flag in &cflags {
        shim.flag(flag);
    }
    shim.compile("ferrox_dpdk_shim");

    let bindings = bindgen::Builder::default()
        .header("shim/shim.h")
        .clang_args(&cflags)
        .allowlist_function("rte_eal_init|rte_eal_cleanup|rte_eal_process_type")
        .allowlist_function("rte_lcore_count|rte_get_main_lcore|rte_get_next_lcore|rte_eal_remote_launch|rte_eal_wait_lcore|rte_eal_mp_wait_lcore")
        .allowlist_function("rte_socket_id|rte_strerror|rte_exit")
        .allowlist_function("rte_pktmbuf_pool_create|rte_mempool_free|rte_mempool_avail_count|rte_mempool_in_use_count|rte_mempool_lookup")
        .allowlist_function("rte_eth_dev_count_avail|rte_eth_dev_get_port_by_name|rte_eth_dev_get_name_by_port")
        .allowlist_function("rte_eth_dev_info_get|rte_eth_dev_configure|rte_eth_dev_adjust_nb_rx_tx_desc")
        .allowlist_function("rte_eth_rx_queue_setup|rte_eth_tx_queue_setup|rte_eth_dev_start|rte_eth_dev_stop|rte_eth_dev_close")
        .allowlist_function("rte_eth_promiscuous_enable|rte_eth_macaddr_get|rte_eth_link_get_nowait|rte_eth_dev_set_mtu|rte_eth_dev_get_mtu")
        .allowlist_function("rte_eth_stats_get|rte_eth_stats_reset|rte_eth_xstats_get|rte_eth_xstats_get_names|rte_eth_dev_socket_id")
        .allowlist_function("rte_eth_dev_rx_intr_enable|rte_eth_dev_rx_intr_disable|rte_eth_dev_rx_intr_ctl_q_get_fd")
        .allowlist_function("rte_dev_probe|rte_dev_remove|rte_eal_hotplug_remove|rte_eth_iterator_.*")
        .allowlist_function("ferrox_.*")
        .allowlist_type("rte_eth_conf|rte_eth_dev_info|rte_eth_link|rte_eth_stats|rte_eth_xstat|rte_eth_xstat_name|rte_ether_addr|rte_mbuf|rte_mempool|rte_eth_rxconf|rte_eth_txconf")
        .allowlist_var("RTE_ETH_.*|RTE_MBUF_.*|RTE_PKTMBUF_HEADROOM|RTE_MAX_ETHPORTS|RTE_MAX_LCORE|RTE_ETHER_.*|RTE_PROC_.*|RTE_LCORE_.*")
        .opaque_type("rte_mempool|rte_eth_dev_info_rte_eth_dev_info__bindgen_ty_.*")
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .expect("bindgen could not bind DPDK");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("bindings.rs");
    bindings.write_to_file(out).expect("writing bindings");

    // Link every DPDK library pkg-config names, and make sure the shared
    // libraries (whose constructors register the bus and mempool drivers) are
    // kept even though we reference few of their symbols.
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    for lib in &dpdk.libs {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }
    for path in &dpdk.link_paths {
        println!("cargo:rustc-link-search=native={}", path.display());
    }
}

/// DPDK's cflags exactly as pkg-config prints them (`-include rte_config.h`,
/// `-march=...` and the include paths).
fn pkg_config_cflags() -> Vec<String> {
    let out = std::process::Command::new("pkg-config")
        .args(["--cflags", "libdpdk"])
        .output()
        .expect("running pkg-config");
    assert!(out.status.success(), "pkg-config --cflags libdpdk failed");
    let text = String::from_utf8(out.stdout).expect("pkg-config output is UTF-8");
    let mut flags = Vec::new();
    let mut words = text.split_whitespace();
    while let Some(word) = words.next() {
        if word == "-include" {
            if let Some(file) = words.next() {
                flags.push("-include".to_owned());
                flags.push(file.to_owned());
            }
        } else {
            flags.push(word.to_owned());
        }
    }
    flags
}

/// `RTE_EAL_PMD_PATH` of the `rte_build_config.h` on DPDK's include path.
fn eal_pmd_path(cflags: &[String]) -> Option<String> {
    cflags
        .iter()
        .filter_map(|flag| flag.strip_prefix("-I"))
        .map(|dir| std::path::Path::new(dir).join("rte_build_config.h"))
        .find_map(|header| std::fs::read_to_string(header).ok())?
        .lines()
        .find_map(|line| {
            let value = line.strip_prefix("#define RTE_EAL_PMD_PATH")?.trim();
            Some(value.strip_prefix('"')?.strip_suffix('"')?.to_owned())
        })
}
