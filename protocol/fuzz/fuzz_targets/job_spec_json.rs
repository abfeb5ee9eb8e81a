//! Job spec JSON: parsing and validation must never panic, and an accepted spec round-trips.
//! The checks are `fedmesh_protocol::fuzzing::job_spec_json`; `protocol/tests/fuzz_corpora.rs` runs
//! them on stable Rust over `corpus/job_spec_json` and inputs generated from it.
#![no_main]

use fedmesh_protocol::fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fuzzing::job_spec_json(data).expect("a property of job_spec_json does not hold");
});
