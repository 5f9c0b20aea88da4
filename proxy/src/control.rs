//! The connection to the control plane (or istiod): one TLS gRPC channel shape for the CA and
//! xDS, trusting the mesh's trust bundle, authenticated per request by the node proxy's
//! service-account token. Both files are read again each time they are needed: projected tokens
//! rotate, and the bundle (a mounted ConfigMap) changes during a root rotation.
use std::{
    path::{Path, PathBuf},
    sync::Mutex,
    time::Duration,
};

use tonic::{metadata::MetadataValue, transport::Channel};

/// A channel to the control plane that follows the trust bundle file: [`Self::get`] rebuilds it
/// when the file's contents changed since the last call.
#[derive(Debug)]
pub struct Channels {
    address: String,
    root_file: PathBuf,
    request_timeout: Option<Duration>,
    current: Mutex<Option<(String, Channel)>>,
}

impl Channels {
    /// Checks the address and reads the bundle once, so a wrong configuration fails at start.
    pub fn new(address: &str, root_file: &Path, request_timeout: Option<Duration>) -> Result<Self, String> {
        let channels = Self {
            address: address.to_owned(),
            root_file: root_file.to_owned(),
            request_timeout,
            current: Mutex::new(None),
        };
        channels.get()?;
        Ok(channels)
    }

    /// The channel for the bundle as the file has it now.
    pub fn get(&self) -> Result<Channel, String> {
        let pem = std::fs::read_to_string(&self.root_file)
            .map_err(|error| format!("trust bundle {}: {error}", self.root_file.display()))?;
        let mut current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((built_from, channel)) = current.as_ref()
            && *built_from == pem
        {
            return Ok(channel.clone());
        }
        let channel = channel(&self.address, &pem, self.request_timeout)?;
        *current = Some((pem, channel.clone()));
        Ok(channel)
    }
}

/// A lazily connecting channel to `address` (`https://host:port`), trusting `root_pem`. Call it inside the Tokio
/// runtime (and so the network namespace) that will use it: the connection task is spawned
/// there. `request_timeout` bounds unary calls; leave it out for long-lived streams.
fn channel(address: &str, root_pem: &str, request_timeout: Option<Duration>) -> Result<Channel, String> {
    let endpoint = tonic::transport::Endpoint::from_shared(address.to_owned())
        .map_err(|error| format!("control plane address {address}: {error}"))?;
    let host = endpoint.uri().host().unwrap_or_default().trim_matches(['[', ']']).to_owned();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(root_pem))
        .domain_name(host);
    let mut endpoint = endpoint
        .tls_config(tls)
        .map_err(|error| format!("control plane TLS: {error}"))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    if let Some(timeout) = request_timeout {
        endpoint = endpoint.timeout(timeout);
    }
    Ok(endpoint.connect_lazy())
}

/// `Bearer <token>` from `token_file`.
pub fn bearer(token_file: &Path) -> Result<MetadataValue<tonic::metadata::Ascii>, String> {
    let token = std::fs::read_to_string(token_file)
        .map_err(|error| format!("token {}: {error}", token_file.display()))?;
    format!("Bearer {}", token.trim()).parse().map_err(|_| "token is not a valid header value".to_owned())
}

/// Who this proxy is, told to the control plane as Istio's proxies tell istiod: the `Node`
/// of every xDS request (`ztunnel~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local`, with
/// the metadata istiod reads) and the `clusterid` header of every CA request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyMeta {
    pub pod_name: String,
    pub namespace: String,
    pub node_name: String,
    /// The proxy pod's address.
    pub ip: String,
    /// The cluster's name in a multi-cluster mesh (Istio's default: `Kubernetes`).
    pub cluster_id: String,
    /// The network this proxy's node is on (Istio's `NETWORK`; empty: the one network):
    /// addresses are looked up on it.
    pub network: String,
    /// Istio's node type, the `Node` id's first part: `ztunnel`, or `router` for a waypoint.
    pub node_type: &'static str,
}

impl Default for ProxyMeta {
    fn default() -> Self {
        Self {
            pod_name: String::new(),
            namespace: String::new(),
            node_name: String::new(),
            ip: String::new(),
            cluster_id: DEFAULT_CLUSTER_ID.to_owned(),
            network: String::new(),
            node_type: "ztunnel",
        }
    }
}

/// Istio's name for a cluster nobody named.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

impl ProxyMeta {
    /// The xDS `Node`.
    pub fn node(&self) -> weft_api::discovery::Node {
        let string = |value: &str| prost_types::Value {
            kind: Some(prost_types::value::Kind::StringValue(value.to_owned())),
        };
        let fields = [
            ("NAME", &self.pod_name),
            ("NAMESPACE", &self.namespace),
            ("INSTANCE_IPS", &self.ip),
            ("NODE_NAME", &self.node_name),
            ("CLUSTER_ID", &self.cluster_id),
            ("NETWORK", &self.network),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), string(value)))
        .collect();
        let Self { pod_name, namespace, ip, node_type, .. } = self;
        weft_api::discovery::Node {
            id: format!("{node_type}~{ip}~{pod_name}.{namespace}~{namespace}.svc.cluster.local"),
            metadata: Some(prost_types::Struct { fields }),
            ..Default::default()
        }
    }

    /// The `clusterid` header of CA requests, as Istio's ztunnel sends it.
    pub fn cluster_header(&self) -> Result<MetadataValue<tonic::metadata::Ascii>, String> {
        self.cluster_id.parse().map_err(|_| format!("cluster id {:?} is not a header value", self.cluster_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_reads_as_istios_ztunnel_names_itself() {
        let meta = ProxyMeta {
            pod_name: "ztunnel-x1".into(),
            namespace: "weft-system".into(),
            node_name: "node0".into(),
            ip: "10.244.0.3".into(),
            ..ProxyMeta::default()
        };
        let node = meta.node();
        assert_eq!(node.id, "ztunnel~10.244.0.3~ztunnel-x1.weft-system~weft-system.svc.cluster.local");
        let fields = node.metadata.unwrap().fields;
        let field = |key: &str| match &fields[key].kind {
            Some(prost_types::value::Kind::StringValue(value)) => value.clone(),
            other => panic!("{key}: {other:?}"),
        };
        assert_eq!(
            (field("NAMESPACE"), field("NODE_NAME"), field("CLUSTER_ID"), field("INSTANCE_IPS")),
            ("weft-system".into(), "node0".into(), "Kubernetes".into(), "10.244.0.3".into())
        );
        assert_eq!(meta.cluster_header().unwrap(), "Kubernetes");
    }
}
