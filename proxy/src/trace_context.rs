//! W3C Trace Context (`traceparent`): read from a request, a child made for the next hop,
//! written back. Version 00's layout, `00-<trace id: 32 hex>-<parent id: 16 hex>-<flags: 2 hex>`,
//! lower case only; a later version is read by its first four fields, as the recommendation
//! asks, and passed on as 00; of the flags only `sampled` is kept. Inputs: header values from anyone. Non-goals: `tracestate`, which
//! a hop passes on untouched.
use std::fmt;

/// One span's place in a trace: what a `traceparent` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The one flag Trace Context Level 1 defines: the trace is recorded. It asks a hop to
    /// pass the others on as zeros: they are not kept.
    pub sampled: bool,
}

/// The length of a version 00 `traceparent`.
const LENGTH: usize = 55;

impl SpanContext {
    /// The first span of a new trace: random, non-zero ids.
    pub fn root(sampled: bool) -> Self {
        let trace_id = loop {
            let id = fastrand::u128(..);
            if id != 0 {
                break id.to_be_bytes();
            }
        };
        Self { trace_id, span_id: span_id(), sampled }
    }

    /// A span of this one's trace whose parent it is: same trace and flag, a new id.
    pub fn child(&self) -> Self {
        Self { span_id: span_id(), ..*self }
    }

    /// A `traceparent` value; `None` unless it is well formed (version ff, an all-zero id,
    /// upper-case hex and a version 00 of another length are not).
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() < LENGTH || (value.len() > LENGTH && value[LENGTH] != b'-') {
            return None;
        }
        let field = |from: usize, to: usize| -> Option<&[u8]> {
            let field = &value[from..to];
            field.iter().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f')).then_some(field)
        };
        let version = field(0, 2)?;
        if version == b"ff" || (version == b"00" && value.len() != LENGTH) {
            return None;
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let mut context = Self { trace_id: [0; 16], span_id: [0; 8], sampled: false };
        decode(field(3, 35)?, &mut context.trace_id);
        decode(field(36, 52)?, &mut context.span_id);
        let mut flags = [0];
        decode(field(53, 55)?, &mut flags);
        context.sampled = flags[0] & 0x01 != 0;
        let zero = |id: &[u8]| id.iter().all(|byte| *byte == 0);
        (!zero(&context.trace_id) && !zero(&context.span_id)).then_some(context)
    }
}

/// The `traceparent` value, version 00.
impl fmt::Display for SpanContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("00-")?;
        self.trace_id.iter().try_for_each(|byte| write!(f, "{byte:02x}"))?;
        f.write_str("-")?;
        self.span_id.iter().try_for_each(|byte| write!(f, "{byte:02x}"))?;
        write!(f, "-{:02x}", u8::from(self.sampled))
    }
}

fn span_id() -> [u8; 8] {
    loop {
        let id = fastrand::u64(..);
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// Lower-case hex digits (checked by the caller) into `into`, two per byte.
fn decode(hex: &[u8], into: &mut [u8]) {
    let digit = |byte: u8| if byte.is_ascii_digit() { byte - b'0' } else { byte - b'a' + 10 };
    for (at, byte) in into.iter_mut().enumerate() {
        *byte = digit(hex[2 * at]) << 4 | digit(hex[2 * at + 1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_recommendations_example_reads_back_as_it_was_written() {
        let context = SpanContext::parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(context.trace_id[..4], [0x4b, 0xf9, 0x2f, 0x35]);
        assert_eq!(context.span_id[7], 0xb7);
        assert!(context.sampled);
        assert_eq!(context.to_string(), EXAMPLE);
        let child = context.child();
        assert_eq!((child.trace_id, child.sampled), (context.trace_id, context.sampled));
        assert_ne!(child.span_id, context.span_id);
        assert!(
            !SpanContext::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap().sampled
        );
        // Flags Level 1 does not define go on as zeros.
        let flagged = SpanContext::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff").unwrap();
        assert!(flagged.sampled);
        assert_eq!(flagged.child().to_string()[53..], *"01");
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields_and_passed_on_as_00() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        let context = SpanContext::parse(later.as_bytes()).unwrap();
        assert_eq!(context.to_string(), EXAMPLE);
        assert!(SpanContext::parse(&later.as_bytes()[..LENGTH]).is_some());
    }

    #[test]
    fn malformed_values_are_refused() {
        for bad in [
            "",
            "00",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-é",
        ] {
            assert_eq!(SpanContext::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn a_root_has_non_zero_ids_and_says_whether_it_is_sampled() {
        for sampled in [true, false] {
            let root = SpanContext::root(sampled);
            assert_eq!(root.sampled, sampled);
            assert_eq!(SpanContext::parse(root.to_string().as_bytes()), Some(root));
        }
    }
}
