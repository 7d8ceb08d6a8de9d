//! Builds the eBPF sensors (`picket-ebpf`) for the BPF target with aya-build, so that the agent
//! can embed the object. Packagers who build the object separately set `AYA_BUILD_SKIP=1`: the
//! agent is then built without an embedded object and needs `--bpf-object PATH` at run time.
//! `PICKET_EBPF_OBJECT_DIR=DIR` embeds `DIR/<target_arch>/picket-sensors.bpf.o` instead of
//! building it again (scripts/test.sh builds the object once, then reuses it for every profile;
//! an architecture without an object there is built as usual).

use std::{
    env, fs, io,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, bail, Context as _};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let object = out_dir.join("picket-sensors");
    if env::var_os("AYA_BUILD_SKIP").is_some_and(|v| !v.is_empty() && v != "0") {
        // An empty object: `picket` reports at start-up that it needs `--bpf-object`.
        fs::write(&object, b"").context("writing the empty placeholder object")?;
        return Ok(());
    }
    println!("cargo:rerun-if-env-changed=PICKET_EBPF_OBJECT_DIR");
    if let Some(dir) = env::var_os("PICKET_EBPF_OBJECT_DIR").filter(|d| !d.is_empty()) {
        let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
        let built = PathBuf::from(dir).join(&arch).join("picket-sensors.bpf.o");
        if built.is_file() {
            // Only for an object that is there: a path that never exists would make cargo run
            // this script again at every build (an architecture with no object in DIR).
            println!("cargo:rerun-if-changed={}", built.display());
            fs::copy(&built, &object).with_context(|| format!("copying {}", built.display()))?;
            return Ok(());
        }
    }
    // bpf-linker must use the same LLVM major version as the rustc that compiles the eBPF crate.
    // The pinned stable toolchain matches the LLVM bpf-linker is built against (see
    // scripts/setup.sh); RUSTC_BOOTSTRAP lets it use `-Z build-std`, which the BPF target needs.
    println!("cargo:rerun-if-env-changed=PICKET_EBPF_TOOLCHAIN");
    let toolchain = env::var("PICKET_EBPF_TOOLCHAIN").unwrap_or_else(|_| "1.95.0".to_string());
    // SAFETY-free in edition 2021: the build script is single-threaded here.
    env::set_var("RUSTC_BOOTSTRAP", "1");
    // A reproducible object: the same bytes from any checkout, cargo home or rustup directory.
    // Cargo's trim-paths rewrites the paths in the debug information and BTF (the workspace
    // becomes `.`, crates `NAME-VERSION`, the standard library `/rustc/COMMIT`). The released
    // objects of yocto-layer/meta-picket are built the same way (build-ebpf-object.sh).
    env::set_var("CARGO_UNSTABLE_TRIM_PATHS", "true");
    env::set_var("CARGO_PROFILE_RELEASE_TRIM_PATHS", "object");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "picket-ebpf",
            root_dir: "../ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
    .context("building the eBPF sensors (see README.md, 'Requirements', for the toolchain)")?;
    strip_debug(&object)
}

/// Strips the DWARF that the BTF was made from (three quarters of the object, of no use once
/// linked), keeping `.BTF` and `.BTF.ext`, which aya and the verifier read: with LLVM's strip, of
/// the LLVM that bpf-linker is built against, as build-ebpf-object.sh strips the released objects.
fn strip_debug(object: &Path) -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PICKET_LLVM_STRIP");
    let tools = match env::var_os("PICKET_LLVM_STRIP").filter(|s| !s.is_empty()) {
        Some(tool) => vec![tool],
        None => vec!["llvm-strip-22".into(), "llvm-strip".into()],
    };
    for tool in &tools {
        match Command::new(tool).arg("--strip-debug").arg(object).status() {
            Ok(status) if status.success() => return Ok(()),
            Ok(status) => bail!(
                "{} --strip-debug {}: {status}",
                Path::new(tool).display(),
                object.display()
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => bail!("running {}: {e}", Path::new(tool).display()),
        }
    }
    bail!(
        "none of {} was found to strip the eBPF object's debug information: run \
         scripts/setup.sh (LLVM 22), or set PICKET_LLVM_STRIP",
        tools
            .iter()
            .map(|t| Path::new(t).display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}
