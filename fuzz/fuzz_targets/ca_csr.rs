//! The CA's signing of a workload's certificate signing request: the CSR (DER, sent as PEM) is
//! the caller's; the identity is the one its token proved. A CSR that claims anything but
//! exactly that identity is refused, and nothing panics.
#![no_main]

use std::{
    sync::{Arc, LazyLock},
    time::{Duration, SystemTime},
};

use libfuzzer_sys::fuzz_target;
use weft_control::ca::{
    Authority, SystemClock,
    state::{Lifetimes, State},
};

const IDENTITY: &str = "spiffe://cluster.local/ns/shop/sa/cart";

static CA: LazyLock<Authority> = LazyLock::new(|| {
    let lifetimes = Lifetimes::with_max_leaf(Duration::from_secs(24 * 3600));
    let state = State::generate(SystemTime::now(), &lifetimes).expect("a CA state");
    Authority::in_memory(state, lifetimes, Arc::new(SystemClock)).expect("a CA")
});

fuzz_target!(|data: &[u8]| {
    let pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", data.to_vec()));
    if let Ok(chain) = CA.sign(&pem, IDENTITY, Duration::from_secs(3600)) {
        assert_eq!(chain.len(), 3, "leaf, intermediate and bundle");
    }
});
