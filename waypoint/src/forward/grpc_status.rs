//! A gRPC call's status, for its metrics (Istio's `grpc_response_status`): in the response's
//! head when the call was answered at once (trailers only, as the waypoint answers its own
//! errors), else in the trailers that end its body. A call whose status comes last is counted
//! as its body ends, with the status its trailers give (or none if it was cut short) and the
//! bytes its body carried.
use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};

/// gRPC's status codes, as written.
const CODES: [&str; 17] =
    ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16"];

/// The `grpc-status` of `headers`, if it is one of gRPC's codes: a peer cannot make up label
/// values of its own.
pub fn of(headers: &HeaderMap) -> Option<&'static str> {
    let code: usize = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    CODES.get(code).copied()
}

/// The status a gRPC client takes an HTTP answer without one for (gRPC's "HTTP to gRPC status
/// code mapping", as Envoy reports it).
pub fn from_http(status: http::StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "13",
        401 => "16",
        403 => "7",
        404 => "12",
        429 | 502 | 503 | 504 => "14",
        _ => "2",
    }
}

type Count = Box<dyn FnOnce(Option<&'static str>, u64) + Send + Sync>;

/// A response body that hands the call's status and size to its count when it ends, or is
/// dropped before.
pub struct CountedAtEnd<B> {
    inner: B,
    count: Option<Count>,
    /// Bytes of the body passed on so far.
    carried: u64,
}

impl<B> CountedAtEnd<B> {
    pub fn new(inner: B, count: impl FnOnce(Option<&'static str>, u64) + Send + Sync + 'static) -> Self {
        Self { inner, count: Some(Box::new(count)), carried: 0 }
    }

    fn counted(&mut self, status: Option<&'static str>) {
        if let Some(count) = self.count.take() {
            count(status, self.carried);
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for CountedAtEnd<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.carried += data.len() as u64;
                }
                if let Some(trailers) = frame.trailers_ref() {
                    this.counted(of(trailers));
                }
            }
            Some(Err(_)) | None => this.counted(None),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for CountedAtEnd<B> {
    fn drop(&mut self) {
        self.counted(None);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        convert::Infallible,
        sync::{Arc, Mutex},
    };

    use http_body_util::BodyExt;

    use super::*;

    /// A body of these frames.
    struct Frames(VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.get_mut().0.pop_front().map(Ok))
        }
    }

    /// The statuses and sizes a count was given.
    type Counts = Arc<Mutex<Vec<(Option<String>, u64)>>>;

    /// A call's body: a message, then trailers with `status` if any; and what its count got.
    fn call(status: Option<&'static str>) -> (CountedAtEnd<Frames>, Counts) {
        let mut frames = VecDeque::from([Frame::data(Bytes::from_static(b"\0\0\0\0\0"))]);
        if let Some(status) = status {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", status.parse().expect("a header value"));
            frames.push_back(Frame::trailers(trailers));
        }
        let counts = Arc::new(Mutex::new(Vec::new()));
        let seen = counts.clone();
        let body = CountedAtEnd::new(Frames(frames), move |status: Option<&'static str>, carried| {
            seen.lock().expect("counts").push((status.map(str::to_owned), carried));
        });
        (body, counts)
    }

    #[tokio::test]
    async fn a_call_is_counted_once_with_the_status_of_its_trailers() {
        let (body, counts) = call(Some("5"));
        let collected = body.collect().await.expect("a body");
        assert_eq!(collected.trailers().and_then(of), Some("5"), "the trailers pass on");
        assert_eq!(*counts.lock().expect("counts"), [(Some("5".to_owned()), 5)]);
    }

    #[test]
    fn only_grpcs_codes_are_taken_and_an_http_answer_is_mapped_as_grpc_maps_it() {
        let headers = |value: &str| {
            HeaderMap::from_iter([(
                http::header::HeaderName::from_static("grpc-status"),
                value.parse().expect("a value"),
            )])
        };
        assert_eq!(of(&headers("14")), Some("14"));
        assert_eq!(of(&headers("0")), Some("0"));
        for made_up in ["17", "-1", "x", "014a", ""] {
            assert_eq!(of(&headers(made_up)), None, "{made_up:?}");
        }
        assert_eq!(from_http(http::StatusCode::SERVICE_UNAVAILABLE), "14");
        assert_eq!(from_http(http::StatusCode::FORBIDDEN), "7");
        assert_eq!(from_http(http::StatusCode::INTERNAL_SERVER_ERROR), "2");
    }

    #[tokio::test]
    async fn a_call_without_trailers_or_cut_short_is_counted_once_without_a_status() {
        let (body, counts) = call(None);
        body.collect().await.expect("a body");
        assert_eq!(*counts.lock().expect("counts"), [(None, 5)]);

        let (mut body, counts) = call(Some("0"));
        body.frame().await.expect("a frame").expect("data");
        drop(body);
        assert_eq!(*counts.lock().expect("counts"), [(None, 5)], "dropped before its trailers");
    }
}
