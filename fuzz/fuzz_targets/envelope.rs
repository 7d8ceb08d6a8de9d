//! What the backend decodes from a device's topics, as a hostile device may send it: the topic
//! name and the envelope of each channel's body. Any input must be refused or decoded, never
//! panic or hang; what is decoded must encode again in its format and decode to the same
//! envelope (the alert details up to the last digit of their numbers), so that nothing the
//! backend stores differs from what it accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use picket_proto::{
    decode, decode_heartbeat, encode, topic, Alert, Details, Envelope, Format, PolicyResult,
    Status,
};
use serde::{de::DeserializeOwned, Serialize};

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    decoded: Result<(Format, Envelope<T>), picket_proto::Error>,
    exact: impl Fn(&mut T),
) {
    let Ok((format, envelope)) = decoded else {
        return;
    };
    let bytes = encode(format, &envelope.device_id, &envelope.body)
        .unwrap_or_else(|e| panic!("a decoded envelope does not encode again: {e}"));
    let (format2, again) = decode::<T>(&bytes).expect("an encoded envelope decodes");
    assert_eq!(format2, format);
    assert_eq!(again.device_id, envelope.device_id);
    // Every field but the alert details, whose numbers may move by one unit in the last place
    // through a decimal form (postcard carries them as JSON text too).
    let (mut a, mut b) = (again.body, envelope.body);
    exact(&mut a);
    exact(&mut b);
    assert_eq!(a, b);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(name) = std::str::from_utf8(data) {
        if let Ok((device, channel)) = topic::parse(name) {
            assert_eq!(topic::topic(device, channel), name, "a topic parses to itself");
        }
    }
    round_trip(decode::<Alert>(data), |a: &mut Alert| {
        a.details = Details::default();
    });
    round_trip(decode::<Status>(data), |_| {});
    round_trip(decode::<PolicyResult>(data), |_| {});
    // Heartbeats of an older layout decode too; they encode as the current one.
    if let Ok((format, hb)) = decode_heartbeat(data) {
        let bytes = encode(format, &hb.device_id, &hb.body).expect("a heartbeat encodes again");
        let (_, again) = decode_heartbeat(&bytes).expect("an encoded heartbeat decodes");
        if format == Format::Postcard {
            assert_eq!(again.body, hb.body);
        }
    }
});
