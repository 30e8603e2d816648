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

/// How long a stopping postern with an ASGI app may take, at most: the master waits
/// `--graceful-timeout` + `--lifespan-timeout` + 7.5 s for its workers before it kills
/// them (README "ASGI apps", Stopping; `asgi::stop::past_graceful` + the master's
/// second), since lifespan shutdown and the cancelling of the tasks the app left
/// running come after the drain. A stop budget (systemd's TimeoutStopSec, the pod's
/// terminationGracePeriodSeconds) shorter than this SIGKILLs postern mid-shutdown.
fn asgi_stop_secs(graceful: u64, lifespan: u64) -> f64 {
    (graceful + lifespan) as f64 + 7.5
}

/// The unit gives postern time for a whole stop: the drain (--graceful-timeout) and,
/// with an ASGI app, lifespan shutdown and the leftover tasks after it.
#[test]
fn systemd_stop_timeout_outlasts_a_graceful_asgi_stop() {
    let text = deploy_file("systemd/postern.service");
    // ExecStart's continuation lines, joined.
    let exec = text
        .replace("\\\n", " ")
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("ExecStart")
        .to_owned();
    let args: Vec<&str> = exec.split_whitespace().collect();
    let arg = |name: &str| -> u64 {
        let i = args
            .iter()
            .position(|a| *a == name)
            .unwrap_or_else(|| panic!("ExecStart has no {name}: {exec}"));
        args[i + 1].parse().unwrap()
    };
    let (graceful, lifespan) = (arg("--graceful-timeout"), arg("--lifespan-timeout"));
    let stop: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec")
        .parse()
        .unwrap();
    assert!(
        stop > graceful,
        "TimeoutStopSec {stop} must outlast --graceful-timeout {graceful}"
    );
    assert!(
        stop as f64 >= asgi_stop_secs(graceful, lifespan),
        "TimeoutStopSec {stop} must outlast an ASGI stop with --graceful-timeout {graceful} --lifespan-timeout {lifespan}"
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
        // The master alone gets SIGTERM and stops its workers in order (the listen
        // queue is served); control-group would signal them all at once.
        "KillMode=mixed",
    ] {
        assert!(set.contains(&want), "postern.service lacks `{want}`");
    }
    // systemd sets no $PWD: without it postern takes a relative path (a reload's
    // --config) from WorkingDirectory= with its symlinks resolved, so a switched
    // `current` would be missed. The unit sets PWD to the same path.
    let dir = set
        .iter()
        .find_map(|l| l.strip_prefix("WorkingDirectory="))
        .expect("postern.service has WorkingDirectory=");
    let pwd = format!("Environment=PWD={dir}");
    assert!(set.contains(&pwd.as_str()), "postern.service lacks `{pwd}`");
}

/// The venv with `kubernetes-validate` (it carries the Kubernetes schemas, so no
/// network is needed): `$POSTERN_K8S_VENV`, else `target/k8s-venv` (.ci/run makes it).
fn k8s_venv() -> Option<PathBuf> {
    let venv = std::env::var_os("POSTERN_K8S_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/k8s-venv"));
    if venv.join("bin/kubernetes-validate").exists() {
        return Some(venv);
    }
    let how = format!(
        "python3 -m venv {0} && {0}/bin/pip install kubernetes-validate",
        venv.display()
    );
    if in_ci() {
        panic!("kubernetes-validate is not installed ({how}), and CI=true");
    }
    eprintln!("\n!!!!! SKIPPING: kubernetes-validate is not installed ({how}); this test did NOT run !!!!!\n");
    None
}

fn k8s_file() -> PathBuf {
    root().join("deploy/kubernetes/postern.yaml")
}

/// Every document of the manifest, as JSON (parsed by the venv's PyYAML).
fn k8s_docs(venv: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(k8s_file())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn kind<'a>(docs: &'a [serde_json::Value], kind: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes/postern.yaml"))
}

#[test]
fn kubernetes_manifests_pass_the_schema_validator() {
    let Some(venv) = k8s_venv() else { return };
    let validate = |file: &Path| {
        Command::new(venv.join("bin/kubernetes-validate"))
            .arg("--strict")
            .arg(file)
            .output()
            .unwrap()
    };
    let out = validate(&k8s_file());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kubernetes-validate --strict:\n{said}"
    );
    for k in [
        "configmap/",
        "deployment/",
        "service/",
        "poddisruptionbudget/",
        "horizontalpodautoscaler/",
    ] {
        assert!(
            said.contains(&format!("passed for resource {k}")),
            "{k}: {said}"
        );
    }
    // The check is real: a misspelt field fails strict validation.
    let dir = tempdir();
    let bad = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(k8s_file()).unwrap();
    std::fs::write(&bad, text.replace("readinessProbe:", "readynessProbe:")).unwrap();
    assert!(!validate(&bad).status.success(), "a misspelt field passed");
}

/// What the Deployment promises: probes, resources, the termination order.
#[test]
fn kubernetes_deployment_drains_before_it_is_killed() {
    let Some(venv) = k8s_venv() else { return };
    let docs = k8s_docs(&venv);
    let pod = &kind(&docs, "Deployment")["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().unwrap();
    let find = |name: &str| {
        containers
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} container"))
    };
    let (postern, nginx) = (find("postern"), find("nginx"));
    let args: Vec<&str> = postern["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let arg = |name: &str| {
        let i = args
            .iter()
            .position(|a| *a == name)
            .unwrap_or_else(|| panic!("no {name}"));
        args[i + 1]
    };
    let graceful: u64 = arg("--graceful-timeout").parse().unwrap();
    assert!(
        arg("--stats").starts_with("127.0.0.1:"),
        "stats must stay on loopback"
    );
    assert_eq!(arg("--uwsgi"), "unix:/run/postern/postern.sock");
    let sleep = |c: &serde_json::Value| -> u64 {
        let cmd = c["lifecycle"]["preStop"]["exec"]["command"].to_string();
        let at = cmd.find("sleep").expect("preStop sleeps first");
        cmd[at + 5..]
            .trim_start_matches(|ch: char| !ch.is_ascii_digit())
            .split(|ch: char| !ch.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace > sleep(postern) + graceful,
        "terminationGracePeriodSeconds {grace} must outlast preStop + --graceful-timeout {graceful}"
    );
    // An ASGI app's stop goes on past the drain (lifespan shutdown, the tasks it left
    // running): the pod's budget covers that too.
    let lifespan: u64 = arg("--lifespan-timeout").parse().unwrap();
    assert!(
        grace as f64 >= sleep(postern) as f64 + asgi_stop_secs(graceful, lifespan),
        "terminationGracePeriodSeconds {grace} must outlast preStop + an ASGI stop with --graceful-timeout {graceful} --lifespan-timeout {lifespan}"
    );
    // nginx quits gracefully as postern drains: it finishes what is in flight and
    // takes nothing new, which postern would refuse.
    // regression (probe 402): nginx's preStop waited for postern's socket to go, and
    // answered every request that came meanwhile 502 (connect() refused).
    let nginx_stop = nginx["lifecycle"]["preStop"]["exec"]["command"].to_string();
    assert!(!nginx_stop.contains("postern.sock"), "{nginx_stop}");
    assert_eq!(sleep(nginx), sleep(postern), "{nginx_stop}");
    for c in [postern, nginx] {
        for probe in ["readinessProbe", "livenessProbe"] {
            assert!(c[probe].is_object(), "{} has no {probe}", c["name"]);
        }
        assert!(
            c["resources"]["requests"]["cpu"].is_string(),
            "{}",
            c["name"]
        );
        assert!(
            c["resources"]["limits"]["memory"].is_string(),
            "{}",
            c["name"]
        );
    }
    let mounts = |c: &serde_json::Value| c["volumeMounts"].to_string();
    assert!(
        mounts(postern).contains("\"postern-socket\"")
            && mounts(nginx).contains("\"postern-socket\"")
    );
    assert_eq!(
        kind(&docs, "PodDisruptionBudget")["spec"]["maxUnavailable"],
        1
    );
    assert_eq!(
        kind(&docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"],
        kind(&docs, "Deployment")["metadata"]["name"]
    );
}

/// The nginx.conf of the ConfigMap, adapted (socket, ports, pid and temp paths), passes
/// `nginx -t` and then serves: the app through the socket, nginx's own health check, and
/// postern's /metrics through the metrics port.
#[test]
fn kubernetes_configmap_nginx_conf_passes_nginx_t_and_serves() {
    let Some(venv) = k8s_venv() else { return };
    let Some(bin) = nginx_bin() else { return };
    let docs = k8s_docs(&venv);
    let conf = kind(&docs, "ConfigMap")["data"]["nginx.conf"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = tempdir();
    let stats_port = free_port();
    let postern = Spawn::unix(dir.path(), &testapp())
        .args(["--stats", &format!("127.0.0.1:{stats_port}")])
        .start();
    let Addr::Unix(sock) = &postern.addr else {
        unreachable!()
    };
    /// Stops nginx the graceful way (SIGQUIT: the master takes its workers along; a
    /// SIGKILLed master would leave them running), then for sure.
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            // SAFETY: kill(2) on our own child.
            unsafe {
                libc::kill(self.0.id() as i32, libc::SIGQUIT);
            }
            for _ in 0..250 {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let get_within = |port: u16, path: &str, secs: u64| -> Option<Response> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(secs)))
            .ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).ok()?;
        parse_http(&out)
    };
    // The free ports are released before nginx binds them, so another process may take
    // one in between: nginx then exits with "Address already in use", and new ports
    // are tried (five times in all; then the test fails with nginx's words).
    let get = |port: u16, path: &str| get_within(port, path, 20);
    let d = dir.path().display().to_string();
    let mut tries = 0;
    let (_stop, port, metrics_port, health) = loop {
        tries += 1;
        let (port, metrics_port) = (free_port(), free_port());
        let mut adapted = conf.clone();
        for (from, to) in [
            ("/run/postern/postern.sock", sock.display().to_string()),
            ("listen 8080;", format!("listen 127.0.0.1:{port};")),
            ("listen 9192;", format!("listen 127.0.0.1:{metrics_port};")),
            ("127.0.0.1:9191", format!("127.0.0.1:{stats_port}")),
            ("pid /tmp/nginx.pid;", format!("pid {d}/nginx.pid;")),
            ("/tmp/nginx-", format!("{d}/nginx-")),
            ("error_log /dev/stderr", format!("error_log {d}/error.log")),
            (
                "access_log /dev/stdout",
                format!("access_log {d}/access.log"),
            ),
        ] {
            assert!(
                adapted.contains(from),
                "the ConfigMap's nginx.conf has no `{from}`"
            );
            adapted = adapted.replace(from, &to);
        }
        let file = dir.path().join("nginx.conf");
        std::fs::write(&file, &adapted).unwrap();
        let _ = std::fs::remove_file(dir.path().join("error.log"));
        let t = Command::new(&bin)
            .arg("-t")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&file)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&t.stderr).into_owned();
        assert!(
            t.status.success() && said.contains("test is successful"),
            "nginx -t:\n{said}"
        );
        let nginx = Command::new(&bin)
            .args(["-g", "daemon off;", "-p"])
            .arg(dir.path())
            .arg("-c")
            .arg(&file)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stop = Stop(nginx);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        // A short wait for the answer: a process that took the port may accept and
        // say nothing.
        let health = loop {
            if let Ok(Some(_)) = stop.0.try_wait() {
                break None;
            }
            if let Some(r) = get_within(port, "/nginx-health", 1) {
                break Some(r);
            }
            assert!(std::time::Instant::now() < deadline, "nginx did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        if let Some(health) = health {
            break (stop, port, metrics_port, health);
        }
        let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
        assert!(
            tries < 5 && log.contains("Address already in use"),
            "nginx exited at start:\n{log}"
        );
    };
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    let env = get(port, "/env").expect("an answer");
    assert_eq!(env.status, 200, "{}", env.text());
    assert!(is_request_id(
        env.json()["HTTP_X_REQUEST_ID"].as_str().unwrap()
    ));
    let metrics = get(metrics_port, "/metrics").expect("an answer");
    assert_eq!(metrics.status, 200, "{}", metrics.text());
    assert!(metrics.text().contains("postern_"), "{}", metrics.text());
    let status = get(metrics_port, "/status").expect("an answer");
    assert_eq!(status.status, 404, "only /metrics leaves the pod");
}

/// The Dockerfile is not built here (no container engine), so check what can be
/// checked: every file it COPYs from the repo exists and is not excluded by
/// .dockerignore, the app it runs exists, and its build commands are the README's.
#[test]
fn dockerfile_copies_files_that_exist_and_builds_like_the_readme() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    let ignored: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    // Continuation lines joined, comments dropped.
    let mut steps = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && cur.is_empty()) {
            continue;
        }
        cur.push_str(t.trim_end_matches('\\'));
        cur.push(' ');
        if !t.ends_with('\\') {
            steps.push(cur.trim().to_owned());
            cur.clear();
        }
    }
    let mut copied = 0;
    let mut cargo_builds = 0;
    for step in &steps {
        let (op, rest) = step.split_once(' ').unwrap_or((step, ""));
        match op {
            "COPY" if !rest.starts_with("--from") => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                for src in &words[..words.len() - 1] {
                    assert!(
                        root().join(src).exists(),
                        "Dockerfile copies {src}, which does not exist"
                    );
                    let top = src.split('/').next().unwrap();
                    assert!(
                        !ignored.contains(&top) && !ignored.contains(src),
                        "{src} is in .dockerignore"
                    );
                    copied += 1;
                }
            }
            "RUN" => {
                for cmd in rest.split("&&").map(str::trim) {
                    if cmd.starts_with("cargo build") {
                        cargo_builds += 1;
                        assert!(
                            readme.contains(cmd),
                            "the README does not build with `{cmd}`"
                        );
                    }
                }
            }
            "ENV" if rest.starts_with("PYO3_PYTHON=") => {
                assert!(
                    readme.contains("PYO3_PYTHON="),
                    "the README does not mention PYO3_PYTHON"
                );
            }
            "CMD" => {
                let cmd: Vec<String> = serde_json::from_str(rest).expect("CMD in exec form");
                let app = cmd[0].split(':').next().unwrap();
                assert!(
                    root().join(app).exists(),
                    "the image runs {app}, which does not exist"
                );
            }
            _ => {}
        }
    }
    assert!(copied >= 5 && cargo_builds == 1, "{steps:#?}");
    assert!(steps
        .iter()
        .any(|s| s.starts_with("FROM") && s.ends_with("AS build")));
    assert!(
        steps.iter().any(|s| s.starts_with("COPY --from=build")),
        "not multi-stage"
    );
}

/// `systemd-analyze syscall-filter`'s groups, expanded: group name → system calls.
fn syscall_groups(analyze: &Path) -> std::collections::HashMap<String, Vec<String>> {
    let out = Command::new(analyze)
        .arg("syscall-filter")
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut groups: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut current = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let t = line.trim();
        if line.starts_with('@') {
            current = Some(t.to_owned());
            groups.insert(t.to_owned(), Vec::new());
        } else if let (Some(g), false) = (&current, t.is_empty() || t.starts_with('#')) {
            groups.get_mut(g).unwrap().push(t.to_owned());
        }
    }
    groups
}

fn expand(
    groups: &std::collections::HashMap<String, Vec<String>>,
    g: &str,
) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
    for m in groups.get(g).unwrap_or_else(|| panic!("no group {g}")) {
        if m.starts_with('@') {
            out.extend(expand(groups, m));
        } else {
            out.insert(m.clone());
        }
    }
    out
}

/// The unit's `SystemCallFilter=` is exercised without systemd: postern runs under
/// strace through a master and two workers, requests over uwsgi and FastCGI, the stats
/// endpoint, a reload and a graceful stop, and every system call it made must be in the
/// unit's allow list and in none of its deny lists.
#[test]
fn systemd_syscall_filter_allows_every_call_postern_makes() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let strace = ["/usr/bin/strace", "/bin/strace"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(strace) = strace else {
        if in_ci() {
            panic!("strace is missing (apt-get install strace), and CI=true");
        }
        eprintln!("\n!!!!! SKIPPING: strace is missing; this test did NOT run !!!!!\n");
        return;
    };
    let unit = deploy_file("systemd/postern.service");
    let filters: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("SystemCallFilter="))
        .collect();
    assert_eq!(filters[0], "@system-service", "{filters:?}");
    let groups = syscall_groups(&analyze);
    let allowed = expand(&groups, filters[0]);
    // After the allow list, `~` lines take calls out and plain lines put calls back
    // (systemd merges them in order; this unit puts back only after taking out).
    let back: std::collections::HashSet<String> = filters[1..]
        .iter()
        .filter(|f| !f.starts_with('~'))
        .flat_map(|f| f.split_whitespace())
        .flat_map(|g| match g.starts_with('@') {
            true => expand(&groups, g),
            false => [g.to_owned()].into(),
        })
        .collect();
    let denied: Vec<(String, std::collections::HashSet<String>)> = filters[1..]
        .iter()
        .filter_map(|f| f.strip_prefix('~'))
        .flat_map(|f| f.split_whitespace())
        .map(|g| {
            let set = expand(&groups, g);
            (g.to_owned(), set.difference(&back).cloned().collect())
        })
        .collect();

    let dir = tempdir();
    let trace = dir.path().join("strace.out");
    let log = dir.path().join("postern.log");
    let pidfile = dir.path().join("postern.pid");
    let (uwsgi, fcgi, stats) = (free_port(), free_port(), free_port());
    let mut child = Command::new(strace)
        .args(["-f", "-qq", "-o"])
        .arg(&trace)
        .arg(postern_bin())
        .arg(testapp())
        .args(["--workers", "2", "--threads", "2"])
        // The one opt-in that makes a system call of its own: sched_setscheduler
        // around the waits (put back from @resources in the unit).
        .arg("--sched-batch=waits")
        .args(["--uwsgi", &format!("127.0.0.1:{uwsgi}")])
        .args(["--fastcgi", &format!("127.0.0.1:{fcgi}")])
        .args(["--stats", &format!("127.0.0.1:{stats}")])
        .arg("--pidfile")
        .arg(&pidfile)
        .env_remove("VIRTUAL_ENV")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let wait_for = |needle: &str, times: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while logs().matches(needle).count() < times {
            assert!(
                std::time::Instant::now() < deadline,
                "no `{needle}` x{times}:\n{}",
                logs()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let child = Kill(&mut child);
    wait_for("all 2 workers ready", 1);
    let master: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let get = uwsgi_packet(&[("REQUEST_METHOD", "GET"), ("PATH_INFO", "/env")]);
    for _ in 0..4 {
        let r = parse_http(&raw(&Addr::Tcp(uwsgi), &get)).expect("uwsgi answer");
        assert_eq!(r.status, 200);
        let out = raw(&Addr::Tcp(fcgi), &fcgi::get(1, false, "/env"));
        assert!(!out.is_empty(), "no FastCGI answer");
    }
    let metrics = raw(
        &Addr::Tcp(stats),
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(String::from_utf8_lossy(&metrics).contains("postern_"));
    // SAFETY: kill(2) on the master we started (its pid from --pidfile).
    unsafe { libc::kill(master, libc::SIGHUP) };
    wait_for("all 2 workers ready", 2);
    assert_eq!(
        parse_http(&raw(&Addr::Tcp(uwsgi), &get)).unwrap().status,
        200
    );
    unsafe { libc::kill(master, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.0.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "postern did not stop:\n{}",
            logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(child);

    let text = std::fs::read_to_string(&trace).unwrap();
    let mut used = std::collections::BTreeSet::new();
    for line in text.lines() {
        // `PID name(args...` (a call, or its start when another thread interrupts it).
        let rest = line.split_once(' ').map_or("", |(_, r)| r.trim_start());
        if let Some((name, _)) = rest.split_once('(') {
            if !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                used.insert(name.to_owned());
            }
        }
    }
    assert!(
        used.contains("accept4") && (used.contains("clone3") || used.contains("clone")),
        "{used:?}"
    );
    let outside: Vec<&String> = used.iter().filter(|s| !allowed.contains(*s)).collect();
    assert!(outside.is_empty(), "not in @system-service: {outside:?}");
    for (g, set) in &denied {
        let hit: Vec<&String> = used.iter().filter(|s| set.contains(*s)).collect();
        assert!(hit.is_empty(), "postern calls {hit:?}, which ~{g} denies");
    }
    eprintln!(
        "{} distinct system calls, all allowed: {used:?}",
        used.len()
    );
}

/// A container whose command is postern alone: as PID 1 without a master it says that
/// orphaned processes are not reaped (the master reaps them); with `--master` it does
/// not. Needs `unshare --pid` (root): fails under `CI=true` without it, skips loudly
/// otherwise.
// regression (probe 402): 20 requests running `sh -c 'sleep 0.2 & exit 0'` left 20
// zombies under a single process as PID 1, with nothing said.
#[test]
fn a_single_process_as_pid_1_says_orphans_are_not_reaped() {
    let check = |extra: &[&str]| {
        Command::new("unshare")
            .args(["--pid", "--fork"])
            .arg(postern_bin())
            .arg("examples/hello.py")
            .args(["--uwsgi", &format!("127.0.0.1:{}", free_port()), "--check"])
            .args(extra)
            .current_dir(root())
            .output()
    };
    let said = "postern runs as PID 1 (a container's command) without a master";
    let out = match check(&[]) {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        other => {
            assert!(!in_ci(), "unshare --pid is needed under CI=true: {other:?}");
            eprintln!("SKIPPED: unshare --pid did not run postern: {other:?}");
            return;
        }
    };
    assert!(out.contains(said), "{out}");
    let out = check(&["--master"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && !text.contains(said), "{text}");
}
