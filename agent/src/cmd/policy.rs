//! `picket keygen` and `picket policy ...`: the manufacturer's side (make keys, sign a policy)
//! and the device's side (verify, show, apply with anti-rollback).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use picket_policy::{
    bundle,
    keys::{self, SigningKey, TrustStore},
    store::{Accepted, PolicyStore},
};

/// Arguments of `picket keygen`.
#[derive(clap::Args, Debug)]
pub struct KeygenArgs {
    /// Writes NAME.key (PKCS#8, mode 0600: keep it on the build host) and NAME.pub (goes into
    /// the devices' trust directory).
    #[arg(long, value_name = "NAME")]
    out: PathBuf,
}

/// `picket policy ...`
#[derive(clap::Subcommand, Debug)]
pub enum PolicyCommand {
    /// Check a TOML policy and sign it into a bundle.
    Sign {
        /// The signing key (NAME.key from `picket keygen`).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The policy, in TOML.
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
        /// Where to write the signed bundle.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Check that a trusted key signed a bundle; exits 0 only then.
    Verify {
        /// Directory of trusted public keys (*.pub).
        #[arg(long, value_name = "DIR")]
        trust: PathBuf,
        bundle: PathBuf,
    },
    /// Print a bundle's policy as TOML.
    Show {
        /// Also check the signature against these trusted keys.
        #[arg(long, value_name = "DIR")]
        trust: Option<PathBuf>,
        bundle: PathBuf,
    },
    /// On a device: verify a bundle, refuse a rollback, and make it the policy in force.
    Apply {
        #[arg(long, value_name = "DIR")]
        trust: PathBuf,
        /// The agent's state directory (holds the active policy and the highest serial).
        #[arg(long, value_name = "DIR")]
        state: PathBuf,
        /// Refuse policies for another device class.
        #[arg(long, value_name = "CLASS")]
        device_class: Option<String>,
        bundle: PathBuf,
    },
}

/// Runs `picket keygen`.
pub fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let (key, public, id) = keys::generate(&args.out).context("generating a key pair")?;
    println!(
        "key {id}: private {} (keep it secret), public {}",
        key.display(),
        public.display()
    );
    Ok(())
}

/// Runs a `picket policy` subcommand.
pub fn run(command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Sign { key, input, out } => sign(&key, &input, &out),
        PolicyCommand::Verify { trust, bundle } => verify(&trust, &bundle),
        PolicyCommand::Show { trust, bundle } => show(trust.as_deref(), &bundle),
        PolicyCommand::Apply {
            trust,
            state,
            device_class,
            bundle,
        } => apply(&trust, &state, device_class, &bundle),
    }
}

/// `picket policy sign`: checks the TOML policy `input` and writes it signed by `key` to `out`.
fn sign(key: &Path, input: &Path, out: &Path) -> anyhow::Result<()> {
    let policy = picket_policy::load_toml_file(input)?;
    let signer = SigningKey::load(key)?;
    let bytes = bundle::sign(&policy, &signer);
    fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    let m = &policy.metadata;
    println!(
        "signed policy `{}` serial {} for device class `{}` with key {} into {} ({} bytes)",
        m.name,
        m.serial,
        m.device_class,
        signer.id(),
        out.display(),
        bytes.len()
    );
    Ok(())
}

/// `picket policy verify`: fails unless a key of the `trust` directory signed `bundle`.
fn verify(trust: &Path, bundle: &Path) -> anyhow::Result<()> {
    let trust = TrustStore::load_dir(trust)?;
    let bytes = read(bundle)?;
    let verified = bundle::verify(&bytes, &trust)
        .with_context(|| format!("{} is not a valid policy bundle", bundle.display()))?;
    let m = &verified.policy.metadata;
    println!(
        "{}: valid, policy `{}` serial {} for device class `{}`, signed by key {}",
        bundle.display(),
        m.name,
        m.serial,
        m.device_class,
        verified.signer
    );
    Ok(())
}

/// `picket policy show`: prints the bundle's policy, checking the signature when given `trust`.
fn show(trust: Option<&Path>, bundle: &Path) -> anyhow::Result<()> {
    let bytes = read(bundle)?;
    let (policy, signer, checked) = match trust {
        Some(dir) => {
            let trust = TrustStore::load_dir(dir)?;
            let v = bundle::verify(&bytes, &trust)
                .with_context(|| format!("{} is not a valid policy bundle", bundle.display()))?;
            (v.policy, v.signer, true)
        }
        None => {
            let (policy, signer) = bundle::inspect(&bytes)
                .with_context(|| format!("{} is not a policy bundle", bundle.display()))?;
            (policy, signer, false)
        }
    };
    let note = if checked {
        "signature verified"
    } else {
        "signature NOT checked (pass --trust DIR)"
    };
    print!(
        "# {}: signed by key {signer}; {note}\n{}",
        bundle.display(),
        picket_policy::to_toml(&policy)
    );
    Ok(())
}

/// `picket policy apply`: verifies the bundle, refuses a rollback and makes it the policy in
/// force in the `state` directory.
fn apply(
    trust: &Path,
    state: &Path,
    device_class: Option<String>,
    bundle: &Path,
) -> anyhow::Result<()> {
    let trust = TrustStore::load_dir(trust)?;
    let bytes = read(bundle)?;
    let store = PolicyStore::open(state, device_class)?;
    let outcome = store.accept(&bytes, &trust).with_context(|| {
        format!(
            "{} refused; the policy in force is unchanged",
            bundle.display()
        )
    })?;
    let (what, v) = match &outcome {
        Accepted::Installed(v) => ("now in force", v),
        Accepted::Unchanged(v) => ("already in force", v),
    };
    println!(
        "policy `{}` serial {} {what} (signed by key {})",
        v.policy.metadata.name, v.policy.metadata.serial, v.signer
    );
    Ok(())
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    // A bundle is small; refuse to load anything absurd into memory.
    let meta = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let limit = (bundle::MAX_PAYLOAD + 1024) as u64;
    anyhow::ensure!(
        meta.len() <= limit,
        "{} is {} bytes, larger than any policy bundle can be",
        path.display(),
        meta.len()
    );
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}
