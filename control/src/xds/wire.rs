//! The ADS method on the wire, served by hand rather than by tonic's generated server, so a
//! response is encoded as its stream is read: HTTP/2 pulls the next 64 KiB only when its
//! window lets it send them, and they are copied straight from each resource's shared
//! encoding (`Resource::wire`). Tonic's server encodes a whole message into a buffer of its
//! stream's own first, and keeps that buffer's allocation as long as the stream lives: with a
//! full push at 50 000 pods about 14 MB, a thousand connected proxies would hold 14 GB.
//!
//! Requests are read here too (`Requests`), up to 64 MiB each: a reconnecting proxy lists
//! every name and version it holds, about 3.7 MB at 50 000 pods (tonic's default limit is
//! 4 MiB), and tonic's reader would keep a buffer that size for the stream's life.
use std::{
    convert::Infallible,
    ops::Bound,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http_body::Frame;
use prost::{
    Message,
    bytes::{Buf, BufMut, Bytes, BytesMut},
    encoding::{WireType, encode_key, encode_varint, encoded_len_varint},
};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{
    Status,
    codegen::{BoxFuture, Service, http},
    metadata::MetadataMap,
    server::NamedService,
};
use weft_api::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};

use super::{
    Authenticate, Server,
    subscription::{self, Changed},
};
use crate::index::{Resources, Snapshot};

/// The service's gRPC name, and its one method's path.
const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const PATH: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
/// The largest request read.
const MAX_REQUEST: usize = 64 << 20;
/// About how much of a response is encoded at a time.
const CHUNK: usize = 64 << 10;
/// `DeltaDiscoveryResponse.resources`.
const RESOURCES_FIELD: u32 = 2;

/// One `DeltaDiscoveryResponse` to send.
#[derive(Debug)]
pub struct Push {
    pub version: String,
    pub type_url: String,
    pub nonce: String,
    pub response: subscription::Response,
}

impl<A: Authenticate> NamedService for Server<A> {
    const NAME: &'static str = SERVICE;
}

impl<A: Authenticate> Service<http::Request<tonic::body::Body>> for Server<A> {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let server = self.clone();
        Box::pin(async move {
            if request.uri().path() != PATH {
                return Ok(
                    Status::unimplemented(format!("{} is not served", request.uri().path())).into_http()
                );
            }
            let (parts, body) = request.into_parts();
            let node =
                match server.authenticator.authenticate(&MetadataMap::from_headers(parts.headers)).await {
                    Ok(node) => node,
                    Err(status) => return Ok(status.into_http()),
                };
            let requests = Requests::new(body);
            let mut response =
                http::Response::new(tonic::body::Body::new(Frames::new(server.open(node, requests))));
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
            Ok(response)
        })
    }
}

/// A stream's requests, read from its body: uncompressed gRPC messages of up to
/// [`MAX_REQUEST`] bytes each. The buffer a large one needed (a reconnecting proxy lists every
/// name it holds) goes once it is read; tonic's `Streaming` keeps it for the stream's life.
pub struct Requests {
    body: tonic::body::Body,
    buffer: BytesMut,
    ended: bool,
}

impl Requests {
    fn new(body: tonic::body::Body) -> Self {
        Self { body, buffer: BytesMut::new(), ended: false }
    }

    /// Ends the stream with `status`.
    fn fail(&mut self, status: Status) -> Poll<Option<Result<DeltaDiscoveryRequest, Status>>> {
        self.ended = true;
        self.buffer = BytesMut::new();
        Poll::Ready(Some(Err(status)))
    }
}

impl Stream for Requests {
    type Item = Result<DeltaDiscoveryRequest, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.buffer.len() >= 5 {
                if this.buffer[0] != 0 {
                    return this.fail(Status::unimplemented("compressed requests are not accepted"));
                }
                let length =
                    u32::from_be_bytes([this.buffer[1], this.buffer[2], this.buffer[3], this.buffer[4]]);
                let length = length as usize;
                if length > MAX_REQUEST {
                    return this.fail(Status::resource_exhausted(format!(
                        "a request of {length} bytes is larger than the {MAX_REQUEST} accepted"
                    )));
                }
                if this.buffer.len() >= 5 + length {
                    this.buffer.advance(5);
                    let decoded = DeltaDiscoveryRequest::decode(&this.buffer[..length]);
                    this.buffer.advance(length);
                    if this.buffer.is_empty() {
                        // Let go of what a large request grew it to.
                        this.buffer = BytesMut::new();
                    }
                    return match decoded {
                        Ok(request) => Poll::Ready(Some(Ok(request))),
                        Err(error) => this.fail(Status::invalid_argument(format!(
                            "a request that does not decode: {error}"
                        ))),
                    };
                }
                // As the message arrives, not all its announced length at once.
                this.buffer.reserve((5 + length - this.buffer.len()).min(CHUNK));
            }
            if this.ended {
                if this.buffer.is_empty() {
                    return Poll::Ready(None);
                }
                return this.fail(Status::invalid_argument("the requests ended inside a message"));
            }
            match ready!(http_body::Body::poll_frame(Pin::new(&mut this.body), cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        this.buffer.extend_from_slice(&data);
                    }
                }
                Some(Err(status)) => return this.fail(status),
                None => this.ended = true,
            }
        }
    }
}

/// A stream's response body: its pushes as gRPC messages, then the status as trailers.
struct Frames {
    pushes: mpsc::Receiver<Result<Push, Status>>,
    encoding: Option<Encoding>,
    ended: bool,
}

impl Frames {
    fn new(pushes: mpsc::Receiver<Result<Push, Status>>) -> Self {
        Self { pushes, encoding: None, ended: false }
    }
}

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        loop {
            if let Some(chunk) = this.encoding.as_mut().and_then(Encoding::next_chunk) {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            this.encoding = None;
            if this.ended {
                return Poll::Ready(None);
            }
            let status = match ready!(this.pushes.poll_recv(cx)) {
                Some(Ok(push)) => match Encoding::new(push) {
                    Ok(encoding) => {
                        this.encoding = Some(encoding);
                        continue;
                    }
                    Err(status) => status,
                },
                Some(Err(status)) => status,
                None => Status::ok(""),
            };
            this.ended = true;
            let mut trailers = http::HeaderMap::new();
            if status.add_header(&mut trailers).is_err() {
                // Only a message that cannot be a header fails: the code alone, then.
                let _ = Status::new(status.code(), "").add_header(&mut trailers);
            }
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
    }
}

/// One push being written out: the gRPC message header and the response's other fields, then
/// each resource as field 2 (an embedded `Resource` is written as its encoded bytes).
struct Encoding {
    head: Option<Vec<u8>>,
    resources: Source,
    /// Bytes not written yet.
    left: usize,
}

/// The resources still to write.
enum Source {
    These(std::vec::IntoIter<Bytes>),
    /// A snapshot's, in order, after the name last written.
    All {
        snapshot: Arc<Snapshot>,
        type_url: String,
        after: Option<String>,
    },
}

impl Encoding {
    fn new(push: Push) -> Result<Self, Status> {
        let fields = DeltaDiscoveryResponse {
            system_version_info: push.version,
            resources: Vec::new(),
            type_url: push.type_url,
            nonce: push.nonce,
            removed_resources: push.response.removed,
        }
        .encode_to_vec();
        let entry = |resource: &Bytes| 1 + encoded_len_varint(resource.len() as u64) + resource.len();
        let (resources, length) = match push.response.resources {
            Changed::These(resources) => {
                let length: usize = resources.iter().map(entry).sum();
                (Source::These(resources.into_iter()), length)
            }
            Changed::All { snapshot, type_url } => {
                let length = all(&snapshot, &type_url)
                    .iter()
                    .map(|(name, resource)| entry(&resource.wire(name)))
                    .sum();
                (Source::All { snapshot, type_url, after: None }, length)
            }
        };
        let length = fields.len() + length;
        let length = u32::try_from(length).map_err(|_| {
            Status::resource_exhausted(format!("a response of {length} bytes is too large for gRPC"))
        })?;
        let mut head = Vec::with_capacity(5 + fields.len());
        head.push(0); // not compressed
        head.extend_from_slice(&length.to_be_bytes());
        head.extend_from_slice(&fields);
        let left = 5 + length as usize;
        Ok(Self { head: Some(head), resources, left })
    }

    /// About the next [`CHUNK`] of the message; `None` once it is all written.
    fn next_chunk(&mut self) -> Option<Bytes> {
        // A small push gets a small buffer; the last call, none.
        let mut chunk = BytesMut::with_capacity(self.left.min(CHUNK));
        if let Some(head) = self.head.take() {
            chunk.put_slice(&head);
        }
        match &mut self.resources {
            Source::These(resources) => {
                while chunk.len() < CHUNK {
                    let Some(resource) = resources.next() else { break };
                    put(&mut chunk, &resource);
                }
            }
            Source::All { snapshot, type_url, after } => {
                let resources = all(snapshot, type_url);
                let rest = match after.as_deref() {
                    Some(after) => resources.range::<str, _>((Bound::Excluded(after), Bound::Unbounded)),
                    None => resources.range::<str, _>(..),
                };
                let mut last = None;
                for (name, resource) in rest {
                    put(&mut chunk, &resource.wire(name));
                    last = Some(name);
                    if chunk.len() >= CHUNK {
                        break;
                    }
                }
                if let Some(last) = last {
                    *after = Some(last.clone());
                }
            }
        }
        self.left = self.left.saturating_sub(chunk.len());
        (!chunk.is_empty()).then(|| chunk.freeze())
    }
}

fn all<'a>(snapshot: &'a Snapshot, type_url: &str) -> &'a Resources {
    snapshot.of_type(type_url).expect("a type the snapshot serves")
}

/// Writes `resource` as an entry of `DeltaDiscoveryResponse.resources`.
fn put(chunk: &mut BytesMut, resource: &Bytes) {
    chunk.reserve(resource.len() + 16);
    encode_key(RESOURCES_FIELD, WireType::LengthDelimited, chunk);
    encode_varint(resource.len() as u64, chunk);
    chunk.put_slice(resource);
}

#[cfg(test)]
mod tests;
