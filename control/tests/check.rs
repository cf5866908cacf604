//! `ferrox-control --check` (`-t`, `--test-conf`): the whole configuration
//! check, offline, with nutcracker's exit codes.

use std::process::Command;

const CONTROL: &str = env!("CARGO_BIN_EXE_ferrox-control");

fn check(args: &[&str]) -> (i32, String) {
    let out = Command::new(CONTROL).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn a_good_configuration_passes_and_a_bad_one_is_refused_with_its_lines() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/ferrox.toml");
    let (code, text) = check(&["-t", "-c", example]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("is valid: 2 pool(s)"), "{text}");

    let bad = std::env::temp_dir().join(format!("ferrox-check-{}.toml", std::process::id()));
    std::fs::write(
        &bad,
        "[pools.a]\nlisten = \"0.0.0.0:6379\"\nhash = \"fnv\"\nservers = [\"198.18.0.1:7001:1\"]\n",
    )
    .unwrap();
    let (code, text) = check(&["--test-conf", "--config", bad.to_str().unwrap()]);
    std::fs::remove_file(&bad).unwrap();
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(":1: pool \"a\": protocol is missing"),
        "{text}"
    );
    assert!(
        text.contains(":3: pool \"a\": hash \"fnv\": unknown hash"),
        "{text}"
    );

    // With the dataplane's address, where the pools listen is checked too.
    let (code, text) = check(&["--check", "-c", example, "--address", "10.9.9.9/24"]);
    assert_eq!(code, 0, "0.0.0.0 is every address: {text}");
    let elsewhere =
        std::env::temp_dir().join(format!("ferrox-check-{}-b.toml", std::process::id()));
    std::fs::write(
        &elsewhere,
        "[pools.a]\nlisten = \"198.18.0.2:6379\"\nprotocol = \"redis\"\nservers = [\"198.18.0.1:7001:1\"]\n",
    )
    .unwrap();
    let path = elsewhere.to_str().unwrap().to_owned();
    let (without, _) = check(&["-t", "-c", &path]);
    let (code, text) = check(&["-t", "-c", &path, "--address", "10.9.9.9/24"]);
    std::fs::remove_file(&elsewhere).unwrap();
    assert_eq!(without, 0, "no address: the listen address is not checked");
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("but the dataplane's address is 10.9.9.9"),
        "{text}"
    );
    // An address whose prefix is not one is refused, as the dataplane
    // would refuse it.
    let (code, text) = check(&["--check", "-c", example, "--address", "10.9.9.9/99"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("is not a prefix length"), "{text}");
}
