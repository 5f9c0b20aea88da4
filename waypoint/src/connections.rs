//! A cap on the HTTP connections a waypoint replica holds to one backend Service's endpoints
//! (a CircuitBreakerPolicy's `maxConnections`, Istio's `connectionPool.tcp.maxConnections`), and
//! on the requests waiting for one (`maxPendingRequests`, Istio's `http1MaxPendingRequests`).
//! A request that needs a new connection while all are held waits for one — pending — or,
//! with as many pending already, is answered 503 at once (`x-envoy-overloaded`), as Envoy's
//! circuit breakers answer.
//!
//! Connections belong to the session (client stream) that opened them, not to a pool shared by
//! every client: each one's CONNECT names its client's address. So a connection a session
//! holds idle would keep its place while others wait; instead, while any request waits (or
//! when one is refused), an idle connection is asked to close ([`Slot::reclaim`]) and its
//! place goes to the first waiting. A connection is idle when no request's answer is still on
//! it ([`Use`] counts them until the answer's body ends). An HTTP/2 connection is shared by its
//! session's requests; a request waiting for a place takes it when its session opens one
//! meanwhile ([`crate::forward`]).
use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// A CircuitBreakerPolicy's connection limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    /// `None`: as many may wait as come.
    pub max_pending: Option<usize>,
}

/// The connection caps of every backend Service that has one.
#[derive(Debug, Default)]
pub struct Caps(Mutex<HashMap<String, Arc<Backend>>>);

impl Caps {
    /// Service `key`'s connections under `limits`. Changed limits start a new count: the
    /// connections open under the old ones keep their places there until they close.
    pub fn of(&self, key: &str, limits: Limits) -> Arc<Backend> {
        let mut backends = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match backends.get(key) {
            Some(backend) if backend.limits == limits => backend.clone(),
            _ => {
                // One entry per capped backend Service of the mesh, as the retry budgets.
                let backend = Arc::new(Backend::new(limits));
                backends.insert(key.to_owned(), backend.clone());
                backend
            }
        }
    }
}

/// One backend Service's connections from this replica.
#[derive(Debug)]
pub struct Backend {
    limits: Limits,
    places: Arc<Semaphore>,
    /// Requests waiting for a place.
    pending: AtomicUsize,
    /// Connections that were idle when listed, oldest first, each listed once (some may be in
    /// use again or gone: [`Slot::reclaim`] tells).
    idle: Mutex<VecDeque<Weak<Slot>>>,
}

/// Too many requests wait for a connection already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow;

impl Backend {
    fn new(limits: Limits) -> Self {
        Self {
            limits,
            places: Arc::new(Semaphore::new(limits.max_connections)),
            pending: AtomicUsize::new(0),
            idle: Mutex::default(),
        }
    }

    /// A place for one more connection: at once if one is free; else, unless too many wait
    /// already, once one is (an idle connection is asked to close meanwhile).
    pub async fn place(self: &Arc<Self>) -> Result<Place, Overflow> {
        let permit = match self.places.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let _pending = {
                    // Under the idle list's lock, as a connection going idle looks for waiting
                    // requests: either it sees this one, or this one finds it listed.
                    let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let waiting = self.pending.load(Ordering::Acquire);
                    // Refused or not, an idle connection gives way: with no queue nothing else
                    // would ask it, and idle connections could hold every place for good.
                    reclaim_one(&mut idle);
                    if self.limits.max_pending.is_some_and(|max| waiting >= max) {
                        return Err(Overflow);
                    }
                    self.pending.fetch_add(1, Ordering::AcqRel);
                    tracing::debug!(pending = waiting + 1, "a request waits for a connection to its backend");
                    Pending(self)
                };
                self.places.clone().acquire_owned().await.map_err(|_| Overflow)?
            }
        };
        let slot =
            Arc::new(Slot { backend: Arc::downgrade(self), state: Mutex::default(), close: Notify::new() });
        Ok(Place { _permit: permit, slot })
    }

    /// `slot` has just become idle: closed at once if a request waits, else listed.
    fn idle(&self, slot: &Arc<Slot>) {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.pending.load(Ordering::Acquire) > 0 && slot.reclaim() {
            return;
        }
        if !slot.list() {
            return;
        }
        // A live connection is listed once; entries of connections closed are dropped as they
        // come up, or here once they could outnumber the connections open.
        let open =
            self.limits.max_connections - self.places.available_permits().min(self.limits.max_connections);
        if idle.len() >= open.saturating_mul(2).max(16) {
            idle.retain(|slot| slot.upgrade().is_some_and(|slot| slot.is_open()));
        }
        idle.push_back(Arc::downgrade(slot));
    }
}

/// Asks the longest idle connection of `idle` (a backend's list, locked) to close, if one is.
fn reclaim_one(idle: &mut VecDeque<Weak<Slot>>) {
    while let Some(slot) = idle.pop_front() {
        if slot.upgrade().is_some_and(|slot| slot.reclaim()) {
            return;
        }
    }
}

/// Counts a waiting request in [`Backend::pending`] until dropped.
struct Pending<'a>(&'a Backend);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's place, held by the connection's task for as long as it runs.
#[derive(Debug)]
pub struct Place {
    _permit: OwnedSemaphorePermit,
    slot: Arc<Slot>,
}

impl Drop for Place {
    /// The connection has ended: its sender, which its session may still hold, takes no more
    /// requests, and it is no idle connection to reclaim.
    fn drop(&mut self) {
        self.slot.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).reclaimed = true;
    }
}

impl Place {
    /// What the connection's sender keeps to count its uses.
    pub fn slot(&self) -> Arc<Slot> {
        self.slot.clone()
    }

    /// Resolves once the connection, idle, should close for a waiting request.
    pub async fn reclaimed(&self) {
        self.slot.close.notified().await;
    }
}

/// A capped connection: its uses, and whether it was asked to close.
#[derive(Debug)]
pub struct Slot {
    backend: Weak<Backend>,
    state: Mutex<SlotState>,
    close: Notify,
}

#[derive(Debug, Default)]
struct SlotState {
    uses: usize,
    /// Asked to close, or closed.
    reclaimed: bool,
    /// In its backend's idle list.
    listed: bool,
}

impl Slot {
    /// Whether this connection counts toward `backend`'s cap.
    pub fn is_of(&self, backend: &Arc<Backend>) -> bool {
        std::ptr::eq(self.backend.as_ptr(), Arc::as_ptr(backend))
    }

    /// A request on this connection, until its answer ends; `None` once it was asked to
    /// close (the connection is going: a new one is needed).
    pub fn start(self: &Arc<Self>) -> Option<Use> {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.reclaimed {
            return None;
        }
        state.uses += 1;
        Some(Use(self.clone()))
    }

    /// Whether the connection is neither closing nor closed.
    fn is_open(&self) -> bool {
        !self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).reclaimed
    }

    /// Marks the connection listed as idle; false if it was already.
    fn list(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        !std::mem::replace(&mut state.listed, true)
    }

    /// Asks the connection to close if it is idle; whether it was. Either way it is no longer
    /// listed (it is taken off the list, or closing): idle again, it is listed again.
    fn reclaim(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.listed = false;
        if state.uses > 0 || state.reclaimed {
            return false;
        }
        state.reclaimed = true;
        // Stored if the task is not waiting yet: it closes when it next looks.
        self.close.notify_one();
        true
    }
}

/// A request on a capped connection, until its answer ends.
#[derive(Debug)]
pub struct Use(Arc<Slot>);

impl Drop for Use {
    fn drop(&mut self) {
        let idle = {
            let mut state = self.0.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            state.uses -= 1;
            state.uses == 0
        };
        if idle && let Some(backend) = self.0.backend.upgrade() {
            backend.idle(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Caps, Limits, Overflow};

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_waiting_request_gets_the_place_of_an_idle_connection_and_past_the_pending_cap_none() {
        let caps = Caps::default();
        let backend = caps.of("shop/echo", Limits { max_connections: 1, max_pending: Some(1) });
        let first = backend.place().await.unwrap();
        let slot = first.slot();
        let answering = slot.start().unwrap();
        // The first connection holds the only place: the next request waits, the one after
        // that overflows.
        let waiting = tokio::spawn({
            let backend = backend.clone();
            async move { backend.place().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a place is held: the request waits");
        assert_eq!(backend.place().await.unwrap_err(), Overflow, "one waits already");
        // Its answer ends; idle, while a request waits, the connection is asked to close…
        drop(answering);
        tokio::time::timeout(WAIT, first.reclaimed()).await.expect("the idle connection is asked to close");
        assert!(slot.start().is_none(), "a connection asked to close takes no more requests");
        assert!(!waiting.is_finished(), "the place is free only once the connection closed");
        // …and once it has, the waiting request has its place.
        drop(first);
        let second = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap().unwrap();
        assert!(second.slot().is_of(&backend));
    }

    #[tokio::test]
    async fn a_connection_left_idle_is_asked_to_close_when_a_request_comes_to_wait() {
        let caps = Caps::default();
        let backend = caps.of("shop/echo", Limits { max_connections: 1, max_pending: None });
        let held = backend.place().await.unwrap();
        drop(held.slot().start().unwrap());
        // Idle, nobody waiting: it stays.
        assert!(tokio::time::timeout(Duration::from_millis(10), held.reclaimed()).await.is_err());
        let waiting = tokio::spawn({
            let backend = backend.clone();
            async move { backend.place().await.map(drop) }
        });
        tokio::time::timeout(WAIT, held.reclaimed()).await.expect("asked to close for the waiting request");
        drop(held);
        tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap().unwrap();
        // New limits count anew; the same ones are the same count.
        let wider = caps.of("shop/echo", Limits { max_connections: 2, max_pending: None });
        assert!(!std::sync::Arc::ptr_eq(&backend, &wider));
        assert!(std::sync::Arc::ptr_eq(
            &wider,
            &caps.of("shop/echo", Limits { max_connections: 2, max_pending: None })
        ));
    }

    #[tokio::test]
    async fn a_connection_used_again_and_again_is_listed_idle_once() {
        let backend = Caps::default().of("shop/echo", Limits { max_connections: 4, max_pending: None });
        let held = backend.place().await.unwrap();
        for _ in 0..1000 {
            drop(held.slot().start().unwrap());
        }
        assert_eq!(backend.idle.lock().unwrap().len(), 1);
    }

    /// A connection that ended while its session still holds its sender is no idle one: a
    /// waiting request asks the one that is open.
    #[tokio::test]
    async fn a_waiting_request_passes_over_a_connection_that_has_ended() {
        let backend = Caps::default().of("shop/echo", Limits { max_connections: 2, max_pending: None });
        let (ended, open) = (backend.place().await.unwrap(), backend.place().await.unwrap());
        let (ended_slot, open_slot) = (ended.slot(), open.slot());
        drop(ended_slot.start().unwrap());
        drop(open_slot.start().unwrap());
        // Its task is gone (its upstream closed it); its session keeps the slot.
        drop(ended);
        let _second_place = backend.place().await.unwrap();
        let waiting = tokio::spawn({
            let backend = backend.clone();
            async move { backend.place().await.map(drop) }
        });
        tokio::time::timeout(WAIT, open.reclaimed()).await.expect("the open idle connection gives way");
        drop(open);
        tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap().unwrap();
        assert!(ended_slot.start().is_none(), "an ended connection takes no requests");
    }

    /// With no queue a request that finds every place held is refused, and an idle connection
    /// gives way so that a later one is not.
    #[tokio::test]
    async fn without_a_queue_a_refused_request_still_frees_an_idle_place() {
        let backend = Caps::default().of("shop/echo", Limits { max_connections: 1, max_pending: Some(0) });
        let held = backend.place().await.unwrap();
        drop(held.slot().start().unwrap());
        assert_eq!(backend.place().await.unwrap_err(), Overflow);
        tokio::time::timeout(WAIT, held.reclaimed()).await.expect("the idle connection gives way");
        drop(held);
        backend.place().await.expect("the next request has the place");
    }
}
