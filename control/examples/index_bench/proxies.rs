//! The proxies' side of the benchmark, in a process of its own so the control plane's memory
//! is measured alone: `count` delta xDS streams, each on its own connection (all opened at
//! once, as after a control-plane restart), subscribed to
//! every workload, service and policy as a node proxy is; each acks every response and reports
//! it on stdout as `<proxy> <snapshot version> <microseconds since the epoch>`. Responses are
//! decoded only as far as their version and nonce: a proxy's own work is not what is measured.
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::uri::PathAndQuery;
use weft_api::discovery::DeltaDiscoveryRequest;

const PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// A `DeltaDiscoveryResponse` read for its version, type and nonce; the resources are skipped.
#[derive(Clone, PartialEq, prost::Message)]
struct Head {
    #[prost(string, tag = "1")]
    system_version_info: String,
    #[prost(string, tag = "4")]
    type_url: String,
    #[prost(string, tag = "5")]
    nonce: String,
}

pub fn run(address: &str, count: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut proxies = tokio::task::JoinSet::new();
        for proxy in 0..count {
            // All at once, as a cluster's proxies come back after a control-plane restart.
            let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
                .connect_timeout(std::time::Duration::from_secs(30));
            proxies.spawn(async move {
                let subscribed = async { subscribe(endpoint.connect().await?, proxy).await };
                if let Err(error) = subscribed.await {
                    eprintln!("proxy {proxy}: {error:#}");
                }
            });
        }
        while proxies.join_next().await.is_some() {}
        anyhow::Ok(())
    })
}

async fn subscribe(channel: tonic::transport::Channel, proxy: usize) -> anyhow::Result<()> {
    // As the node proxy's client allows: a full push at 50k pods is about 14 MB.
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(64 << 20);
    grpc.ready().await?;
    let (requests, queued) = mpsc::channel(4);
    for type_url in [weft_api::security::AUTHORIZATION_TYPE, weft_api::workload::ADDRESS_TYPE] {
        requests.send(DeltaDiscoveryRequest { type_url: type_url.into(), ..Default::default() }).await?;
    }
    let codec = tonic_prost::ProstCodec::<DeltaDiscoveryRequest, Head>::default();
    let mut responses = grpc
        .streaming(tonic::Request::new(ReceiverStream::new(queued)), PathAndQuery::from_static(PATH), codec)
        .await?
        .into_inner();
    while let Some(response) = responses.message().await? {
        let micros = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros();
        if response.type_url == weft_api::workload::ADDRESS_TYPE {
            println!("{proxy} {} {micros}", response.system_version_info);
        }
        let ack = DeltaDiscoveryRequest {
            type_url: response.type_url,
            response_nonce: response.nonce,
            ..Default::default()
        };
        requests.send(ack).await?;
    }
    Ok(())
}
