//! A short soak (the first twelve steps of `cargo xtask soak`'s cycle, about three minutes: pod
//! churn, policy pushes, a label flip, a node proxy restart, then again with a control plane
//! restart) under steady traffic: every fault's own check holds, no request fails that a fault does not
//! explain, no plaintext crosses the fabric, a pod outside the mesh never reaches the STRICT
//! server, and no log has a panic or a key. Growth is the
//! long soak's to judge: three minutes less the two-minute warm-up are too few for a slope.
use weft_tests::soak;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_loses_no_request_its_faults_do_not_explain() {
    weft_tests::require_root();
    let outcome = soak::run(soak::Length::Steps(12)).await.unwrap();
    let report = outcome.report();
    println!("{report}");
    assert!(outcome.requests > 1000, "too little traffic: {report}");
    assert!(outcome.windows.iter().any(|window| window.fault == "proxy restart on node-0"), "{report}");
    assert!(outcome.windows.iter().any(|window| window.fault == "control plane restart"), "{report}");
    assert!(outcome.fault_failures.is_empty(), "{report}");
    assert!(outcome.unexplained.is_empty(), "{report}");
    assert_eq!(outcome.canary_frames, 0, "{report}");
    assert!(outcome.outsider_tries > 100, "the outsider barely tried: {report}");
    assert_eq!(outcome.strict_breaches, 0, "{report}");
    assert!(outcome.log_findings.is_empty(), "{report}");
}
