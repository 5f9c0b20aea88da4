//! The CA's signing of a workload's certificate signing request: the CSR (DER, sent as PEM) is
//! the caller's; the identity is the one its token proved. What the CA signs names exactly that
//! identity and is no CA, whatever the CSR claimed; anything else is refused, never a panic.
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
use x509_parser::{extensions::GeneralName, prelude::FromDer, prelude::X509Certificate};

const IDENTITY: &str = "spiffe://cluster.local/ns/shop/sa/cart";

static CA: LazyLock<Authority> = LazyLock::new(|| {
    let lifetimes = Lifetimes::with_max_leaf(Duration::from_secs(24 * 3600));
    let state = State::generate(SystemTime::now(), &lifetimes).expect("a CA state");
    Authority::in_memory(state, lifetimes, Arc::new(SystemClock)).expect("a CA")
});

fuzz_target!(|data: &[u8]| {
    let pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", data.to_vec()));
    let Ok(chain) = CA.sign(&pem, IDENTITY, Duration::from_secs(3600)) else { return };
    let leaf = pem::parse(&chain[0]).expect("the leaf is PEM");
    let (_, leaf) = X509Certificate::from_der(leaf.contents()).expect("the leaf is a certificate");
    let names: Vec<String> = leaf
        .subject_alternative_name()
        .expect("one SAN extension")
        .map(|san| san.value.general_names.iter().map(|name| format!("{name:?}")).collect())
        .unwrap_or_default();
    let uri = GeneralName::URI(IDENTITY);
    assert_eq!(names, [format!("{uri:?}")], "the leaf names the caller's identity and nothing else");
    assert!(!leaf.is_ca(), "a leaf is no CA");
});
