//! Gossip frames: decoding, and verifying whatever decodes, must never panic.
#![no_main]

use fedmesh_protocol::codec;
use fedmesh_protocol::message::GossipMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = codec::decode_gossip(data) else { return };
    // Whatever decodes re-encodes canonically, and the canonical form is stable.
    let frame = codec::encode_gossip(&message).expect("a decoded message re-encodes");
    let again = codec::decode_gossip(&frame).expect("a canonical frame decodes");
    assert_eq!(codec::encode_gossip(&again).expect("re-encodes"), frame);
    let _ = match message {
        GossipMessage::Announce(m) => m.verify_announcement().map(drop),
        GossipMessage::Join(m) => m.verify(|_, _| Ok(())).map(drop),
        GossipMessage::Leave(m) => m.verify(|_, _| Ok(())).map(drop),
        GossipMessage::Heartbeat(m) => m.verify(|_, _| Ok(())).map(drop),
        GossipMessage::RoundOpen(m) => m.verify(|_, _| Ok(())).map(drop),
        GossipMessage::Assignment(m) => m.verify(|_, _| Ok(())).map(drop),
        GossipMessage::AggregateReady(m) => m.verify(|_, _| Ok(())).map(drop),
        GossipMessage::EvalReport(m) => m.verify(|_, _| Ok(())).map(drop),
    };
});
