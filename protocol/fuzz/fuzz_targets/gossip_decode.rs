//! Gossip frames: decoding, re-encoding and verifying must never panic.
//! The checks are `fedmesh_protocol::fuzzing::gossip_decode`; `protocol/tests/fuzz_corpora.rs` runs
//! them on stable Rust over `corpus/gossip_decode` and inputs generated from it.
#![no_main]

use fedmesh_protocol::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzzing::gossip_decode(data).expect("a property of gossip_decode does not hold");
});
