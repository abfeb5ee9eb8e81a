//! Key file text: parsing must never panic, and an accepted key file is written back the same.
//! The checks are `fedmesh_protocol::fuzzing::key_file`; `protocol/tests/fuzz_corpora.rs` runs
//! them on stable Rust over `corpus/key_file` and inputs generated from it.
#![no_main]

use fedmesh_protocol::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzzing::key_file(data).expect("a property of key_file does not hold");
});
