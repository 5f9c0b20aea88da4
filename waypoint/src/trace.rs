//! Distributed tracing of the requests the waypoint handles, when a collector is configured
//! (`--otlp-endpoint`; off by default, and then nothing here runs). A request's W3C
//! `traceparent` is read — its sampled flag decides, as Envoy's does — or, missing or malformed, a
//! trace begins, sampled for `--trace-sampling` percent of requests (Istio's default: 1); the
//! request goes on with the waypoint's own span as its parent, `tracestate` untouched (dropped
//! with a malformed `traceparent`, as W3C asks). A sampled request's span — one per request,
//! retries included, with its route, status and both ends' identities — is exported over OTLP
//! ([`otlp`]).
use std::time::SystemTime;

use http::{HeaderMap, HeaderValue};
use weft_api::otlp::{self as proto, KeyValue};
use weft_proxy::trace_context::SpanContext;

pub mod otlp;

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// What tracing needs to be on.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The collector, `http://host:port` (OTLP/gRPC).
    pub endpoint: String,
    /// The share of new traces sampled, in percent.
    pub sampling_percent: f64,
}

/// Starts and ends the waypoint's request spans.
#[derive(Debug)]
pub struct Tracer {
    exporter: otlp::Exporter,
    /// Of a million new traces, how many are sampled.
    sampled_per_million: u32,
}

/// A request's span, from its head to its answer's.
#[derive(Debug)]
pub struct Span {
    context: SpanContext,
    /// The client's span, when it sent one.
    parent: Option<[u8; 8]>,
    trace_state: String,
    started: SystemTime,
}

/// What a request's span says of it once answered.
#[derive(Debug)]
pub struct Finished {
    /// Istio's operation name: `<host>:<port>/*`.
    pub name: String,
    pub status: u16,
    /// The waypoint's own reason for a 5xx it answered itself.
    pub error: Option<String>,
    pub attributes: Vec<KeyValue>,
}

/// Why tracing cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Exporter(#[from] otlp::Error),
    #[error("trace sampling {0}: a percentage, 0 to 100")]
    Sampling(f64),
}

impl Tracer {
    /// Tracing to `settings`' collector, every span under `resource`; `counters` count what
    /// becomes of them. Within a Tokio runtime.
    pub fn start(
        settings: &Settings,
        resource: proto::Resource,
        counters: otlp::Counters,
    ) -> Result<Self, Error> {
        let percent = settings.sampling_percent;
        if !(0.0..=100.0).contains(&percent) {
            return Err(Error::Sampling(percent));
        }
        Ok(Self {
            exporter: otlp::Exporter::start(&settings.endpoint, resource, counters)?,
            sampled_per_million: (percent * 10_000.0).round() as u32,
        })
    }

    /// Begins the span of a request with `headers`, whose `traceparent` becomes the span's.
    pub fn start_span(&self, headers: &mut HeaderMap) -> Span {
        let mut parents = headers.get_all(TRACEPARENT).iter();
        let parent = match (parents.next(), parents.next()) {
            (Some(value), None) => SpanContext::parse(value.as_bytes()),
            // Two are as malformed as a bad one.
            _ => None,
        };
        let context = match parent {
            Some(parent) => parent.child(),
            None => {
                headers.remove(TRACESTATE);
                SpanContext::root(fastrand::u32(..1_000_000) < self.sampled_per_million)
            }
        };
        // Several `tracestate` fields are one list (W3C), kept only for a span that is exported.
        let trace_state = match context.sampled() {
            true => headers
                .get_all(TRACESTATE)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .collect::<Vec<_>>()
                .join(","),
            false => String::new(),
        };
        let value = HeaderValue::try_from(context.to_string()).expect("a traceparent is ASCII");
        headers.insert(TRACEPARENT, value);
        Span { context, parent: parent.map(|parent| parent.span_id), trace_state, started: SystemTime::now() }
    }

    /// Ends `span`; a sampled one is exported with what `finished` says of its request.
    pub fn finish(&self, span: Span, finished: impl FnOnce() -> Finished) {
        if !span.context.sampled() {
            return;
        }
        let Finished { name, status, error, attributes } = finished();
        let nanos = |time: SystemTime| {
            time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.as_nanos() as u64)
        };
        // A server span's error is a 5xx (OpenTelemetry's HTTP conventions): a 4xx is the
        // client's.
        let status = match status >= 500 {
            true => proto::Status {
                message: error.unwrap_or_default(),
                code: proto::status::StatusCode::Error.into(),
            },
            false => proto::Status::default(),
        };
        self.exporter.export(proto::Span {
            trace_id: span.context.trace_id.to_vec(),
            span_id: span.context.span_id.to_vec(),
            trace_state: span.trace_state,
            parent_span_id: span.parent.map(|id| id.to_vec()).unwrap_or_default(),
            flags: u32::from(span.context.flags),
            name,
            kind: proto::span::SpanKind::Server.into(),
            start_time_unix_nano: nanos(span.started),
            end_time_unix_nano: nanos(SystemTime::now()),
            attributes,
            dropped_attributes_count: 0,
            status: Some(status),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracer(sampling_percent: f64) -> Tracer {
        let counters = otlp::Counters::default();
        let settings = Settings { endpoint: "http://127.0.0.1:9".into(), sampling_percent };
        Tracer::start(&settings, proto::Resource::default(), counters).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (http::HeaderName::from_static(name), value.parse().unwrap()))
            .collect()
    }

    #[tokio::test]
    async fn a_request_goes_on_as_the_child_of_the_waypoints_span_and_its_sampled_flag_decides() {
        let tracer = tracer(0.0);
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut sent = headers(&[(TRACEPARENT, incoming), (TRACESTATE, "a=1"), (TRACESTATE, "b=2")]);
        let span = tracer.start_span(&mut sent);
        let onward = SpanContext::parse(sent[TRACEPARENT].as_bytes()).unwrap();
        assert_eq!(onward, span.context);
        assert_eq!(onward.trace_id, SpanContext::parse(incoming.as_bytes()).unwrap().trace_id);
        assert!(onward.sampled(), "the client's decision, whatever the waypoint's own rate");
        assert_eq!(span.parent, Some(SpanContext::parse(incoming.as_bytes()).unwrap().span_id));
        assert_eq!(span.trace_state, "a=1,b=2");
        assert_eq!(sent.get_all(TRACESTATE).iter().count(), 2, "passed on untouched");

        let mut unsampled =
            headers(&[(TRACEPARENT, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")]);
        assert!(!tracer.start_span(&mut unsampled).context.sampled());
    }

    #[tokio::test]
    async fn a_missing_or_malformed_traceparent_begins_a_trace_sampled_at_the_waypoints_rate() {
        let (never, always) = (tracer(0.0), tracer(100.0));
        let malformed = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        for sent in [
            vec![],
            vec![(TRACEPARENT, malformed), (TRACESTATE, "a=1")],
            vec![(TRACEPARENT, good), (TRACEPARENT, good)],
        ] {
            for (tracer, sampled) in [(&never, false), (&always, true)] {
                let mut headers = headers(&sent);
                let span = tracer.start_span(&mut headers);
                assert_eq!((span.parent, span.context.sampled()), (None, sampled), "{sent:?}");
                assert_eq!(headers.get_all(TRACEPARENT).iter().count(), 1);
                assert_eq!(SpanContext::parse(headers[TRACEPARENT].as_bytes()), Some(span.context));
                assert!(headers.get(TRACESTATE).is_none(), "a new trace has no state: {sent:?}");
            }
        }
    }

    #[tokio::test]
    async fn sampling_is_a_percentage() {
        let counters = otlp::Counters::default();
        for bad in [-1.0, 100.5, f64::NAN] {
            let settings = Settings { endpoint: "http://127.0.0.1:9".into(), sampling_percent: bad };
            let refused = Tracer::start(&settings, proto::Resource::default(), counters.clone());
            assert!(matches!(refused, Err(Error::Sampling(_))), "{bad}");
        }
        assert_eq!(tracer(1.0).sampled_per_million, 10_000);
    }
}
