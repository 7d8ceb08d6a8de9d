//! The TOML loader must refuse bad text with an error, never panic; a policy it accepts must
//! show back as TOML that loads to the same policy.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(policy) = picket_policy::load_toml(text, "fuzz.toml") {
        let shown = picket_policy::to_toml(&policy);
        let back = picket_policy::load_toml(&shown, "shown.toml").expect("shown policy loads");
        assert_eq!(back, policy);
    }
});
