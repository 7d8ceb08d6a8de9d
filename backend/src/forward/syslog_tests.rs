//! Syslog delivery against Debian's rsyslogd, started by each test on a port of its own with
//! `imtcp` (plain TCP, or the `gtls` stream driver with the test PKI's server certificate),
//! writing what it receives, as received, to a file that the test parses as RFC 5424.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use picket_test_support::Pki;
use serde_json::Value;

use super::tests::{runtime, until, Fixture};

/// An rsyslogd of the test; killed (its own pid) when dropped.
struct Rsyslog {
    child: Child,
    received: PathBuf,
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Rsyslog {
    /// Starts rsyslogd in `dir` on `port`, with TLS if `pki` is given.
    fn start(dir: &Path, port: u16, pki: Option<&Pki>) -> Rsyslog {
        let rsyslogd = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect(
                "rsyslogd (Debian's rsyslog and rsyslog-gnutls; scripts/setup.sh installs them)",
            );
        let received = dir.join("received.log");
        let (global, driver) = match pki {
            Some(pki) => (
                format!(
                    "DefaultNetstreamDriverCAFile=\"{}\" DefaultNetstreamDriverCertFile=\"{}\" \
                     DefaultNetstreamDriverKeyFile=\"{}\"",
                    pki.ca_cert().display(),
                    pki.server_cert().display(),
                    pki.server_key().display()
                ),
                "StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" \
                 StreamDriver.AuthMode=\"anon\""
                    .to_string(),
            ),
            None => (String::new(), String::new()),
        };
        let conf = dir.join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                "global(workDirectory=\"{dir}\" maxMessageSize=\"64k\" {global})\n\
                 module(load=\"imtcp\" {driver})\n\
                 template(name=\"raw\" type=\"string\" string=\"%rawmsg%\\n\")\n\
                 ruleset(name=\"remote\") {{\n\
                 action(type=\"omfile\" file=\"{received}\" template=\"raw\")\n\
                 }}\n\
                 input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\" ruleset=\"remote\")\n",
                dir = dir.display(),
                received = received.display(),
            ),
        )
        .unwrap();
        let child = Command::new(rsyslogd)
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stderr(std::fs::File::create(dir.join("rsyslogd.log")).unwrap())
            .spawn()
            .expect("starting rsyslogd");
        Rsyslog { child, received }
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.received)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// An RFC 5424 message, parsed: the header fields, the parameters of its one SD element, the
/// MSG as JSON.
#[derive(Debug)]
struct Message {
    pri: u32,
    timestamp: String,
    hostname: String,
    app_name: String,
    msgid: String,
    sd_id: String,
    params: Vec<(String, String)>,
    msg: Value,
}

fn parse(line: &str) -> Message {
    let (pri, rest) = line[1..].split_once(">1 ").expect(line);
    let mut fields = rest.splitn(6, ' ');
    let mut next = || fields.next().expect(line).to_string();
    let (timestamp, hostname, app_name, _procid, msgid) = (next(), next(), next(), next(), next());
    let sd = next();
    let mut chars = sd.chars();
    assert_eq!(chars.next(), Some('['), "{line}");
    let sd_id: String = chars.by_ref().take_while(|c| *c != ' ').collect();
    let mut params = Vec::new();
    loop {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "{line}");
        let mut value = String::new();
        loop {
            match chars.next().expect(line) {
                '\\' => {
                    let c = chars.next().expect(line);
                    if !matches!(c, '"' | '\\' | ']') {
                        value.push('\\');
                    }
                    value.push(c);
                }
                '"' => break,
                c => value.push(c),
            }
        }
        params.push((name, value));
        match chars.next() {
            Some(' ') => continue,
            Some(']') => break,
            other => panic!("{other:?} after a parameter in {line}"),
        }
    }
    assert_eq!(chars.next(), Some(' '), "{line}");
    let msg = serde_json::from_str(chars.as_str()).expect(line);
    Message {
        pri: pri.parse().expect(line),
        timestamp,
        hostname,
        app_name,
        msgid,
        sd_id,
        params,
        msg,
    }
}

impl Message {
    fn param(&self, name: &str) -> &str {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} in {self:?}"))
    }
}

fn syslog(name: &str, port: u16, extra: &str) -> String {
    format!(
        "[[syslog]]\nname = \"{name}\"\naddress = \"127.0.0.1:{port}\"\napp_name = \"{name}\"\n\
         batch = 4\nmax_backoff = \"1s\"\nbackfill = true\n{extra}\n"
    )
}

/// A path no one should trust: quotes, brackets, backslashes, a newline.
const HOSTILE: &str = "/tmp/a\"b]c\\d\ne [x=\"y\"]";

/// Over plain TCP: every alert once, in order, with its PRI, timestamp, hostname, MSGID and
/// structured data intact, the hostile path included (its newline as rsyslog escapes control
/// characters on receipt, `#012`), and the alert's JSON as MSG.
#[test]
fn syslog_over_tcp_reaches_rsyslog_intact() {
    let runtime = runtime();
    runtime.block_on(async {
        let mut f = Fixture::new();
        let port = picket_test_support::ports::free_port();
        let rsyslog = Rsyslog::start(f.dir.path(), port, None);
        let mut ids = vec![f.store("gw-1", 1, HOSTILE)];
        ids.extend(f.store_many(&["gw-1", "gw-2"], 2, 5));
        let _running = f.start(&syslog("tcp", port, "facility = \"local3\""));
        let last = *ids.last().unwrap();
        until("every alert at rsyslog", || {
            f.row("tcp").is_some_and(|r| r.last_id == last)
        })
        .await;
        // Acknowledged once rsyslog closed the connection: it has read them all, and writes
        // each to its file as it handles it.
        until("rsyslog's file", || rsyslog.lines().len() >= ids.len()).await;
        let messages: Vec<Message> = rsyslog.lines().iter().map(|l| parse(l)).collect();
        let got: Vec<u64> = messages
            .iter()
            .map(|m| m.param("id").parse().unwrap())
            .collect();
        assert_eq!(got, ids, "each once, in the order stored");
        let first = &messages[0];
        assert_eq!(first.sd_id, "picket@32473");
        assert_eq!(first.pri, 19 * 8 + 2, "local3, critical");
        assert_eq!(messages[1].pri, 19 * 8 + 3, "local3, high");
        assert_eq!(first.timestamp, "2023-11-14T22:13:20.001Z");
        assert_eq!(
            (first.hostname.as_str(), first.app_name.as_str()),
            ("gw-1", "tcp")
        );
        assert_eq!(first.msgid, "unknown_executable");
        assert_eq!(first.param("device"), "gw-1");
        assert_eq!(first.param("seq"), "1");
        assert_eq!(first.param("severity"), "critical");
        assert_eq!(first.param("path"), HOSTILE.replace('\n', "#012"));
        assert_eq!(first.msg["path"], HOSTILE);
        assert_eq!(first.msg["id"], ids[0]);
        let gw2: Vec<&str> = messages
            .iter()
            .filter(|m| m.param("device") == "gw-2")
            .map(|m| m.param("seq"))
            .collect();
        assert_eq!(gw2, ["2", "3", "4", "5", "6"]);
        assert_eq!(f.row("tcp").unwrap().error, None);
    });
}

/// Over TLS with the server's certificate verified: delivered; a receiver that trusts another CA
/// is refused by its own check, and nothing is marked delivered to it.
#[test]
fn syslog_over_tls_verifies_the_server() {
    let runtime = runtime();
    runtime.block_on(async {
        let mut f = Fixture::new();
        let pki = Pki::new();
        let port = picket_test_support::ports::free_port();
        let rsyslog = Rsyslog::start(f.dir.path(), port, Some(&pki));
        let ids = f.store_many(&["gw-1", "gw-2"], 1, 3);
        let config = format!(
            "{}{}",
            syslog(
                "tls",
                port,
                &format!("tls = true\nca = \"{}\"", pki.ca_cert().display())
            ),
            syslog(
                "stranger",
                port,
                &format!("tls = true\nca = \"{}\"", pki.other_ca_cert().display())
            ),
        );
        let _running = f.start(&config);
        let last = *ids.last().unwrap();
        until("every alert at rsyslog over TLS", || {
            f.row("tls").is_some_and(|r| r.last_id == last)
        })
        .await;
        // Refused by its own check of the server's certificate (before that, perhaps, by a
        // connection refused while rsyslogd was starting).
        until("the other CA's refusal", || {
            f.row("stranger")
                .and_then(|r| r.error)
                .is_some_and(|e| e.contains("certificate"))
        })
        .await;
        until("rsyslog's file", || rsyslog.lines().len() >= ids.len()).await;
        let messages: Vec<Message> = rsyslog.lines().iter().map(|l| parse(l)).collect();
        assert!(messages.iter().all(|m| m.app_name == "tls"), "{messages:?}");
        let got: Vec<u64> = messages
            .iter()
            .map(|m| m.param("id").parse().unwrap())
            .collect();
        assert_eq!(got, ids);
        let stranger = f.row("stranger").unwrap();
        assert_eq!((stranger.last_id, stranger.success_ms), (0, None));
        assert!(stranger.error.unwrap().contains("UnknownIssuer"));
    });
}
