//! Links against the build's CPython and embeds its library directory as the binary's
//! run-time search path, so the same libpython loads without LD_LIBRARY_PATH (a
//! distribution's libpython of the same version loads only when that directory cannot
//! be read, and postern then says so).

fn main() {
    let config = pyo3_build_config::get();
    pyo3_build_config::add_libpython_rpath_link_args();
    // DT_RPATH (not RUNPATH) is searched before LD_LIBRARY_PATH as well.
    println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags");
    let executable = config
        .executable()
        .map(str::to_owned)
        .unwrap_or_else(|| "python3".to_owned());
    // Resolve the interpreter's real path (pyenv shims are scripts, not Pythons).
    let real = std::process::Command::new(&executable)
        .args([
            "-c",
            "import sys, os; print(os.path.realpath(sys.executable))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or(executable);
    println!("cargo:rustc-env=POSTERN_PYTHON_EXECUTABLE={real}");
    // Its standard library's real directory: a venv made by another install of the same
    // version (Debian's python3.11 when this is pyenv's) would start the embedded
    // interpreter on that install's library (src/wsgi/interpreter.rs). Empty: not checked.
    let stdlib = std::process::Command::new(&real)
        .args([
            "-c",
            "import os; print(os.path.realpath(os.path.dirname(os.__file__)))",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!("cargo:rustc-env=POSTERN_PYTHON_STDLIB={stdlib}");
    // The directory the rpath names, whose libpython the binary expects to load
    // (src/wsgi/interpreter.rs `libpython_elsewhere`). Empty: not checked.
    let lib_dir = config
        .lib_dir()
        .and_then(|d| std::fs::canonicalize(d).ok())
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    println!("cargo:rustc-env=POSTERN_PYTHON_LIBDIR={lib_dir}");
    println!(
        "cargo:rustc-env=POSTERN_PYTHON_VERSION={}.{}",
        config.version().major,
        config.version().minor
    );
    // Release links: the functions a server runs laid out together, so its processes map
    // fewer pages of the code (src/hot-text.ld, written by benches/hot_text.py).
    if std::env::var("PROFILE").as_deref() == Ok("release")
        && std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
    {
        // The manifest dir at run time, not env!() at compile time: a build script
        // compiled for one checkout is reused by another in a shared target dir.
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        let script = std::path::Path::new(&dir).join("src/hot-text.ld");
        println!("cargo:rerun-if-changed=src/hot-text.ld");
        println!("cargo:rerun-if-env-changed=RUSTFLAGS");
        println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
        if !script.exists() {
            println!(
                "cargo:warning=src/hot-text.ld is missing: the release binary is linked without it (it maps more of its code: more memory, the same behaviour)"
            );
        } else if links_with_lld() {
            println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
        }
        // Relative relocations packed (DT_RELR) where the C library reads them (glibc
        // 2.36+): ld.so reads every relocation at start, so all their pages are mapped.
        // The build host's glibc is the one asked: not for a cross build.
        let native = std::env::var("HOST").ok() == std::env::var("TARGET").ok();
        if native && glibc_has_relr() {
            println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
        }
    }
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo:rerun-if-changed=build.rs");
}

/// Whether this build links with LLD (rust-lld, rustc's default on x86_64 Linux since
/// 1.90, or an lld chosen by the user), the one linker src/hot-text.ld is for: its
/// `INSERT BEFORE .init` keeps a single `.text` there, where GNU ld makes two (the
/// binary runs, but valgrind then reads none of postern's symbols), gold refuses
/// INSERT and mold a SECTIONS script. Asked of the link itself: an empty program linked
/// with this build's rustc, target, flags and linker, whose `.comment` LLD signs
/// ("Linker: LLD"). About a second, for release builds only.
fn links_with_lld() -> bool {
    let Some(out) = std::env::var_os("OUT_DIR").map(std::path::PathBuf::from) else {
        return false;
    };
    let src = out.join("lld_probe.rs");
    let bin = out.join("lld_probe");
    if std::fs::write(&src, "fn main() {}\n").is_err() {
        return false;
    }
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut cmd = std::process::Command::new(rustc);
    cmd.arg(&src).arg("-o").arg(&bin);
    if let Ok(target) = std::env::var("TARGET") {
        cmd.arg("--target").arg(target);
    }
    if let Ok(flags) = std::env::var("CARGO_ENCODED_RUSTFLAGS") {
        cmd.args(flags.split('\x1f').filter(|f| !f.is_empty()));
    }
    if let Ok(linker) = std::env::var("RUSTC_LINKER") {
        cmd.arg(format!("-Clinker={linker}"));
    }
    let linked = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let lld =
        linked && std::fs::read(&bin).is_ok_and(|b| b.windows(12).any(|w| w == b"Linker: LLD "));
    if !lld {
        println!(
            "cargo:warning=this build does not link with LLD: the release binary is linked without src/hot-text.ld (it maps more of its code: more memory, the same behaviour)"
        );
    }
    lld
}

/// Whether the build host's glibc (which the binary runs against: it links the build's
/// libpython) reads DT_RELR relocations: 2.36 and later.
fn glibc_has_relr() -> bool {
    std::process::Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()
        .and_then(|o| {
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            let (major, minor) = out.trim().strip_prefix("glibc ")?.split_once('.')?;
            let minor: u32 = minor.split('.').next()?.parse().ok()?;
            Some((major.parse::<u32>().ok()?, minor) >= (2, 36))
        })
        .unwrap_or(false)
}
