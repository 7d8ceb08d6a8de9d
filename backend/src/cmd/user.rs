//! `picket-backend user`: the users of the HTTP API and the console (`add`, `token`, `list`,
//! `remove`). Each change is written to the audit log as done by `cli`.

use std::io::{BufRead, IsTerminal, Write};

use crate::api::auth::{hash_password, secret, sha256_hex};
use crate::api::Role;
use crate::ingest::now_ms;
use crate::store::{AuditRow, Store};

/// The shortest password `user add` takes.
pub const MIN_PASSWORD: usize = 8;

/// What the audit log names as the author of a change made at the command line.
const CLI: &str = "cli";

fn audit(store: &mut dyn Store, action: &str, target: &str, detail: &str) -> anyhow::Result<()> {
    store.audit(&AuditRow {
        time_ms: now_ms(),
        user: CLI.into(),
        action: action.into(),
        target: target.into(),
        detail: detail.into(),
    })
}

/// Checks a user name: 1 to 64 characters, letters, digits, `.`, `_`, `-` and `@`.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c)),
        "`{name}` is not a valid user name (1 to 64 letters, digits, `.`, `_`, `-` or `@`)"
    );
    Ok(())
}

/// The password of `user add`: the first line of standard input (prompted for on a
/// terminal), or a generated one (printed once) with `generate`.
fn password(generate: bool) -> anyhow::Result<(String, bool)> {
    if generate {
        return Ok((secret()?, true));
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password (shown as typed; or use --generate): ");
        std::io::stderr().flush()?;
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    anyhow::ensure!(
        password.chars().count() >= MIN_PASSWORD,
        "the password (first line of standard input) must have at least {MIN_PASSWORD} \
         characters; --generate makes one"
    );
    Ok((password, false))
}

/// `user add NAME --role ROLE [--generate]`.
pub fn add(store: &mut dyn Store, name: &str, role: &str, generate: bool) -> anyhow::Result<()> {
    check_name(name)?;
    let role = Role::parse(role)
        .ok_or_else(|| anyhow::anyhow!("unknown role `{role}` (viewer, operator or admin)"))?;
    anyhow::ensure!(
        store.user(name)?.is_none(),
        "the user `{name}` exists already"
    );
    let (password, generated) = password(generate)?;
    let hash = hash_password(&password)?;
    anyhow::ensure!(
        store.add_user(name, role.name(), &hash, now_ms())?,
        "the user `{name}` exists already"
    );
    audit(store, "user_add", name, role.name())?;
    if generated {
        println!("{password}");
        eprintln!(
            "user `{name}` ({}) added; its password is above (shown once)",
            role.name()
        );
    } else {
        eprintln!("user `{name}` ({}) added", role.name());
    }
    Ok(())
}

/// `user token NAME`: prints a new API token of the user (shown once, kept hashed).
pub fn token(store: &mut dyn Store, name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(store.user(name)?.is_some(), "no user `{name}`");
    let token = secret()?;
    store.add_token(&sha256_hex(&token), name, now_ms())?;
    audit(store, "token_add", name, "")?;
    println!("{token}");
    Ok(())
}

/// `user list [--json]`.
pub fn list(store: &mut dyn Store, json: bool) -> anyhow::Result<()> {
    let users = store.users()?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &users)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "{:<32} {:<9} CREATED", "USER", "ROLE")?;
    for u in users {
        let created = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(u.created_ms),
        );
        writeln!(out, "{:<32} {:<9} {created}", u.name, u.role)?;
    }
    Ok(())
}

/// `user remove NAME`: with its sessions and API tokens.
pub fn remove(store: &mut dyn Store, name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(store.remove_user(name)?, "no user `{name}`");
    audit(store, "user_remove", name, "")?;
    eprintln!("user `{name}` removed, with its sessions and API tokens");
    Ok(())
}
