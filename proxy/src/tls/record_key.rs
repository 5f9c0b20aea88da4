//! One direction's key for HBONE's TLS 1.3 records (RFC 8446 §5.2–5.3): seals or opens a record
//! with ring's AEAD. rustls's handshake stays on aws-lc-rs (the workspace's provider, which has
//! the hybrid post-quantum group); only the records' bulk AEAD is ring's. ring has an AES-GCM
//! code path for VAES with AVX2, aws-lc's VAES path needs AVX-512: on a CPU with the first and
//! not the second (this project's 2-core AMD EPYC) ring's seals and opens about twice as many
//! bytes per second (4.7–6.3 against 2.3–3.4 GB/s for 16 KiB records, both AES key sizes;
//! ChaCha20-Poly1305 the same in both), and AES-GCM was half of what the records cost. Both
//! proxies' CPU per GB moved fell by 13 % (README, Performance).
//!
//! rustls's own encrypter could not be used past the handover anyway: it seals with aws-lc's
//! TLS 1.3 mode, which takes the first nonce it sees for sequence number 0 and then refuses any
//! whose XOR distance from it does not grow, while a server's first record here is its third
//! (two session tickets went before).
use std::io;

use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use rustls::{
    AlertDescription, ConnectionTrafficSecrets, ContentType,
    crypto::cipher::{Iv, OutboundChunks},
};

use super::records::protocol_error;

/// The AEAD tag every suite of TLS 1.3 appends.
pub(super) const TAG: usize = 16;
/// The most plaintext one record carries (RFC 8446 §5.1).
pub(super) const MAX_FRAGMENT: usize = 16 * 1024;

pub(super) struct RecordKey {
    key: LessSafeKey,
    iv: Iv,
}

/// Why a record did not open, and the alert that says so (RFC 8446 §5.2, §5.4).
#[derive(Debug)]
pub(super) struct OpenError {
    pub alert: AlertDescription,
    pub what: &'static str,
}

impl RecordKey {
    /// A direction's key; an error for secrets of a suite HBONE's configuration never offers
    /// (the enum is non-exhaustive).
    pub fn new(secrets: ConnectionTrafficSecrets) -> io::Result<Self> {
        let (algorithm, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&CHACHA20_POLY1305, key, iv),
            _ => return Err(protocol_error("a cipher suite HBONE's configuration never offers")),
        };
        let key = UnboundKey::new(algorithm, key.as_ref())
            .map_err(|_| protocol_error("a key of the wrong length"))?;
        Ok(Self { key: LessSafeKey::new(key), iv })
    }

    fn nonce(&self, seq: u64) -> Nonce {
        Nonce::assume_unique_for_key(rustls::crypto::cipher::Nonce::new(&self.iv, seq).0)
    }

    /// Appends `record` of `typ` to `out`, sealed as record `seq`.
    pub fn seal(
        &self,
        typ: ContentType,
        record: &OutboundChunks<'_>,
        seq: u64,
        out: &mut Vec<u8>,
    ) -> io::Result<()> {
        let body = u16::try_from(record.len() + 1 + TAG).expect("invariant: a record is at most 16 KiB");
        let [high, low] = body.to_be_bytes();
        let header = [u8::from(ContentType::ApplicationData), 3, 3, high, low];
        out.extend_from_slice(&header);
        let start = out.len();
        record.copy_to_vec(out);
        out.push(u8::from(typ));
        let tag = self
            .key
            .seal_in_place_separate_tag(self.nonce(seq), Aad::from(header), &mut out[start..])
            .map_err(|_| protocol_error("sealing a record failed"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Opens record `seq` in place: `header` as it arrived (it is the AEAD's additional data),
    /// `body` the rest. Returns the inner content type and the plaintext's length, from
    /// `body`'s start.
    pub fn open(
        &self,
        seq: u64,
        header: [u8; 5],
        body: &mut [u8],
    ) -> Result<(ContentType, usize), OpenError> {
        if body.len() < TAG {
            return Err(OpenError {
                alert: AlertDescription::BadRecordMac,
                what: "a record shorter than its tag",
            });
        }
        let plain = self.key.open_in_place(self.nonce(seq), Aad::from(header), body).map_err(|_| {
            OpenError { alert: AlertDescription::BadRecordMac, what: "a record that did not decrypt" }
        })?;
        // TLSInnerPlaintext: the content, its type, then zeros (RFC 8446 §5.2).
        if plain.len() > MAX_FRAGMENT + 1 {
            return Err(OpenError {
                alert: AlertDescription::RecordOverflow,
                what: "a record's plaintext too long",
            });
        }
        let Some(typ_at) = plain.iter().rposition(|&byte| byte != 0) else {
            return Err(OpenError {
                alert: AlertDescription::UnexpectedMessage,
                what: "a record's plaintext without a content type",
            });
        };
        Ok((ContentType::from(plain[typ_at]), typ_at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    fn key() -> RecordKey {
        let iv = Iv::new([9; 12]);
        RecordKey::new(ConnectionTrafficSecrets::Aes256Gcm { key: KEY.into(), iv }).unwrap()
    }

    /// A record of `inner` (TLSInnerPlaintext: content, type, padding) sealed by a peer that
    /// pads, which ours never does.
    fn peer_record(seq: u64, inner: &[u8]) -> ([u8; 5], Vec<u8>) {
        let [high, low] = u16::try_from(inner.len() + TAG).unwrap().to_be_bytes();
        let header = [23, 3, 3, high, low];
        let sealing = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &KEY).unwrap());
        let mut body = inner.to_vec();
        let nonce = rustls::crypto::cipher::Nonce::new(&Iv::new([9; 12]), seq).0;
        sealing
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(header), &mut body)
            .unwrap();
        (header, body)
    }

    #[test]
    fn what_is_sealed_opens_under_its_own_sequence_number_only() {
        let key = key();
        let mut out = Vec::new();
        key.seal(ContentType::Handshake, &OutboundChunks::Single(b"ticket"), 5, &mut out).unwrap();
        let header: [u8; 5] = out[..5].try_into().unwrap();
        let mut body = out[5..].to_vec();
        let error = key.open(6, header, &mut body.clone()).unwrap_err();
        assert_eq!(error.alert, AlertDescription::BadRecordMac);
        let (typ, len) = key.open(5, header, &mut body).unwrap();
        assert_eq!((typ, &body[..len]), (ContentType::Handshake, &b"ticket"[..]));
    }

    #[test]
    fn a_padded_record_opens_to_its_content_and_type() {
        let mut inner = b"hello".to_vec();
        inner.push(u8::from(ContentType::ApplicationData));
        inner.extend_from_slice(&[0; 300]);
        let (header, mut body) = peer_record(0, &inner);
        let (typ, len) = key().open(0, header, &mut body).unwrap();
        assert_eq!((typ, &body[..len]), (ContentType::ApplicationData, &b"hello"[..]));
    }

    #[test]
    fn a_record_of_padding_only_or_too_much_plaintext_is_refused_with_the_alert_for_it() {
        let (header, mut body) = peer_record(0, &[0; 40]);
        assert_eq!(key().open(0, header, &mut body).unwrap_err().alert, AlertDescription::UnexpectedMessage);
        let mut inner = vec![1; MAX_FRAGMENT + 1];
        inner.push(u8::from(ContentType::ApplicationData));
        let (header, mut body) = peer_record(0, &inner);
        assert_eq!(key().open(0, header, &mut body).unwrap_err().alert, AlertDescription::RecordOverflow);
        let mut short = [0; TAG - 1];
        assert_eq!(key().open(0, header, &mut short).unwrap_err().alert, AlertDescription::BadRecordMac);
    }
}
