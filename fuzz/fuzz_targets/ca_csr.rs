//! The CA's handling of a certificate request, whose every field is the caller's: the
//! identity it may have (a waypoint its own only; a node proxy a workload of the trust domain
//! it names), and the signing of its CSR (PEM text). What the CA signs names exactly the
//! identity decided and is no CA, and it certifies the key of the request it checked, whatever
//! the request claimed; anything else is refused, never a panic. Input: a first byte (bit 0: a
//! waypoint calls, else a node proxy; bit 1: the rest is the whole request, protobuf, else the
//! rest is a CSR's DER, wrapped in PEM, from a node proxy naming a fixed identity).
#![no_main]

use std::{
    sync::{Arc, LazyLock},
    time::{Duration, SystemTime},
};

use libfuzzer_sys::fuzz_target;
use prost::Message;
use weft_api::ca::{IMPERSONATED_IDENTITY, IstioCertificateRequest};
use weft_control::ca::{
    Authority, SystemClock,
    caller::CallerKind,
    service::asked,
    state::{Lifetimes, State},
};
use x509_parser::{
    certification_request::X509CertificationRequest, extensions::GeneralName, prelude::FromDer,
    prelude::X509Certificate,
};

const TRUST_DOMAIN: &str = "cluster.local";
const WAYPOINT: &str = "spiffe://cluster.local/ns/shop/sa/waypoint";
const WORKLOAD: &str = "spiffe://cluster.local/ns/shop/sa/cart";

static CA: LazyLock<Authority> = LazyLock::new(|| {
    let lifetimes = Lifetimes::with_max_leaf(Duration::from_secs(24 * 3600));
    let state = State::generate(SystemTime::now(), &lifetimes).expect("a CA state");
    Authority::in_memory(state, lifetimes, Arc::new(SystemClock)).expect("a CA")
});

/// A node proxy's request for `WORKLOAD` with `csr_der` as its CSR.
fn request_for_workload(csr_der: &[u8]) -> IstioCertificateRequest {
    let identity =
        prost_types::Value { kind: Some(prost_types::value::Kind::StringValue(WORKLOAD.to_owned())) };
    IstioCertificateRequest {
        csr: pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", csr_der.to_vec())),
        validity_duration: 3600,
        metadata: Some(prost_types::Struct {
            fields: [(IMPERSONATED_IDENTITY.to_owned(), identity)].into_iter().collect(),
        }),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else { return };
    let kind = if flags & 1 == 1 { CallerKind::Waypoint } else { CallerKind::NodeProxy };
    let request = if flags & 2 == 2 {
        let Ok(request) = IstioCertificateRequest::decode(data) else { return };
        request
    } else {
        request_for_workload(data)
    };
    let Ok(asked) = asked(kind, WAYPOINT, &request, TRUST_DOMAIN) else { return };
    match kind {
        CallerKind::Waypoint => assert_eq!(asked.identity, WAYPOINT, "a waypoint gets its own identity only"),
        CallerKind::NodeProxy => {
            let (namespace, account) = asked.pod_on_node.as_ref().expect("a node proxy's pod is looked for");
            let named = format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{account}");
            assert_eq!(asked.identity, named, "the pod looked for is the identity's");
            assert!(!namespace.contains('/') && !account.contains('/'), "names are path-safe");
        }
    }
    let Ok(chain) = CA.sign(&request.csr, &asked.identity, asked.ttl) else { return };
    let leaf = pem::parse(&chain[0]).expect("the leaf is PEM");
    let (_, leaf) = X509Certificate::from_der(leaf.contents()).expect("the leaf is a certificate");
    let names: Vec<String> = leaf
        .subject_alternative_name()
        .expect("one SAN extension")
        .map(|san| san.value.general_names.iter().map(|name| format!("{name:?}")).collect())
        .unwrap_or_default();
    let uri = GeneralName::URI(&asked.identity);
    assert_eq!(names, [format!("{uri:?}")], "the leaf names the identity decided and nothing else");
    assert!(!leaf.is_ca(), "a leaf is no CA");
    // The key certified is the one of the request the CA checked: the PEM's first block.
    let (_, block) = x509_parser::pem::parse_x509_pem(request.csr.as_bytes()).expect("the CA read this PEM");
    let (_, csr) = X509CertificationRequest::from_der(&block.contents).expect("the CA read this CSR");
    assert_eq!(
        leaf.public_key().raw,
        csr.certification_request_info.subject_pki.raw,
        "the leaf certifies the checked request's key"
    );
});
