//! The delta xDS client: one `DeltaAggregatedResources` stream to the control plane (or istiod),
//! subscribed to every `istio.workload.Address` and `istio.security.Authorization`. Each
//! response is converted and applied to [`State`] whole, then acked; a response that does not
//! convert or would leave the index inconsistent is nacked with the reason and the last good
//! state kept. The state counts as synced once both kinds have arrived. When the stream breaks
//! the state stays as it was (traffic keeps flowing on the last good config) and the client
//! reconnects with capped, jittered backoff, telling the server which versions it holds of each kind so
//! it gets only the difference.
use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weft_api::{
    discovery::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, Status,
        aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
    },
    security::AUTHORIZATION_TYPE,
    workload::ADDRESS_TYPE,
};

use crate::state::State;

mod convert;
/// For the fuzz targets: what every xDS response goes through before it is applied.
#[cfg(fuzzing)]
pub use convert::{policies, update};

/// Backoff between reconnects: doubles from the first to the last. Each wait is drawn at
/// random from half of it to all of it ([`jittered`]).
const BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(15));
/// `google.rpc.Code.INVALID_ARGUMENT`, for nacks.
pub const INVALID_ARGUMENT: i32 = 3;

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub struct Config {
    /// `https://host:port`.
    pub address: String,
    /// The trust bundle file, read again at every reconnect.
    pub root_file: PathBuf,
    pub token_file: PathBuf,
    /// Who this proxy is (every request's `Node`).
    pub proxy: crate::control::ProxyMeta,
    /// Resource types this proxy needs beyond addresses and policies (the waypoint's routes).
    pub extra: Vec<Arc<dyn Subscriber>>,
}

/// A resource type a proxy subscribes to besides addresses and policies, and what it does
/// with them.
pub trait Subscriber: Send + Sync + std::fmt::Debug {
    /// The type URL subscribed to.
    fn type_url(&self) -> &'static str;
    /// The resources held, by name, with their versions: what a reconnect says it holds.
    fn versions(&self) -> std::collections::HashMap<String, String>;
    /// Applies a response whole, or says why it cannot (the response is then nacked and the
    /// last good resources kept).
    fn apply(&self, response: &DeltaDiscoveryResponse) -> Result<(), String>;
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("{0}")]
    Setup(String),
    #[error("stream: {0}")]
    Grpc(#[from] tonic::Status),
    #[error("the stream's request side closed")]
    RequestsClosed,
}

/// Runs forever (until the task is dropped), keeping `state` in step with the server.
pub async fn run(config: Config, state: Arc<State>) {
    let channels = match crate::control::Channels::new(&config.address, &config.root_file, None) {
        Ok(channels) => channels,
        Err(error) => {
            tracing::error!(%error, "xDS is not configured correctly; staying on the current config");
            return;
        }
    };
    let mut backoff = BACKOFF.0;
    loop {
        let mut received = false;
        let session = match channels.get() {
            Ok(channel) => {
                let client =
                    AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
                session(client, &config, &state, &mut received).await
            }
            Err(error) => Err(Error::Setup(error)),
        };
        match session {
            Ok(()) => tracing::info!("xDS stream closed by the server; reconnecting"),
            Err(error) => tracing::warn!(%error, "xDS stream failed; keeping the last good config"),
        }
        if received {
            backoff = BACKOFF.0;
        }
        tokio::time::sleep(jittered(backoff, fastrand::f64())).await;
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

/// The wait before a reconnect: half of `backoff`, and `share` (drawn from 0 to 1) of the other
/// half ("equal jitter": never sooner than half the backoff, so a server that ends streams at
/// once is not asked again at once). When the control plane restarts, every node proxy of the
/// cluster loses its stream at once; waits in step would bring them all back in the same
/// instant, a thousand handshakes the control plane must take together (and SYNs past its
/// listener's backlog), rather than spread.
fn jittered(backoff: Duration, share: f64) -> Duration {
    backoff / 2 + (backoff / 2).mul_f64(share.clamp(0.0, 1.0))
}

async fn session(
    mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    config: &Config,
    state: &State,
    received: &mut bool,
) -> Result<(), Error> {
    let (requests, outgoing) = mpsc::channel(8);
    let node = config.proxy.node();
    // Resume: name the versions held (local-file entries have none).
    let held = |versions: std::collections::HashMap<String, String>| {
        versions.into_iter().filter(|(_, version)| !version.is_empty()).collect()
    };
    let subscriptions =
        [(ADDRESS_TYPE, held(state.versions())), (AUTHORIZATION_TYPE, held(state.policy_versions()))]
            .into_iter()
            .chain(config.extra.iter().map(|extra| (extra.type_url(), held(extra.versions()))));
    for (type_url, initial_resource_versions) in subscriptions {
        let subscribe = DeltaDiscoveryRequest {
            node: Some(node.clone()),
            type_url: type_url.to_owned(),
            initial_resource_versions,
            ..Default::default()
        };
        requests.send(subscribe).await.map_err(|_| Error::RequestsClosed)?;
    }
    let mut request = tonic::Request::new(ReceiverStream::new(outgoing));
    request
        .metadata_mut()
        .insert("authorization", crate::control::bearer(&config.token_file).map_err(Error::Setup)?);
    let mut responses = client.delta_aggregated_resources(request).await?.into_inner();
    while let Some(response) = responses.message().await? {
        *received = true;
        let outcome = match config.extra.iter().find(|extra| extra.type_url() == response.type_url) {
            Some(extra) => extra.apply(&response),
            None => apply(&response, state),
        };
        let error_detail = match outcome {
            Ok(()) => None,
            Err(message) => {
                tracing::warn!(type_url = %response.type_url, nonce = %response.nonce, %message, "rejecting xDS response");
                Some(Status { code: INVALID_ARGUMENT, message, details: Vec::new() })
            }
        };
        let reply = DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            error_detail,
            ..Default::default()
        };
        requests.send(reply).await.map_err(|_| Error::RequestsClosed)?;
    }
    Ok(())
}

/// Applies one response to `state`, all or nothing.
fn apply(response: &DeltaDiscoveryResponse, state: &State) -> Result<(), String> {
    match response.type_url.as_str() {
        ADDRESS_TYPE => {
            let update = convert::update(response)?;
            let (changed, removed) = (update.changed.len(), update.removed.len());
            state.apply(update).map_err(|error| error.to_string())?;
            tracing::debug!(version = %response.system_version_info, changed, removed, "addresses applied");
            state.mark_kind_synced(|synced| synced.addresses = true);
            Ok(())
        }
        AUTHORIZATION_TYPE => {
            let update = convert::policies(response)?;
            let (changed, removed) = (update.changed.len(), update.removed.len());
            state.apply_policies(update);
            tracing::debug!(version = %response.system_version_info, changed, removed, "policies applied");
            state.mark_kind_synced(|synced| synced.policies = true);
            Ok(())
        }
        other => Err(format!("unexpected resource type {other}")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::jittered;

    #[test]
    fn a_reconnect_waits_half_the_backoff_and_a_drawn_share_of_the_rest_never_more() {
        let backoff = Duration::from_millis(250);
        assert_eq!(jittered(backoff, 0.5), Duration::from_micros(187_500));
        assert_eq!(jittered(backoff, 0.0), Duration::from_millis(125));
        assert_eq!(jittered(backoff, 7.0), backoff, "a share past one is one");
    }
}
