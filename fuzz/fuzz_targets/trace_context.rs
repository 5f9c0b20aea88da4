//! W3C `traceparent` values as any client sends them to a waypoint: one that parses prints as
//! a version 00 value that parses back to the same context — the very input, when that was
//! version 00 with no flag but `sampled`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_proxy::trace_context::SpanContext;

fuzz_target!(|data: &[u8]| {
    let Some(context) = SpanContext::parse(data) else { return };
    let printed = context.to_string();
    assert_eq!(SpanContext::parse(printed.as_bytes()), Some(context), "{printed}");
    if data.starts_with(b"00-") && (data.ends_with(b"-00") || data.ends_with(b"-01")) {
        assert_eq!(printed.as_bytes(), data, "a version 00 value prints as it came");
    }
});
