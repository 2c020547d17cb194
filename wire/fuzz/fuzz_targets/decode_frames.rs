//! Feeds arbitrary bytes to the frame decoder, for every direction filter
//! and several maximum frame sizes, and checks the invariants the property
//! tests check (`wire/tests/common/invariants.rs`, shared): no panic, no
//! frame beyond the input, a frame or `NeedMore` or a typed framing error
//! decided by the header alone, exact `consumed()`, and the same frames
//! when the stream arrives in two reads split at any byte.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/invariants.rs"]
mod invariants;

fuzz_target!(|data: &[u8]| {
    // The first two bytes choose where the two-read split falls; the whole
    // input, those bytes included, is the stream.
    let cut = data
        .first_chunk::<2>()
        .map_or(0, |b| usize::from(u16::from_le_bytes(*b)));
    for (decoder, direction) in invariants::decoders() {
        let _ = invariants::check_decode(&decoder, direction, data);
        invariants::check_stream(&decoder, direction, data);
        invariants::check_split_reads(&decoder, data, cut % (data.len() + 1));
    }
});
