//! The time, replaceable in tests: certificate lifetimes (the control plane's CA, the proxies'
//! certificate managers) run on a simulated clock there.
use std::time::SystemTime;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

/// The system's clock.
#[derive(Debug)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}
