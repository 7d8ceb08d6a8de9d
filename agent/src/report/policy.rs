//! Signed policy updates received on the device's policy topic: checked like a bundle on disk,
//! persisted, handed to the detection loop, and answered with a policy result.

use picket_policy::store::Accepted;
use picket_proto::{
    topic::{topic, Channel},
    PolicyOutcome, PolicyResult, Presence,
};

use super::{link::Link, mqtt, PolicyEvent, Reporter};
use crate::alert;

impl Reporter {
    /// A message on the policy topic: a signed bundle, checked like one on disk.
    pub(super) fn policy_message(
        &self,
        client: &mqtt::Client,
        link: &mut Link,
        t: &str,
        payload: &[u8],
    ) {
        if t != topic(&self.device_id, Channel::Policy) {
            log::warn!("ignoring a message on {t}, a topic this device did not subscribe to");
            return;
        }
        if payload.is_empty() {
            // The backend cleared the retained bundle: nothing to apply.
            return;
        }
        let sha256 =
            crate::paths::hex(ring::digest::digest(&ring::digest::SHA256, payload).as_ref());
        let outcome = if payload.len() > picket_proto::MAX_POLICY_BYTES {
            Err(format!(
                "the bundle is {} bytes, over the limit of {}",
                payload.len(),
                picket_proto::MAX_POLICY_BYTES
            ))
        } else {
            self.store
                .accept(payload, &self.trust)
                .map_err(|e| format!("{e:#}"))
        };
        let outcome = match outcome {
            Ok(Accepted::Installed(v)) => {
                let (name, serial) = (v.policy.metadata.name.clone(), v.policy.metadata.serial);
                log::info!("policy `{name}` serial {serial} received over MQTT and installed");
                *self.shared.policy.lock().unwrap_or_else(|e| e.into_inner()) =
                    (name.clone(), serial);
                let _ = self.policies.send(PolicyEvent::Installed(Box::new(v)));
                self.status(client, link, Presence::Online);
                PolicyOutcome::Applied { name, serial }
            }
            Ok(Accepted::Unchanged(v)) => PolicyOutcome::Unchanged {
                serial: v.policy.metadata.serial,
            },
            Err(reason) => {
                log::error!("policy received over MQTT refused: {reason}");
                let _ = self.policies.send(PolicyEvent::Refused {
                    reason: reason.clone(),
                    sha256: sha256.clone(),
                });
                PolicyOutcome::Refused { reason }
            }
        };
        let result = PolicyResult {
            time_ms: alert::now_ms(),
            bundle_sha256: sha256,
            outcome,
        };
        match picket_proto::encode(self.config.format, &self.device_id, &result) {
            Ok(p) => self.publish_other(client, link, Channel::PolicyResult, true, false, p),
            Err(e) => log::error!("encoding a policy result: {e}"),
        }
    }
}
