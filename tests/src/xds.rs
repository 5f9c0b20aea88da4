//! A test xDS client: a delta ADS stream to the control plane from inside a node's network
//! namespace (fabric addresses mean nothing elsewhere), on a thread and runtime of its own. The
//! test drives it step by step — read the next response, ack or nack it — and keeps the
//! resources it holds, as a proxy would.
use std::{
    collections::BTreeMap,
    path::Path,
    sync::mpsc as std_mpsc,
    time::{Duration, Instant},
};

use anyhow::Context;
use prost::Message;
use tokio::sync::mpsc;
use weft_api::{
    discovery::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, Status,
        aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
    },
    workload::{ADDRESS_TYPE, Address, address},
};

use crate::{control::ControlPlane, topology::Node};

/// Resources held: name → (version, value).
pub type Held = BTreeMap<String, (String, address::Type)>;

/// One open stream.
#[derive(Debug)]
pub struct XdsClient {
    requests: mpsc::UnboundedSender<DeltaDiscoveryRequest>,
    responses: std_mpsc::Receiver<Result<DeltaDiscoveryResponse, tonic::Status>>,
    /// What the responses so far amount to.
    pub held: Held,
}

impl XdsClient {
    /// Opens a stream from `node` with the token in `token_file`, subscribing to every Address;
    /// `initial` names versions already held (a reconnect).
    pub fn connect(
        node: &Node,
        plane: &ControlPlane,
        token_file: &Path,
        initial: &Held,
    ) -> anyhow::Result<Self> {
        let (requests, outgoing) = mpsc::unbounded_channel();
        let (incoming, responses) = std_mpsc::channel();
        let address = plane.address();
        let root_file = plane.root_file().to_owned();
        let bearer = weft_proxy::control::bearer(token_file).map_err(anyhow::Error::msg)?;
        let netns = node.netns.open()?;
        std::thread::spawn(move || {
            let forward = |result| {
                let _ = incoming.send(result);
            };
            if let Err(error) = crate::netns::enter(&netns) {
                return forward(Err(tonic::Status::internal(format!("entering the node netns: {error}"))));
            }
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return forward(Err(tonic::Status::internal("no runtime")));
            };
            runtime.block_on(async move {
                let channel = match weft_proxy::control::Channels::new(&address, &root_file, None)
                    .and_then(|channels| channels.get())
                {
                    Ok(channel) => channel,
                    Err(error) => return forward(Err(tonic::Status::internal(error))),
                };
                let mut request =
                    tonic::Request::new(tokio_stream::wrappers::UnboundedReceiverStream::new(outgoing));
                request.metadata_mut().insert("authorization", bearer);
                let mut client = AggregatedDiscoveryServiceClient::new(channel);
                let mut stream = match client.delta_aggregated_resources(request).await {
                    Ok(response) => response.into_inner(),
                    Err(status) => return forward(Err(status)),
                };
                loop {
                    match stream.message().await {
                        Ok(Some(response)) => forward(Ok(response)),
                        Ok(None) => return forward(Err(tonic::Status::cancelled("stream closed"))),
                        Err(status) => return forward(Err(status)),
                    }
                }
            });
        });
        let client = Self { requests, responses, held: initial.clone() };
        client.send(DeltaDiscoveryRequest {
            type_url: ADDRESS_TYPE.into(),
            initial_resource_versions: initial
                .iter()
                .map(|(name, (version, _))| (name.clone(), version.clone()))
                .collect(),
            ..Default::default()
        })?;
        Ok(client)
    }

    fn send(&self, request: DeltaDiscoveryRequest) -> anyhow::Result<()> {
        self.requests.send(request).map_err(|_| anyhow::anyhow!("the xDS stream is gone"))
    }

    /// The next response (applied to `held`), or the stream's error.
    pub fn next(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<Result<DeltaDiscoveryResponse, tonic::Status>> {
        let response = self.responses.recv_timeout(timeout).context("no xDS response in time")?;
        if let Ok(response) = &response {
            for name in &response.removed_resources {
                self.held.remove(name);
            }
            for resource in &response.resources {
                let body = resource.resource.as_ref().context("resource without a body")?;
                let value = Address::decode(body.value.as_slice())?.r#type.context("empty Address")?;
                self.held.insert(resource.name.clone(), (resource.version.clone(), value));
            }
        }
        Ok(response)
    }

    pub fn ack(&self, response: &DeltaDiscoveryResponse) -> anyhow::Result<()> {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
    }

    pub fn nack(&self, response: &DeltaDiscoveryResponse, message: &str) -> anyhow::Result<()> {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            error_detail: Some(Status {
                code: weft_proxy::xds::INVALID_ARGUMENT,
                message: message.into(),
                details: Vec::new(),
            }),
            ..Default::default()
        })
    }

    /// Reads and acks responses until `held` satisfies `done`.
    pub fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Held) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !done(&self.held) {
            let left = deadline
                .checked_duration_since(Instant::now())
                .with_context(|| format!("waiting for {what}"))?;
            let response = self.next(left).with_context(|| format!("waiting for {what}"))??;
            self.ack(&response)?;
        }
        Ok(())
    }
}

/// The workload named `name` (pod name) in `held`.
pub fn workload<'a>(held: &'a Held, name: &str) -> Option<&'a weft_api::workload::Workload> {
    held.values().find_map(|(_, value)| match value {
        address::Type::Workload(workload) if workload.name == name => Some(workload),
        _ => None,
    })
}
