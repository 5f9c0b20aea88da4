//! Least-request load balancing, Istio's default for a waypoint's backends (Envoy's
//! `LEAST_REQUEST`): a request goes to the endpoint with the fewest requests in flight from
//! this waypoint, ties broken at random, so a slow or stuck endpoint gets fewer new requests
//! instead of an equal share. A request counts from its attempt until its response body ends
//! (a gRPC stream for as long as it lasts), or until it failed; an L4 relay for as long as it
//! runs.
use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
};

use hyper::body::{Body, Frame, SizeHint};

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

/// A response body that keeps its request counted until the body ends or is dropped.
#[derive(Debug)]
pub struct Counted<B> {
    body: B,
    counting: Option<Counting>,
}

impl<B> Counted<B> {
    pub fn new(body: B, counting: Counting) -> Self {
        Self { body, counting: Some(counting) }
    }
}

impl<B: Body + Unpin> Body for Counted<B> {
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

    use super::{Counted, InFlight};

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
