//! The demo (`cargo xtask demo`, the README's first command) on its main path: it brings the
//! local mesh up, succeeds, and its verdict is that no plaintext crossed between nodes once the
//! namespace was enrolled. CI runs it, so what breaks the demo breaks the build.
#![allow(clippy::unwrap_used, reason = "test helpers: a failed unwrap is a failed test")]

use std::process::Command;

use weft_tests::apps;

#[test]
fn the_demo_succeeds_and_finds_no_plaintext_once_enrolled() {
    weft_tests::require_root();
    let output = Command::new(apps::binary("weft-demo").unwrap()).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("Verdict: no plaintext crossed between nodes once enrolled"), "{stdout}");
    assert!(stdout.contains("requests echoed (Service VIP)"), "{stdout}");
}

/// `cargo xtask demo --real`'s main path: real nodes, Weft from its manifests, weftctl through
/// the API server alone.
#[test]
fn the_real_node_demo_succeeds_and_finds_no_plaintext_once_enrolled() {
    weft_tests::require_root();
    let output = Command::new(apps::binary("weft-demo").unwrap()).arg("--real").output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("Verdict: no plaintext crossed between nodes once enrolled"), "{stdout}");
    assert!(stdout.contains("$ weftctl certs"), "{stdout}");
}
