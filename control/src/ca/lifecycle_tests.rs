//! The CA over years of simulated time: intermediates re-issued before they end, a full root
//! rotation, and at every step two proxies that keep renewing their leaves at half-life (as
//! ztunnel does) and must keep trusting each other, both ways, as their TLS handshakes would
//! (webpki, the simulated time as the verification time).
use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use rcgen::{CertificateParams, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, UnixTime, pem::PemObject};

use super::{Authority, Clock, Lifetimes, State, state};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug)]
struct TestClock(Mutex<SystemTime>);

impl TestClock {
    fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += by;
    }
}

impl Clock for TestClock {
    fn now(&self) -> SystemTime {
        *self.0.lock().unwrap()
    }
}

/// Short lives, so a test sees several intermediates and a root rotation.
fn lifetimes() -> Lifetimes {
    Lifetimes {
        root: 60 * DAY,
        intermediate: 10 * DAY,
        renew_intermediate_before: 4 * DAY,
        rotate_root_before: 20 * DAY,
        max_leaf: DAY,
        rotation_margin: Duration::from_secs(300),
    }
}

/// A proxy's certificate for one identity: its chain, and the roots that came with it.
struct Proxy {
    identity: String,
    chain: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
    renew_at: SystemTime,
}

impl Proxy {
    fn new(identity: &str, ca: &Authority, now: SystemTime) -> Self {
        let mut proxy =
            Self { identity: identity.into(), chain: Vec::new(), roots: Vec::new(), renew_at: now };
        proxy.renew(ca, now);
        proxy
    }

    /// Renews at half-life, as ztunnel's certificate manager does.
    fn renew(&mut self, ca: &Authority, now: SystemTime) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(self.identity.as_str().try_into().unwrap())];
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let mut pems = ca.sign(&csr, &self.identity, DAY).unwrap();
        let bundle = pems.pop().unwrap();
        self.roots = CertificateDer::pem_slice_iter(bundle.as_bytes()).collect::<Result<_, _>>().unwrap();
        self.chain = pems.iter().map(|pem| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()).collect();
        let ends = state::not_after(&pems[0]).unwrap();
        self.renew_at = now + ends.duration_since(now).unwrap() / 2;
    }

    /// Whether this proxy accepts `peer`'s chain at `now`.
    fn trusts(&self, peer: &Proxy, now: SystemTime) -> Result<(), webpki::Error> {
        let anchors: Vec<_> =
            self.roots.iter().map(|root| webpki::anchor_from_trusted_cert(root).unwrap()).collect();
        let at = UnixTime::since_unix_epoch(now.duration_since(SystemTime::UNIX_EPOCH).unwrap());
        webpki::EndEntityCert::try_from(&peer.chain[0])?
            .verify_for_usage(
                rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms.all,
                &anchors,
                &peer.chain[1..],
                at,
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map(drop)
    }
}

#[tokio::test]
async fn intermediates_and_roots_are_replaced_in_time_and_proxies_never_stop_trusting_each_other() {
    let start = SystemTime::now();
    let clock = Arc::new(TestClock(Mutex::new(start)));
    let lifetimes = lifetimes();
    let first = State::generate(start, &lifetimes).unwrap();
    let first_root = first.root.cert.clone();
    let ca = Authority::in_memory(first, lifetimes, clock.clone()).unwrap();
    let mut a = Proxy::new("spiffe://cluster.local/ns/shop/sa/cart", &ca, start);
    // Renewing out of step with the first: the two hold leaves and bundles of different ages.
    clock.advance(7 * HOUR);
    let mut b = Proxy::new("spiffe://cluster.local/ns/shop/sa/payments", &ca, clock.now());
    let mut changes = Vec::new();
    let mut intermediates = vec![ca.current().state.intermediate.cert.clone()];

    // Three quarters of the first root's life, an hour at a time: the control plane maintains
    // the CA each hour, the proxies renew when due, and they must accept each other every hour.
    let end = start + lifetimes.root * 3 / 4;
    while clock.now() < end {
        clock.advance(HOUR);
        let now = clock.now();
        if let Some(change) = ca.maintain().await.unwrap() {
            changes.push(change);
        }
        let signing = ca.current();
        if intermediates.last() != Some(&signing.state.intermediate.cert) {
            intermediates.push(signing.state.intermediate.cert.clone());
        }
        assert!(
            state::left(&signing.state.intermediate.cert, now).unwrap() > lifetimes.max_leaf,
            "the intermediate is about to end"
        );
        for proxy in [&mut a, &mut b] {
            if now >= proxy.renew_at {
                proxy.renew(&ca, now);
            }
            // A leaf never outlives the intermediate that signed it.
            let leaf_ends = state::not_after_der(&proxy.chain[0]).unwrap();
            assert!(leaf_ends <= state::not_after_der(&proxy.chain[1]).unwrap());
        }
        a.trusts(&b, now)
            .unwrap_or_else(|error| panic!("{:?} in: a rejects b: {error}", now.duration_since(start)));
        b.trusts(&a, now)
            .unwrap_or_else(|error| panic!("{:?} in: b rejects a: {error}", now.duration_since(start)));
    }

    assert!(intermediates.len() >= 5, "{} intermediates in 45 days of 10-day ones", intermediates.len());
    let rotation: Vec<_> = changes.iter().filter(|change| change.contains("root")).collect();
    assert_eq!(
        rotation,
        [&"a new root joined the trust bundle", &"the new root signs", &"the old root left the trust bundle"],
        "{changes:?}"
    );
    let last = ca.current();
    assert_ne!(last.state.root.cert, first_root);
    assert_eq!(
        last.state.bundle,
        std::slice::from_ref(&last.state.root.cert),
        "only the new root is trusted at the end"
    );
}

#[test]
fn the_state_survives_its_secret_in_every_phase_and_an_old_secret_trusts_its_root() {
    let now = SystemTime::now();
    let lifetimes = lifetimes();
    let mut state = State::generate(now, &lifetimes).unwrap();
    assert_eq!(State::from_data(&state.to_data()).unwrap(), state);
    let mut later = now + lifetimes.root - lifetimes.rotate_root_before;
    for _ in 0..2 {
        later += lifetimes.rotation_step() + HOUR;
        state = state.advance(later, &lifetimes, None).unwrap().unwrap().0;
        assert!(state.rotation.is_some());
        assert_eq!(State::from_data(&state.to_data()).unwrap(), state);
    }
    let mut old = state.to_data();
    for key in
        ["trust-bundle.pem", "retiring-root.pem", "next-root.pem", "next-root-key.pem", "rotation-since"]
    {
        old.remove(key);
    }
    let read = State::from_data(&old).unwrap();
    assert_eq!((read.bundle, read.rotation), (vec![state.root.cert.clone()], None));
    old.remove("intermediate-key.pem");
    assert_eq!(State::from_data(&old), Err("intermediate-key.pem"));
}

#[test]
fn an_operators_request_starts_one_rotation_and_is_never_acted_on_twice() {
    let now = SystemTime::now();
    let lifetimes = lifetimes();
    let young = State::generate(now, &lifetimes).unwrap();
    assert!(young.advance(now, &lifetimes, None).unwrap().is_none(), "nothing is due on a young root");
    let (mut state, change) = young.advance(now, &lifetimes, Some("compromised")).unwrap().unwrap();
    assert!(matches!(state.rotation, Some(state::Rotation::Introduced { .. })), "{change}");
    assert_eq!(state.bundle.len(), 2, "both roots trusted during the overlap");
    let mut later = now;
    for _ in 0..2 {
        // What the Secret keeps, as a restarted control plane reads it.
        state = State::from_data(&state.to_data()).unwrap();
        assert!(state.advance(later, &lifetimes, Some("compromised")).unwrap().is_none(), "a step too early");
        later += lifetimes.rotation_step();
        state = state.advance(later, &lifetimes, Some("compromised")).unwrap().unwrap().0;
    }
    assert_eq!((state.rotation.as_ref(), state.bundle.len()), (None, 1));
    assert_ne!(state.root, young.root);
    let state = State::from_data(&state.to_data()).unwrap();
    assert!(
        state.advance(later, &lifetimes, Some("compromised")).unwrap().is_none(),
        "the same request again"
    );
    let (again, _) = state.advance(later, &lifetimes, Some("compromised again")).unwrap().unwrap();
    assert!(matches!(again.rotation, Some(state::Rotation::Introduced { .. })));
}
