use std::{sync::Arc, time::Duration};

use tokio::sync::watch;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use weft_api::{
    discovery::{Resource, aggregated_discovery_service_client::AggregatedDiscoveryServiceClient},
    workload::ADDRESS_TYPE,
};

use super::*;
use crate::{
    index::{Snapshot, watch::publish_next},
    metrics::Metrics,
};

fn resource(name: &str, size: usize) -> Resource {
    Resource {
        name: name.into(),
        version: format!("v-{name}"),
        resource: Some(prost_types::Any { type_url: ADDRESS_TYPE.into(), value: vec![7; size] }),
        aliases: Vec::new(),
    }
}

#[test]
fn a_push_is_written_as_the_response_tonic_would_encode_in_chunks() {
    let resources: Vec<Resource> = (0..400).map(|i| resource(&format!("r{i}"), 300 + i)).collect();
    let push = Push {
        version: "7".into(),
        type_url: ADDRESS_TYPE.into(),
        nonce: "7-1".into(),
        response: subscription::Response {
            resources: Changed::These(resources.iter().map(|r| r.encode_to_vec().into()).collect()),
            removed: vec!["gone".into()],
        },
    };
    let mut encoding = Encoding::new(push).expect("encodes");
    let mut written = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = encoding.next_chunk() {
        assert!(chunk.len() < CHUNK + 1024, "a chunk of {} bytes", chunk.len());
        written.extend_from_slice(&chunk);
        chunks += 1;
    }
    assert!(chunks > 1, "written in one piece");
    assert_eq!(written[0], 0, "uncompressed");
    let length = u32::from_be_bytes(written[1..5].try_into().expect("4 bytes")) as usize;
    assert_eq!(length, written.len() - 5);
    let expected = DeltaDiscoveryResponse {
        system_version_info: "7".into(),
        resources,
        type_url: ADDRESS_TYPE.into(),
        nonce: "7-1".into(),
        removed_resources: vec!["gone".into()],
    };
    assert_eq!(DeltaDiscoveryResponse::decode(&written[5..]).expect("decodes"), expected);
}

#[test]
fn a_whole_snapshot_is_written_from_it_in_chunks() {
    let addresses: Vec<(String, String)> =
        (0..2000).map(|i| (format!("r{i:04}"), "x".repeat(100 + i % 50))).collect();
    let addresses: Vec<(&str, &str)> =
        addresses.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    let snapshot = Arc::new(snapshot(&addresses));
    let push = Push {
        version: "3".into(),
        type_url: ADDRESS_TYPE.into(),
        nonce: "3-1".into(),
        response: subscription::Response {
            resources: Changed::All { snapshot: snapshot.clone(), type_url: ADDRESS_TYPE.into() },
            removed: Vec::new(),
        },
    };
    let mut encoding = Encoding::new(push).expect("encodes");
    let mut written = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = encoding.next_chunk() {
        written.extend_from_slice(&chunk);
        chunks += 1;
    }
    assert!(chunks > 2, "{chunks} chunks");
    let length = u32::from_be_bytes(written[1..5].try_into().expect("4 bytes")) as usize;
    assert_eq!(length, written.len() - 5);
    let response = DeltaDiscoveryResponse::decode(&written[5..]).expect("decodes");
    let names: Vec<&str> = response.resources.iter().map(|r| r.name.as_str()).collect();
    let expected: Vec<&str> = addresses.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, expected, "every resource once, in order");
    for resource in &response.resources {
        let held = &snapshot.addresses[&resource.name];
        assert_eq!(resource.version, held.version);
        assert_eq!(resource.resource.as_ref(), Some(&held.body));
    }
}

/// Lets in a stream whose token is `good`.
#[derive(Clone)]
struct Token;

impl Authenticate for Token {
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<String, Status> {
        match metadata.get("authorization").and_then(|value| value.to_str().ok()) {
            Some("Bearer good") => Ok("node0".into()),
            _ => Err(Status::unauthenticated("no good token")),
        }
    }
}

fn snapshot(addresses: &[(&str, &str)]) -> Snapshot {
    crate::index::changes::snapshot(0, addresses)
}

/// Serves `Server` on a loopback port; returns a client of it and the snapshots' sender.
async fn serve() -> (AggregatedDiscoveryServiceClient<tonic::transport::Channel>, watch::Sender<Arc<Snapshot>>)
{
    let (publish, snapshots) = watch::channel(Arc::new(Snapshot::default()));
    let (stopping_tx, stopping) = watch::channel(false);
    std::mem::forget(stopping_tx);
    let server = Server::new(snapshots, Token, Arc::new(Metrics::default()), stopping);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let address = listener.local_addr().expect("bound");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("an address")
        .connect()
        .await
        .expect("connects");
    (AggregatedDiscoveryServiceClient::new(channel), publish)
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("a header"));
    request
}

#[tokio::test]
async fn a_proxy_is_served_over_http2_and_acks_its_way_through_changes() {
    let (mut client, publish) = serve().await;
    publish_next(&publish, snapshot(&[("a", "1"), ("b", "1")]));
    let (requests, queued) = tokio::sync::mpsc::channel(4);
    requests
        .send(DeltaDiscoveryRequest { type_url: ADDRESS_TYPE.into(), ..Default::default() })
        .await
        .expect("queued");
    let mut responses = client
        .delta_aggregated_resources(with_token(ReceiverStream::new(queued), "good"))
        .await
        .expect("a stream")
        .into_inner();
    let first = responses.message().await.expect("a response").expect("not ended");
    assert_eq!(first.system_version_info, "1");
    let names: Vec<&str> = first.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(first.resources[0].resource.as_ref().map(|any| any.value.as_slice()), Some(&b"1"[..]));
    let ack = |nonce: String| DeltaDiscoveryRequest {
        type_url: ADDRESS_TYPE.into(),
        response_nonce: nonce,
        ..Default::default()
    };
    requests.send(ack(first.nonce)).await.expect("queued");

    publish_next(&publish, snapshot(&[("a", "1"), ("b", "2")]));
    let second = tokio::time::timeout(Duration::from_secs(10), responses.message())
        .await
        .expect("in time")
        .expect("a response")
        .expect("not ended");
    assert_eq!(second.system_version_info, "2");
    let names: Vec<&str> = second.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["b"], "only what changed");
    assert!(second.removed_resources.is_empty());
    requests.send(ack(second.nonce)).await.expect("queued");

    drop(requests);
    let end = tokio::time::timeout(Duration::from_secs(10), responses.message()).await.expect("in time");
    assert!(matches!(end, Ok(None)), "the stream ends with an OK status when the proxy ends it: {end:?}");
}

#[tokio::test]
async fn a_stream_without_a_good_token_is_refused_with_its_status() {
    let (mut client, publish) = serve().await;
    publish_next(&publish, snapshot(&[("a", "1")]));
    let request = DeltaDiscoveryRequest { type_url: ADDRESS_TYPE.into(), ..Default::default() };
    let refused = client
        .delta_aggregated_resources(with_token(tokio_stream::iter([request]), "bad"))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert_eq!(refused.message(), "no good token");
}

/// A request body delivered in these pieces.
struct Pieces(std::collections::VecDeque<Bytes>);

impl http_body::Body for Pieces {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(|piece| Ok(Frame::data(piece))))
    }
}

fn framed(request: &DeltaDiscoveryRequest, flag: u8) -> Vec<u8> {
    let message = request.encode_to_vec();
    let mut framed = vec![flag];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    framed
}

/// What `Requests` reads from `body` cut into `pieces` at these offsets.
async fn read(body: &[u8], cuts: &[usize]) -> Vec<Result<DeltaDiscoveryRequest, Status>> {
    let mut pieces = std::collections::VecDeque::new();
    let mut start = 0;
    for &cut in cuts.iter().chain([body.len()].iter()) {
        pieces.push_back(Bytes::copy_from_slice(&body[start..cut]));
        start = cut;
    }
    let requests = Requests::new(tonic::body::Body::new(Pieces(pieces)));
    tokio_stream::StreamExt::collect(requests).await
}

#[tokio::test]
async fn requests_are_read_across_and_within_frames() {
    let subscribe = DeltaDiscoveryRequest { type_url: ADDRESS_TYPE.into(), ..Default::default() };
    let held: std::collections::HashMap<String, String> =
        (0..500).map(|i| (format!("name-{i}"), format!("{i:016x}"))).collect();
    let reconnect = DeltaDiscoveryRequest { initial_resource_versions: held, ..subscribe.clone() };
    let ack = DeltaDiscoveryRequest { response_nonce: "1-1".into(), ..subscribe.clone() };
    let mut body = framed(&reconnect, 0);
    let first = body.len();
    body.extend(framed(&ack, 0));
    body.extend(framed(&subscribe, 0));
    // The large one in pieces of its header and body; the two small ones together.
    let read = read(&body, &[2, 700, first]).await;
    let read: Vec<DeltaDiscoveryRequest> = read.into_iter().map(|request| request.expect("reads")).collect();
    assert_eq!(read, [reconnect, ack, subscribe]);
}

#[tokio::test]
async fn a_request_compressed_too_large_or_cut_short_ends_the_stream_with_its_status() {
    let request = DeltaDiscoveryRequest { type_url: ADDRESS_TYPE.into(), ..Default::default() };
    let read_one = |body: Vec<u8>| async move { read(&body, &[]).await };
    let compressed = read_one(framed(&request, 1)).await;
    assert!(
        matches!(&compressed[..], [Err(status)] if status.code() == tonic::Code::Unimplemented),
        "{compressed:?}"
    );
    let mut large = vec![0];
    large.extend_from_slice(&(MAX_REQUEST as u32 + 1).to_be_bytes());
    let large = read_one(large).await;
    assert!(
        matches!(&large[..], [Err(status)] if status.code() == tonic::Code::ResourceExhausted),
        "{large:?}"
    );
    let mut cut = framed(&request, 0);
    cut.pop();
    let cut = read_one(cut).await;
    assert!(matches!(&cut[..], [Err(status)] if status.code() == tonic::Code::InvalidArgument), "{cut:?}");
    let garbage = read_one(vec![0, 0, 0, 0, 2, 0xff, 0xff]).await;
    assert!(
        matches!(&garbage[..], [Err(status)] if status.code() == tonic::Code::InvalidArgument),
        "{garbage:?}"
    );
}
