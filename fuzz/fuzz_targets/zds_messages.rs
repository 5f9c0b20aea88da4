//! ZDS messages (the agent's pod enrollments, the node proxy's answers) as a peer on the
//! socket could send them: what decodes encodes back to the same message. Input: one byte
//! that chooses the message, then its protobuf encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use weft_api::zds::{WorkloadRequest, WorkloadResponse, ZdsHello};

fn round_trip<M: Message + Default + PartialEq>(bytes: &[u8]) {
    if let Ok(message) = M::decode(bytes) {
        let again = M::decode(message.encode_to_vec().as_slice()).expect("an encoded message decodes");
        assert!(again == message, "a message survives encoding");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else { return };
    match kind % 3 {
        0 => round_trip::<WorkloadRequest>(bytes),
        1 => round_trip::<WorkloadResponse>(bytes),
        _ => round_trip::<ZdsHello>(bytes),
    }
});
