//! The managed broker's files: its Mosquitto configuration and its ACL, generated here only
//! (`serve` writes them; the tests' brokers and `bench/backend.sh` use the same generator).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The files of the managed broker, in `broker.dir`.
#[derive(Debug, Clone)]
pub struct Files {
    pub conf: PathBuf,
    pub acl: PathBuf,
    pub log: PathBuf,
    /// The pid of the running broker, to stop one left behind by a `serve` that was killed.
    pub pid: PathBuf,
    /// Where the broker keeps its persistent state (`mosquitto.db`): the backend's session and
    /// the messages queued for it, retained messages.
    pub dir: PathBuf,
}

impl Files {
    /// The files of a broker whose directory is `dir`.
    pub fn new(dir: &Path) -> Files {
        Files {
            conf: dir.join("mosquitto.conf"),
            acl: dir.join("acl"),
            log: dir.join("mosquitto.log"),
            pid: dir.join("mosquitto.pid"),
            dir: dir.to_path_buf(),
        }
    }
}

/// How often the broker saves its state (the backend's session and subscriptions, the messages
/// queued for it, retained messages), and on a clean exit.
pub const AUTOSAVE: Duration = Duration::from_secs(10);

/// The Mosquitto configuration: mutual TLS on `listen`, the certificate's CN as user name and
/// client id, its state saved in `files.dir`, the ACL of [`acl`].
pub fn mosquitto_conf(
    listen: SocketAddr,
    ca: &Path,
    cert: &Path,
    key: &Path,
    max_queued_messages: u64,
    files: &Files,
) -> String {
    format!(
        "# Written by picket-backend serve from the [broker] section of its configuration, at\n\
         # every start: edit that configuration, not this file.\n\
         # `user root`: when started by root, Mosquitto stays root instead of switching to user\n\
         # `mosquitto` (which could not read keys readable by root only): it runs as `serve` does.\n\
         user root\n\
         per_listener_settings false\n\
         allow_anonymous false\n\
         listener {port} {ip}\n\
         cafile {ca}\n\
         certfile {cert}\n\
         keyfile {key}\n\
         require_certificate true\n\
         use_identity_as_username true\n\
         use_username_as_clientid true\n\
         # The backend's session (its subscriptions, the messages queued for it) outlives a broker\n\
         # restart: alerts devices publish before the backend is back wait for it.\n\
         persistence true\n\
         persistence_location {dir}/\n\
         autosave_interval {autosave}\n\
         # The backend takes at most 256 messages at a time (its MQTT receive maximum); the broker\n\
         # queues the rest of a burst for it, and past this limit drops them (docs/BACKEND.md).\n\
         max_queued_messages {max_queued_messages}\n\
         acl_file {acl}\n\
         log_dest file {log}\n\
         # Connections, disconnections and problems; not every autosave.\n\
         log_type error\n\
         log_type warning\n\
         log_type notice\n",
        port = listen.port(),
        ip = listen.ip(),
        ca = ca.display(),
        cert = cert.display(),
        key = key.display(),
        acl = files.acl.display(),
        log = files.log.display(),
        dir = files.dir.display(),
        autosave = AUTOSAVE.as_secs(),
    )
}

/// The ACL: each backend (`backend_cns`, the CNs of their certificates) reads every device's
/// topics and writes the policy topics; a device writes its own topics and reads its own policy.
pub fn acl(backend_cns: &[&str]) -> String {
    let mut acl = String::new();
    for cn in backend_cns {
        acl.push_str(&format!(
            "user {cn}\n\
             topic read picket/v1/#\n\
             topic write picket/v1/+/policy\n\
             \n"
        ));
    }
    acl.push_str(
        "pattern write picket/v1/%u/alert\n\
         pattern write picket/v1/%u/heartbeat\n\
         pattern write picket/v1/%u/status\n\
         pattern write picket/v1/%u/policy/result\n\
         pattern read picket/v1/%u/policy\n",
    );
    acl
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_configuration_and_acl() {
        let files = Files::new(Path::new("/var/lib/picket-backend/broker"));
        let conf = mosquitto_conf(
            "127.0.0.1:18883".parse().unwrap(),
            Path::new("/pki/ca.pem"),
            Path::new("/pki/broker.pem"),
            Path::new("/pki/broker.key"),
            100_000,
            &files,
        );
        let lines: Vec<&str> = conf.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "user root",
                "per_listener_settings false",
                "allow_anonymous false",
                "listener 18883 127.0.0.1",
                "cafile /pki/ca.pem",
                "certfile /pki/broker.pem",
                "keyfile /pki/broker.key",
                "require_certificate true",
                "use_identity_as_username true",
                "use_username_as_clientid true",
                "persistence true",
                "persistence_location /var/lib/picket-backend/broker/",
                "autosave_interval 10",
                "max_queued_messages 100000",
                "acl_file /var/lib/picket-backend/broker/acl",
                "log_dest file /var/lib/picket-backend/broker/mosquitto.log",
                "log_type error",
                "log_type warning",
                "log_type notice",
            ]
        );
        let v6 = mosquitto_conf(
            "[::1]:8883".parse().unwrap(),
            Path::new("/a"),
            Path::new("/b"),
            Path::new("/c"),
            5,
            &files,
        );
        assert!(v6.contains("\nlistener 8883 ::1\n"), "{v6}");
        assert!(v6.contains("\nmax_queued_messages 5\n"), "{v6}");

        let acl = acl(&["be-1"]);
        assert!(
            acl.starts_with("user be-1\ntopic read picket/v1/#\ntopic write picket/v1/+/policy\n")
        );
        // The documented ACL (docs/BACKEND.md) is this one.
        let doc = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/BACKEND.md"),
        )
        .unwrap();
        let documented = doc
            .split("### Broker ACL")
            .nth(1)
            .and_then(|s| s.split("```\n").nth(1))
            .expect("the ACL block of docs/BACKEND.md");
        let mut generated: Vec<String> = acl
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        let mut documented: Vec<String> = documented
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.replace("picket-backend", "be-1"))
            .collect();
        generated.sort();
        documented.sort();
        assert_eq!(generated, documented);
        for pattern in [
            "pattern write picket/v1/%u/alert",
            "pattern write picket/v1/%u/heartbeat",
            "pattern write picket/v1/%u/status",
            "pattern write picket/v1/%u/policy/result",
            "pattern read picket/v1/%u/policy",
        ] {
            assert!(acl.lines().any(|l| l == pattern), "{pattern}");
        }
    }

    #[test]
    fn one_user_block_per_backend() {
        let devices = "pattern write picket/v1/%u/alert\n\
                       pattern write picket/v1/%u/heartbeat\n\
                       pattern write picket/v1/%u/status\n\
                       pattern write picket/v1/%u/policy/result\n\
                       pattern read picket/v1/%u/policy\n";
        let user = |cn: &str| {
            format!("user {cn}\ntopic read picket/v1/#\ntopic write picket/v1/+/policy\n\n")
        };
        assert_eq!(acl(&["be-1"]), format!("{}{devices}", user("be-1")));
        assert_eq!(
            acl(&["be-1", "be-2"]),
            format!("{}{}{devices}", user("be-1"), user("be-2"))
        );
    }
}
