//! Response frames, and tensor payloads in every encoding, must never panic.
//! The checks are `fedmesh_protocol::fuzzing::response_decode`;
//! `protocol/tests/fuzz_corpora.rs` runs them on stable Rust over
//! `corpus/response_decode` and inputs generated from it.
#![no_main]

use fedmesh_protocol::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzzing::response_decode(data).expect("a property of response_decode does not hold");
});
