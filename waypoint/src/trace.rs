//! Distributed tracing of the requests the waypoint handles, when a collector is configured
//! (`--otlp-endpoint`; off by default, and then nothing here runs). A request's W3C
//! `traceparent` is read — its sampled flag decides, as Envoy's does — or, missing or malformed, a
//! trace begins, sampled for `--trace-sampling` percent of requests (Istio's default: 1). What
//! the request meets at the waypoint (policies, routes) sees the client's headers; as it goes on
//! ([`Span::propagate`]) its `traceparent` names the waypoint's span as parent, its `tracestate`
//! untouched (dropped with a trace begun anew, as W3C asks). A sampled request's span — one per
//! request, retries included, with its route, status and both ends' identities — is exported
//! over OTLP ([`otlp`]).
use std::time::SystemTime;

use http::{HeaderMap, HeaderValue};
use weft_api::otlp::{self as proto, KeyValue};
use weft_proxy::trace_context::SpanContext;

pub mod otlp;

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// A `tracestate` longer than this, or of more members, is not kept with the span (W3C's
/// limits: a hop may drop it whole). It still goes on as it came.
const MAX_TRACE_STATE: usize = 512;
const MAX_TRACE_STATE_MEMBERS: usize = 32;

/// What tracing needs to be on, as an operator writes it.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The collector's OTLP/gRPC address: `http://host:port`, or `host:port`.
    pub endpoint: String,
    /// The share of new traces sampled, in percent (`1`, `0.5`, `100%`).
    pub sampling: String,
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

impl Span {
    /// Writes the request's onward trace context into `headers`: the waypoint's span as the
    /// parent; a trace begun here has no `tracestate`.
    pub fn propagate(&self, headers: &mut HeaderMap) {
        if self.parent.is_none() {
            headers.remove(TRACESTATE);
        }
        let value = HeaderValue::try_from(self.context.to_string()).expect("a traceparent is ASCII");
        headers.insert(TRACEPARENT, value);
    }
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
    #[error("trace sampling {0:?}: a percentage, 0 to 100")]
    Sampling(String),
}

impl Tracer {
    /// Tracing to `settings`' collector, every span under `resource`; `counters` count what
    /// becomes of them. Within a Tokio runtime.
    pub fn start(
        settings: &Settings,
        resource: proto::Resource,
        counters: otlp::Counters,
    ) -> Result<Self, Error> {
        let written = settings.sampling.trim();
        let percent = written
            .strip_suffix('%')
            .unwrap_or(written)
            .trim_end()
            .parse::<f64>()
            .ok()
            .filter(|percent| (0.0..=100.0).contains(percent))
            .ok_or_else(|| Error::Sampling(settings.sampling.clone()))?;
        Ok(Self {
            exporter: otlp::Exporter::start(&settings.endpoint, resource, counters)?,
            sampled_per_million: (percent * 10_000.0).round() as u32,
        })
    }

    /// Begins the span of a request with `headers`: the child of its `traceparent`'s, or a
    /// new trace's first.
    pub fn start_span(&self, headers: &HeaderMap) -> Span {
        let mut parents = headers.get_all(TRACEPARENT).iter();
        let parent = match (parents.next(), parents.next()) {
            (Some(value), None) => SpanContext::parse(value.as_bytes()),
            // Two are as malformed as a bad one.
            _ => None,
        };
        let context = match parent {
            Some(parent) => parent.child(),
            None => SpanContext::root(fastrand::u32(..1_000_000) < self.sampled_per_million),
        };
        // Several `tracestate` fields are one list (W3C), kept only for a span that is exported.
        let trace_state = match (&parent, context.sampled) {
            (Some(_), true) => {
                let members: Vec<&str> =
                    headers.get_all(TRACESTATE).iter().filter_map(|value| value.to_str().ok()).collect();
                let joined = members.join(",");
                let within = joined.len() <= MAX_TRACE_STATE
                    && joined.split(',').filter(|member| !member.trim().is_empty()).count()
                        <= MAX_TRACE_STATE_MEMBERS;
                if within { joined } else { String::new() }
            }
            _ => String::new(),
        };
        Span { context, parent: parent.map(|parent| parent.span_id), trace_state, started: SystemTime::now() }
    }

    /// Exports the spans ended so far, waiting at most `within`.
    pub async fn flush(&self, within: std::time::Duration) {
        self.exporter.flush(within).await;
    }

    /// Ends `span`; a sampled one is exported with what `finished` says of its request.
    pub fn finish(&self, span: Span, finished: impl FnOnce() -> Finished) {
        if !span.context.sampled {
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
            flags: u32::from(span.context.sampled),
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

    fn tracer(sampling: &str) -> Tracer {
        let settings = Settings { endpoint: "http://127.0.0.1:9".into(), sampling: sampling.into() };
        Tracer::start(&settings, proto::Resource::default(), otlp::Counters::default()).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (http::HeaderName::from_static(name), value.parse().unwrap()))
            .collect()
    }

    /// The span begun for `sent`, and the headers the request goes on with.
    fn onward(tracer: &Tracer, sent: &HeaderMap) -> (Span, HeaderMap) {
        let span = tracer.start_span(sent);
        let mut headers = sent.clone();
        span.propagate(&mut headers);
        (span, headers)
    }

    #[tokio::test]
    async fn a_request_goes_on_as_the_child_of_the_waypoints_span_and_its_sampled_flag_decides() {
        let tracer = tracer("0");
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sent = headers(&[(TRACEPARENT, incoming), (TRACESTATE, "a=1"), (TRACESTATE, "b=2")]);
        let (span, next_headers) = onward(&tracer, &sent);
        let client = SpanContext::parse(incoming.as_bytes()).unwrap();
        let next = SpanContext::parse(next_headers[TRACEPARENT].as_bytes()).unwrap();
        assert_eq!(next, span.context);
        assert_eq!((next.trace_id, span.parent), (client.trace_id, Some(client.span_id)));
        assert!(next.sampled, "the client's decision, whatever the waypoint's own rate");
        assert_eq!(span.trace_state, "a=1,b=2");
        let state: Vec<_> = next_headers.get_all(TRACESTATE).iter().collect();
        assert_eq!(state, ["a=1", "b=2"], "untouched");

        let unsampled = headers(&[(TRACEPARENT, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")]);
        assert!(!tracer.start_span(&unsampled).context.sampled);
    }

    #[tokio::test]
    async fn a_missing_or_malformed_traceparent_begins_a_trace_sampled_at_the_waypoints_rate() {
        let (never, always) = (tracer("0"), tracer("100%"));
        let malformed = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        for sent in [
            vec![],
            vec![(TRACEPARENT, malformed), (TRACESTATE, "a=1")],
            vec![(TRACEPARENT, good), (TRACEPARENT, good)],
        ] {
            for (tracer, sampled) in [(&never, false), (&always, true)] {
                let (span, next) = onward(tracer, &headers(&sent));
                assert_eq!((span.parent, span.context.sampled), (None, sampled), "{sent:?}");
                assert_eq!(next.get_all(TRACEPARENT).iter().count(), 1);
                assert_eq!(SpanContext::parse(next[TRACEPARENT].as_bytes()), Some(span.context));
                assert!(next.get(TRACESTATE).is_none(), "a new trace has no state: {sent:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_trace_state_beyond_w3cs_limits_is_not_kept_but_still_goes_on() {
        let tracer = tracer("0");
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let long = format!("a={}", "x".repeat(MAX_TRACE_STATE));
        let many = (0..=MAX_TRACE_STATE_MEMBERS).map(|at| format!("k{at}=v")).collect::<Vec<_>>().join(",");
        for state in [long, many] {
            let (span, next) = onward(&tracer, &headers(&[(TRACEPARENT, parent), (TRACESTATE, &state)]));
            assert_eq!(span.trace_state, "");
            assert_eq!(next[TRACESTATE], state.as_str());
        }
    }

    #[tokio::test]
    async fn sampling_is_a_percentage() {
        for bad in ["-1", "100.5", "NaN", "one", "", "5%%"] {
            let settings = Settings { endpoint: "http://127.0.0.1:9".into(), sampling: bad.into() };
            let refused = Tracer::start(&settings, proto::Resource::default(), otlp::Counters::default());
            assert!(matches!(refused, Err(Error::Sampling(_))), "{bad}");
        }
        for (written, per_million) in [("1", 10_000), (" 0.5 % ", 5_000), ("100", 1_000_000)] {
            assert_eq!(tracer(written).sampled_per_million, per_million, "{written:?}");
        }
    }
}
