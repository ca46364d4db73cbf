//! Idempotent set-up of the toolchain pieces the BPF build needs, and a
//! check of the kernel. Each step first checks whether it is already done,
//! so a second run takes well under a second.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, bail};

use crate::util::{on_path, run_cmd};

/// bpf-linker release known to build with this nightly's LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> anyhow::Result<ExitCode> {
    ensure_build_tools()?;
    check_kernel();
    Ok(ExitCode::SUCCESS)
}

/// rust-src for the nightly and a working bpf-linker.
pub fn ensure_build_tools() -> anyhow::Result<()> {
    let sysroot = nightly_sysroot()?;
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        eprintln!("setup: adding rust-src to the nightly toolchain");
        run_cmd(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    if !bpf_linker_ok() {
        install_bpf_linker(&sysroot)?;
    }
    Ok(())
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("running rustc +nightly (is rustup installed?)")?;
    if !out.status.success() {
        bail!(
            "no nightly toolchain: the BPF programs need one (rustup toolchain install nightly): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
}

/// Builds bpf-linker against the libLLVM that ships inside the nightly
/// toolchain (no LLVM 22 is packaged for this Debian). The binary finds
/// libLLVM through its rpath, so the directory must stay put: it lives under
/// the user's data directory, not /tmp.
fn install_bpf_linker(sysroot: &Path) -> anyhow::Result<()> {
    let lib = std::fs::read_dir(sysroot.join("lib"))
        .context("listing the nightly's lib directory")?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .context("the nightly toolchain ships no libLLVM.so.* to build bpf-linker against")?;
    let prefix = llvm_prefix()?;
    let lib_dir = prefix.join("lib");
    std::fs::create_dir_all(&lib_dir).with_context(|| format!("creating {}", lib_dir.display()))?;
    let file_name = lib.file_name().context("libLLVM path has no file name")?;
    for name in [Path::new("libLLVM.so"), Path::new(file_name)] {
        let link = lib_dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&lib, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {} (about a minute)",
        lib.display()
    );
    run_cmd(
        Command::new("cargo")
            .args([
                "+nightly",
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", &prefix),
    )?;
    if !bpf_linker_ok() {
        bail!("bpf-linker was installed but does not run; is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

fn llvm_prefix() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_DATA_HOME") {
        Some(d) => PathBuf::from(d),
        None => {
            PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".local/share")
        }
    };
    Ok(base.join("qprof/llvm-22"))
}

/// Reports kernel features; missing ones are warnings here (qprof itself
/// refuses to start with a clear message).
pub fn check_kernel() {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        eprintln!(
            "setup: WARNING: no kernel BTF (/sys/kernel/btf/vmlinux); qprof needs Linux >= 5.15 with BTF"
        );
    }
    if !Path::new("/sys/kernel/tracing/events").is_dir() {
        eprintln!(
            "setup: tracefs is not mounted at /sys/kernel/tracing; qprof mounts it when run as root"
        );
    }
    if !on_path("bpf-linker") {
        eprintln!("setup: WARNING: bpf-linker is not on PATH (add ~/.cargo/bin)");
    }
}
