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
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hot-text.ld");
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
        println!("cargo:rerun-if-changed=hot-text.ld");
    }
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo:rerun-if-changed=build.rs");
}
