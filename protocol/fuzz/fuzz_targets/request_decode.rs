//! Request frames: decoding, verifying, and decoding the payload must never panic.
#![no_main]

use fedmesh_protocol::codec;
use fedmesh_protocol::message::Request;
use fedmesh_protocol::tensor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((request, payload)) = codec::decode_request(data.to_vec()) else { return };
    let header = codec::encode_request_header(&request, payload.len()).expect("re-encodes");
    let frame = [&header[..], &payload[..]].concat();
    let (again, _) = codec::decode_request(frame).expect("a canonical frame decodes");
    let again = codec::encode_request_header(&again, payload.len()).expect("re-encodes");
    assert_eq!(again, header);
    let verified = match request {
        Request::Delta(m) => {
            m.verify_with_payload(&payload, |_, _| Ok(())).map(|v| v.body().payload)
        }
        Request::Partial(m) => m.verify_with_payload(&payload, |_, _| Ok(())).map(|v| v.body().mean),
        Request::RingChunk(m) => {
            m.verify_with_payload(&payload, |_, _| Ok(())).map(|v| v.body().values)
        }
        Request::Blob { .. } | Request::Jobs | Request::Announcement { .. } => return,
    };
    if let Ok(reference) = verified {
        let _ = tensor::decode_params(&payload, reference.encoding, reference.params as usize);
    }
});
