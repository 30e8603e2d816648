//! Links against the build's CPython and embeds its library directory as the binary's
//! run-time search path, so the same libpython loads without LD_LIBRARY_PATH (and a
//! distribution's libpython of the same version is never picked up by accident).

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
    println!(
        "cargo:rustc-env=POSTERN_PYTHON_VERSION={}.{}",
        config.version().major,
        config.version().minor
    );
    // Release links: the functions a server runs laid out together, so its processes map
    // fewer pages of the code (hot-text.ld, written by benches/hot_text.py).
    if std::env::var("PROFILE").as_deref() == Ok("release")
        && std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux")
    {
        // The manifest dir at run time, not env!() at compile time: a build script
        // compiled for one checkout is reused by another in a shared target dir.
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        let script = std::path::Path::new(&dir).join("hot-text.ld");
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
        println!("cargo:rerun-if-changed=hot-text.ld");
        // Relative relocations packed (DT_RELR) where the C library reads them (glibc
        // 2.36+): ld.so reads every relocation at start, so all their pages are mapped.
        if glibc_has_relr() {
            println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
        }
    }
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo:rerun-if-changed=build.rs");
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
