//! Fuzz target: the Chorus response parsers (`parse_engagement_page`,
//! `parse_conversation`). Any bytes as a response body: an answer or an error, never a
//! panic, and a parsed page round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portshift_fuzz::check_chorus(data);
});
