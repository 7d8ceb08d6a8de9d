//! The PostgreSQL store over TLS, against a real server that refuses TCP clients without it.

use picket_test_support::pki::Pki;
use picket_test_support::postgres::Postgres;

use super::postgres::PgStore;
use crate::config::Config;
use crate::tls::client_config_for;

fn refusal(result: anyhow::Result<PgStore>) -> String {
    format!("{:#}", result.err().expect("the connection was accepted"))
}

/// The configuration's `[store]`: `postgres` with the `extra` lines.
fn store_config(params: &str, extra: &str) -> crate::config::StoreConfig {
    Config::parse(&format!("[store]\npostgres = \"{params}\"\n{extra}"))
        .unwrap()
        .store
}

#[test]
fn the_postgres_store_speaks_tls_and_verifies_the_server() {
    let pki = Pki::new();
    let pg = Postgres::start_tls(pki.server_cert(), pki.server_key(), None);
    let params = pg.database("tls");

    // The server takes no TCP client without TLS: what connects below does use it.
    let err = refusal(PgStore::connect(&params));
    assert!(err.contains("no encryption"), "{err}");

    // Through the configuration, as `serve` opens it: the session is encrypted.
    let ca = pki.ca_cert().display();
    let config = store_config(&params, &format!("postgres_ca = \"{ca}\""));
    drop(super::open(&config, None, true).unwrap());
    let mut store = PgStore::connect_with(
        &params,
        Some(client_config_for(pki.ca_cert(), None).unwrap()),
    )
    .unwrap();
    let ssl: bool = store
        .client()
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(ssl, "the session is not encrypted");

    // A server whose certificate another CA signed is refused, and the error says why.
    let other = Some(client_config_for(pki.other_ca_cert(), None).unwrap());
    let err = refusal(PgStore::connect_with(&params, other));
    assert!(err.contains("certificate"), "{err}");

    // So is a certificate that does not name the host asked for, even at the right address.
    let elsewhere = params.replace("host=127.0.0.1", "host=db.example hostaddr=127.0.0.1");
    let tls = Some(client_config_for(pki.ca_cert(), None).unwrap());
    let err = refusal(PgStore::connect_with(&elsewhere, tls));
    assert!(err.contains("certificate"), "{err}");

    // TLS over a Unix socket is refused before connecting, naming the socket.
    let socket = format!(
        "host={} port={} user=picket dbname=tls",
        pg.dir().display(),
        pg.port
    );
    let tls = Some(client_config_for(pki.ca_cert(), None).unwrap());
    let err = refusal(PgStore::connect_with(&socket, tls));
    assert!(
        err.contains("Unix socket") && err.contains(&pg.dir().display().to_string()),
        "{err}"
    );
}

#[test]
fn the_postgres_store_presents_its_client_certificate() {
    let pki = Pki::new();
    let pg = Postgres::start_tls(pki.server_cert(), pki.server_key(), Some(pki.ca_cert()));
    let params = pg.database("clientcert");
    let ca = pki.ca_cert().display();

    // Without a certificate, the server refuses the client.
    let config = store_config(&params, &format!("postgres_ca = \"{ca}\""));
    let err = format!("{:#}", super::open(&config, None, true).err().unwrap());
    assert!(err.contains("requires a valid client certificate"), "{err}");

    // With the certificate of the user `picket`, it connects.
    let client = pki.device("picket");
    let config = store_config(
        &params,
        &format!(
            "postgres_ca = \"{ca}\"\npostgres_cert = \"{}\"\npostgres_key = \"{}\"",
            client.cert.display(),
            client.key.display()
        ),
    );
    drop(super::open(&config, None, true).unwrap());
}

#[test]
fn postgres_tls_settings_without_their_companions_are_refused() {
    for (extra, says) in [
        (
            "postgres_cert = \"/c\"\npostgres_key = \"/k\"",
            "needs store.postgres_ca",
        ),
        (
            "postgres_ca = \"/a\"\npostgres_cert = \"/c\"",
            "go together",
        ),
    ] {
        let text = format!("[store]\npostgres = \"host=db\"\n{extra}");
        let err = format!("{:#}", Config::parse(&text).unwrap_err());
        assert!(err.contains(says), "{extra}: {err}");
    }
    let err = format!(
        "{:#}",
        Config::parse("[store]\npostgres_ca = \"/a\"").unwrap_err()
    );
    assert!(err.contains("need store.postgres"), "{err}");
}
