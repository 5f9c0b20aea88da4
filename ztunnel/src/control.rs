//! The connection to the control plane (or istiod): one TLS gRPC channel shape for the CA and
//! xDS, trusting the mesh root, authenticated per request by the node proxy's service-account
//! token — read from its file every time, because projected tokens rotate.
use std::{path::Path, time::Duration};

use tonic::{metadata::MetadataValue, transport::Channel};

/// A lazily connecting channel to `address` (`https://host:port`). Call it inside the Tokio
/// runtime (and so the network namespace) that will use it: the connection task is spawned
/// there. `request_timeout` bounds unary calls; leave it out for long-lived streams.
pub fn channel(address: &str, root_pem: &str, request_timeout: Option<Duration>) -> Result<Channel, String> {
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
