//! A throwaway PostgreSQL cluster for tests (Debian's `postgresql` package): initdb in a
//! temporary directory, a server on a free loopback port, stopped when dropped. PostgreSQL
//! refuses to run as root, so as root it runs as the `postgres` user.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running PostgreSQL server; its superuser is `picket`, who connects without a password.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    as_postgres: bool,
    /// The server's options (`pg_ctl -o`), for [`Postgres::restart`].
    options: String,
}

fn id(args: &[&str]) -> u32 {
    let out = Command::new("id").args(args).output().unwrap();
    assert!(out.status.success(), "id {args:?}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

impl Postgres {
    /// Creates a cluster under a temporary directory and starts its server (waiting until it
    /// accepts connections).
    pub fn start() -> Postgres {
        Self::start_with(None)
    }

    /// As [`Postgres::start`], for clients over TLS only: the server presents `cert` (with
    /// `key`) and refuses TCP connections without TLS; with `client_ca`, it also asks each
    /// client for a certificate that CA signed, whose CN is the user name (`picket`).
    /// Connections over the Unix socket in [`Postgres::dir`] need neither.
    pub fn start_tls(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Postgres {
        Self::start_with(Some((cert, key, client_ca)))
    }

    fn start_with(tls: Option<(&Path, &Path, Option<&Path>)>) -> Postgres {
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is not installed (apt-get install postgresql)")
            .map(|e| e.unwrap().path().join("bin"))
            .filter(|b| b.join("initdb").exists())
            .collect();
        versions.sort();
        let bin = versions.pop().expect("no initdb under /usr/lib/postgresql");
        let dir = tempfile::tempdir().unwrap();
        let as_postgres = id(&["-u"]) == 0;
        if as_postgres {
            std::os::unix::fs::chown(
                dir.path(),
                Some(id(&["-u", "postgres"])),
                Some(id(&["-g", "postgres"])),
            )
            .unwrap();
        }
        let port = crate::ports::free_port();
        let mut pg = Postgres {
            dir,
            bin,
            port,
            as_postgres,
            options: String::new(),
        };
        let data = pg.dir.path().join("data");
        pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "picket",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -F",
            pg.dir.path().display()
        );
        if let Some((cert, key, client_ca)) = tls {
            pg.own(&data, "server.crt", &std::fs::read(cert).unwrap());
            pg.own(&data, "server.key", &std::fs::read(key).unwrap());
            options.push_str(" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key");
            let mut client = "";
            if let Some(ca) = client_ca {
                pg.own(&data, "client-ca.crt", &std::fs::read(ca).unwrap());
                options.push_str(" -c ssl_ca_file=client-ca.crt");
                client = " clientcert=verify-full";
            }
            let hba = format!("local all all trust\nhostssl all all 127.0.0.1/32 trust{client}\n");
            pg.own(&data, "pg_hba.conf", hba.as_bytes());
        }
        pg.options = options;
        pg.pg_start();
        pg
    }

    /// Starts the server of the cluster (waiting until it accepts connections).
    fn pg_start(&self) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-o",
                &self.options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
    }

    /// Stops the server (`mode`: `fast` ends the sessions and shuts down cleanly, `immediate`
    /// is a crash that the next start recovers from), waits `down`, and starts it again on the
    /// same port with the same settings.
    pub fn restart(&self, mode: &str, down: std::time::Duration) {
        let data = self.dir.path().join("data");
        self.run(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", mode, "-w", "stop"],
        );
        std::thread::sleep(down);
        self.pg_start();
    }

    /// Writes `name` in the data directory `data`, mode 0600, owned by the server's user.
    fn own(&self, data: &Path, name: &str, contents: &[u8]) {
        use std::os::unix::fs::PermissionsExt;
        let path = data.join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        if self.as_postgres {
            std::os::unix::fs::chown(
                &path,
                Some(id(&["-u", "postgres"])),
                Some(id(&["-g", "postgres"])),
            )
            .unwrap();
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let out = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(args)
                .current_dir(self.dir.path())
                .output()
        } else {
            Command::new(&exe).args(args).output()
        }
        .unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A connection string for `database` (created if needed).
    pub fn database(&self, database: &str) -> String {
        // Over the Unix socket: a server for TLS clients refuses TCP without it.
        let admin = format!(
            "host={} port={} user=picket dbname=postgres",
            self.dir.path().display(),
            self.port
        );
        let mut client = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
            .unwrap()
            .is_some();
        if !exists {
            client
                .batch_execute(&format!("CREATE DATABASE \"{database}\""))
                .unwrap();
        }
        format!(
            "host=127.0.0.1 port={} user=picket dbname={database}",
            self.port
        )
    }

    /// The cluster's directory (`data/`, `server.log`, the server's socket).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let exe = self.bin.join("pg_ctl");
        let args = ["-D", data.to_str().unwrap_or(""), "-m", "immediate", "stop"];
        let _ = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(args)
                .output()
        } else {
            Command::new(&exe).args(args).output()
        };
    }
}
