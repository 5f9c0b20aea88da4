//! Least-request load balancing, Istio's default for a waypoint's backends (Envoy's
//! `LEAST_REQUEST`): a request goes to the endpoint with the fewest requests in flight from
//! this waypoint, ties broken at random, so a slow or stuck endpoint gets fewer new requests
//! instead of an equal share. A request counts from its attempt until its response body ends
//! (a gRPC stream for as long as it lasts), or until it failed; an L4 relay for as long as it
//! runs. A LoadBalancerPolicy on a backend picks otherwise ([`Balancer`]): round robin, at
//! random, or by consistent hash of a header or the client's address.
use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
};

use hyper::body::{Body, Frame, SizeHint};
use weft_api::route as api;

/// Requests in flight per endpoint address; an endpoint with none has no entry.
#[derive(Debug, Default)]
pub struct InFlight {
    counts: Mutex<HashMap<SocketAddr, usize>>,
}

impl InFlight {
    /// Requests in flight to `endpoint`.
    pub fn count(&self, endpoint: SocketAddr) -> usize {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner).get(&endpoint).copied().unwrap_or(0)
    }

    /// Counts one more request to `endpoint` until the returned guard is dropped.
    pub fn start(self: &Arc<Self>, endpoint: SocketAddr) -> Counting {
        *self.counts.lock().unwrap_or_else(PoisonError::into_inner).entry(endpoint).or_default() += 1;
        Counting { registry: self.clone(), endpoint }
    }

    /// The index of the less loaded of two distinct candidates drawn with `random(n)` (a
    /// value in `0..n`), the first drawn on a tie; the only one when there is one; `None` when
    /// there is none.
    pub fn least_loaded(
        &self,
        candidates: &[SocketAddr],
        mut random: impl FnMut(usize) -> usize,
    ) -> Option<usize> {
        let first = match candidates.len() {
            0 => return None,
            1 => return Some(0),
            n => random(n) % n,
        };
        // The second from the others, so the two are distinct.
        let second = (first + 1 + random(candidates.len() - 1) % (candidates.len() - 1)) % candidates.len();
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = |index: usize| counts.get(&candidates[index]).copied().unwrap_or(0);
        Some(if count(second) < count(first) { second } else { first })
    }
}

/// How endpoints are picked for a backend Service (a LoadBalancerPolicy on it); without one,
/// least request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balancer {
    /// `namespace/name`.
    pub policy: String,
    pub pick: Pick,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    LeastRequest,
    RoundRobin,
    Random,
    /// By the value of this header (lowercase), or without one by the client's address.
    ConsistentHash(Option<http::HeaderName>),
}

impl Balancer {
    /// A kind this waypoint does not know (a newer control plane's) is least request, as if no
    /// policy were there, rather than refuse the Service's routes.
    pub fn compile(balancer: &api::LoadBalancer) -> Result<Self, InvalidHashHeader> {
        use api::load_balancer::Kind;
        let pick = match Kind::try_from(balancer.kind) {
            Ok(Kind::RoundRobin) => Pick::RoundRobin,
            Ok(Kind::Random) => Pick::Random,
            Ok(Kind::ConsistentHash) if balancer.hash_header.is_empty() => Pick::ConsistentHash(None),
            Ok(Kind::ConsistentHash) => Pick::ConsistentHash(Some(
                http::HeaderName::from_bytes(balancer.hash_header.as_bytes())
                    .map_err(|_| InvalidHashHeader(balancer.policy.clone()))?,
            )),
            Ok(Kind::LeastRequest) | Err(_) => Pick::LeastRequest,
        };
        Ok(Self { policy: balancer.policy.clone(), pick })
    }

    pub fn describe(&self) -> String {
        let how = match &self.pick {
            Pick::LeastRequest => "least request".to_owned(),
            Pick::RoundRobin => "round robin".to_owned(),
            Pick::Random => "random".to_owned(),
            Pick::ConsistentHash(Some(header)) => format!("consistent hash on header {header}"),
            Pick::ConsistentHash(None) => "consistent hash on the client's address".to_owned(),
        };
        format!("load balancer {}: {how}", self.policy)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("load balancer {0}: the hash header is no header name")]
pub struct InvalidHashHeader(String);

/// The endpoint `key` goes to among `candidates`, by rendezvous hashing: the one whose hash with
/// the key is highest, so an endpoint coming or going moves only its own share of keys, and
/// every replica and release agrees (FNV-1a, then SplitMix64's finaliser for its spread).
pub fn rendezvous(key: u64, candidates: &[SocketAddr]) -> Option<usize> {
    let weight = |candidate: &SocketAddr| {
        let mut bytes = key.to_le_bytes().to_vec();
        bytes.extend_from_slice(candidate.to_string().as_bytes());
        mix(weft_api::hash::fnv1a(&bytes))
    };
    (0..candidates.len()).max_by_key(|index| weight(&candidates[*index]))
}

/// SplitMix64's finaliser: every input bit moves every output bit.
fn mix(mut value: u64) -> u64 {
    value = (value ^ (value >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value = (value ^ (value >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

/// A consistent hash's key for `value` (a header's bytes, the client's address).
pub fn hash_key(value: &[u8]) -> u64 {
    weft_api::hash::fnv1a(value)
}

/// Round robin's turns, per backend Service.
#[derive(Debug, Default)]
pub struct Turns {
    next: Mutex<HashMap<String, usize>>,
}

impl Turns {
    /// The next turn for `backend`'s endpoints (taken modulo their number by the caller).
    pub fn next(&self, backend: &str) -> usize {
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        match next.get_mut(backend) {
            Some(turn) => {
                *turn = turn.wrapping_add(1);
                *turn
            }
            None => {
                next.insert(backend.to_owned(), 0);
                0
            }
        }
    }
}

/// One request in flight; dropped, it no longer counts.
#[derive(Debug)]
pub struct Counting {
    registry: Arc<InFlight>,
    endpoint: SocketAddr,
}

impl Drop for Counting {
    fn drop(&mut self) {
        let mut counts = self.registry.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.endpoint) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.endpoint);
            }
        }
    }
}

/// A response body that keeps its request counted (`G`: a [`Counting`], or several guards)
/// until the body ends or is dropped.
#[derive(Debug)]
pub struct Counted<B, G = Counting> {
    body: B,
    counting: Option<G>,
}

impl<B, G> Counted<B, G> {
    pub fn new(body: B, counting: G) -> Self {
        Self { body, counting: Some(counting) }
    }
}

impl<B: Body + Unpin, G: Unpin> Body for Counted<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.counting = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    use super::{Balancer, Counted, InFlight, Pick, SocketAddr, Turns, api, hash_key, rendezvous};

    /// A generator that returns `draws` in turn.
    fn drawing(draws: &[usize]) -> impl FnMut(usize) -> usize + '_ {
        let mut draws = draws.iter();
        move |_| *draws.next().expect("no more than two draws")
    }

    #[test]
    fn of_two_endpoints_drawn_the_one_with_fewer_requests_in_flight_is_chosen() {
        let registry = Arc::new(InFlight::default());
        let [a, b, c] = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"].map(|address| address.parse().unwrap());
        let _busy = [registry.start(a), registry.start(a), registry.start(b)];
        // Drawn: a (index 0), then the second of the others (c).
        assert_eq!(registry.least_loaded(&[a, b, c], drawing(&[0, 1])), Some(2));
        // Drawn: a, then b: b has fewer.
        assert_eq!(registry.least_loaded(&[a, b, c], drawing(&[0, 0])), Some(1));
        // Two endpoints: both are drawn, whatever the draw; the idle one wins.
        assert_eq!(registry.least_loaded(&[a, c], drawing(&[0, 0])), Some(1));
        assert_eq!(registry.least_loaded(&[a, c], drawing(&[1, 0])), Some(1));
        let held = registry.start(c);
        // b and c tie at one: the first drawn.
        assert_eq!(registry.least_loaded(&[a, b, c], drawing(&[2, 0])), Some(2));
        assert_eq!(registry.least_loaded(&[a, b, c], drawing(&[1, 0])), Some(1));
        drop(held);
        assert_eq!(registry.count(c), 0, "a dropped guard no longer counts");
        assert_eq!(registry.least_loaded(&[c], drawing(&[])), Some(0), "one candidate: no draw");
        assert_eq!(registry.least_loaded(&[], drawing(&[])), None);
    }

    #[test]
    fn a_consistent_hash_keeps_each_key_on_its_endpoint_and_an_endpoint_leaving_moves_only_its_own() {
        let endpoints: Vec<SocketAddr> =
            (1..=3).map(|last| SocketAddr::from(([10, 0, 0, last], 8080))).collect();
        let placed = |endpoints: &[SocketAddr], key: u64| endpoints[rendezvous(key, endpoints).unwrap()];
        let keys: Vec<u64> = (0..1000).map(|user: u32| hash_key(format!("user-{user}").as_bytes())).collect();
        let before: Vec<SocketAddr> = keys.iter().map(|key| placed(&endpoints, *key)).collect();
        for endpoint in &endpoints {
            let share = before.iter().filter(|placed| *placed == endpoint).count();
            assert!((250..=420).contains(&share), "about a third each: {share}");
        }
        let fewer = &endpoints[..2];
        for (key, was) in keys.iter().zip(&before) {
            let now = placed(fewer, *key);
            if fewer.contains(was) {
                assert_eq!(now, *was, "a key on an endpoint that stayed does not move");
            }
        }
        assert_eq!(rendezvous(1, &[]), None);
    }

    #[test]
    fn round_robin_takes_turns_per_backend_and_an_unknown_kind_is_least_request() {
        let turns = Turns::default();
        assert_eq!((0..4).map(|_| turns.next("a") % 2).collect::<Vec<_>>(), [0, 1, 0, 1]);
        assert_eq!(turns.next("b"), 0, "each backend its own");
        let unknown = api::LoadBalancer { policy: "shop/lb".into(), kind: 99, hash_header: String::new() };
        assert_eq!(Balancer::compile(&unknown).unwrap().pick, Pick::LeastRequest);
        let bad = api::LoadBalancer { kind: 3, hash_header: "not a header".into(), ..unknown };
        assert!(Balancer::compile(&bad).is_err());
    }

    #[tokio::test]
    async fn a_response_counts_until_its_body_ends() {
        let registry = Arc::new(InFlight::default());
        let endpoint = "10.0.0.1:80".parse().unwrap();
        let mut body = Counted::new(Full::new(Bytes::from_static(b"answer")), registry.start(endpoint));
        let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!((&data[..], registry.count(endpoint)), (&b"answer"[..], 1), "while it is being read");
        assert!(body.frame().await.is_none());
        assert_eq!(registry.count(endpoint), 0, "once it ended, the body still held");
        drop(body);
        let unread = Counted::new(Full::new(Bytes::from_static(b"x")), registry.start(endpoint));
        drop(unread);
        assert_eq!(registry.count(endpoint), 0, "or dropped unread");
    }
}
