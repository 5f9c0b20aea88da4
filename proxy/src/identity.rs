//! Workload identity: `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`, carried as
//! the only URI SAN of a workload certificate; where certificates come from ([`ca`]) and the
//! per-node cache that keeps them fresh ([`manager`]).
use std::{fmt, str::FromStr};

pub mod ca;
pub mod manager;

/// A workload's SPIFFE identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

/// Why a string is not a workload identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a workload SPIFFE identity (spiffe://<td>/ns/<ns>/sa/<sa>): {0:?}")]
pub struct ParseError(String);

impl Identity {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        }
    }
}

impl FromStr for Identity {
    type Err = ParseError;

    fn from_str(uri: &str) -> Result<Self, ParseError> {
        let error = || ParseError(uri.to_owned());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(error)?;
        let mut parts = rest.split('/');
        let (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(error());
        };
        if [td, ns, sa].iter().any(|part| part.is_empty()) {
            return Err(error());
        }
        Ok(Self::new(td, ns, sa))
    }
}

impl serde::Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Who a destination may prove to be: its workload's identity or, for an endpoint reached as
/// one of a Service's, any of the Service's `subject_alt_names` (as Istio's ztunnel accepts).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Expected {
    pub workload: Identity,
    pub alternatives: Vec<Identity>,
}

impl Expected {
    /// Whether a peer proving `identity` is acceptable.
    pub fn admits(&self, identity: &Identity) -> bool {
        *identity == self.workload || self.alternatives.contains(identity)
    }
}

impl From<Identity> for Expected {
    fn from(workload: Identity) -> Self {
        Self { workload, alternatives: Vec::new() }
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.workload)?;
        for alternative in &self.alternatives {
            write!(f, " or {alternative}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_its_uri() {
        let id: Identity = "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap();
        assert_eq!(id, Identity::new("cluster.local", "shop", "cart"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/cart");
    }

    #[test]
    fn rejects_anything_else() {
        for bad in [
            "https://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local/sa/a/ns/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://td/ns//sa/b",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad}");
        }
    }
}
