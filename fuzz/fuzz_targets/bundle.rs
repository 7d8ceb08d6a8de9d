//! The bundle decoder must refuse any input it cannot decode, never panic or hang, and whatever
//! it accepts must survive a re-encode.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((policy, _signer)) = picket_policy::bundle::inspect(data) {
        let bytes = picket_policy::canonical_bytes(&policy);
        assert_eq!(
            picket_policy::from_canonical_bytes(&bytes, picket_policy::format_of(&policy)).as_ref(),
            Ok(&policy)
        );
    }
    // The payload decoder on its own, too.
    let _ = picket_policy::from_canonical_bytes(data, 2);
});
