//! Response frames, and tensor payload decoding in every encoding, must never panic.
#![no_main]

use fedmesh_protocol::codec;
use fedmesh_protocol::message::Response;
use fedmesh_protocol::tensor::{self, TensorEncoding};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((response, payload)) = codec::decode_response(data.to_vec()) {
        let header = codec::encode_response_header(&response, payload.len()).expect("re-encodes");
        let frame = [&header[..], &payload[..]].concat();
        let (again, _) = codec::decode_response(frame).expect("a canonical frame decodes");
        let again = codec::encode_response_header(&again, payload.len()).expect("re-encodes");
        assert_eq!(again, header);
        if let Response::Announcement(announcement) = response {
            let _ = announcement.verify_announcement();
        }
    }
    // The same bytes as a payload, against a parameter count taken from the first byte.
    let expected = data.first().map_or(0, |b| usize::from(*b));
    for encoding in [TensorEncoding::F32Le, TensorEncoding::F16Le, TensorEncoding::Int8] {
        let _ = tensor::decode_params(data, encoding, expected);
    }
});
