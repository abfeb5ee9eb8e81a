//! Request frames: decoding, re-encoding, verifying and decoding the payload must never panic.
//! The checks are `fedmesh_protocol::fuzzing::request_decode`;
//! `protocol/tests/fuzz_corpora.rs` runs them on stable Rust over
//! `corpus/request_decode` and inputs generated from it.
#![no_main]

use fedmesh_protocol::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzzing::request_decode(data).expect("a property of request_decode does not hold");
});
