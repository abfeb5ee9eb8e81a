//! Key file text: parsing must never panic, and an accepted key file is written back the same.
#![no_main]

use fedmesh_protocol::identity::Identity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(identity) = Identity::parse_key_file(text) else { return };
    let written = identity.to_key_file();
    let again = Identity::parse_key_file(&written).expect("a written key file parses");
    assert_eq!(again.seed(), identity.seed());
});
