//! Job spec JSON: parsing and validation must never panic, and an accepted spec round-trips
//! through its canonical JSON.
#![no_main]

use fedmesh_protocol::spec::JobSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = JobSpec::from_json(data) else { return };
    let canonical = spec.to_canonical_json().expect("a parsed spec serializes");
    let again = JobSpec::from_canonical_json(&canonical).expect("canonical JSON parses back");
    assert_eq!(again, spec);
});
