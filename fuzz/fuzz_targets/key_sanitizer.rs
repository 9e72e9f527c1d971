//! Fuzz target: the object-key sanitiser (`pipeline::keys`). Any bytes as a recording
//! id: the keys made from it stay inside the export prefix and valid in a `sha256sum`
//! manifest, and are the same on every call.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portshift_fuzz::check_keys(data);
});
