//! Bytes as lower-case hex and back: trace ids, and the encoded resources a control plane's
//! dump carries (a `weftctl` that decodes them reads exactly what the proxies were sent).

/// `bytes` as lower-case hex, two digits each.
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The bytes [`encode`] wrote (either case); `None` for anything else.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len()).step_by(2).map(|at| u8::from_str_radix(&text[at..at + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_reads_back_what_encode_wrote_and_nothing_else() {
        let bytes = [0x00, 0x0f, 0xa5, 0xff];
        assert_eq!(encode(&bytes), "000fa5ff");
        assert_eq!(decode(&encode(&bytes)).as_deref(), Some(&bytes[..]));
        assert_eq!(decode("0FA5").as_deref(), Some(&[0x0f, 0xa5][..]));
        for bad in ["0", "0g", "zz", "0f0", "é1", "+f", "-1", " f"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
