//! A private Apache httpd 2.4 for the black-box tests: its own config, logs, pid file
//! and port in a temp dir (never the system service or /etc/apache2), started with
//! `apache2 -f CONF -k start` and stopped by the pid in its PidFile on drop. Plus a
//! postern started with `--fastcgi` or `--uwsgi` on a Unix socket Apache's children
//! (www-data when run as root) can connect to, and a tiny raw HTTP/1.1 client.

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{free_port, in_ci, parse_http, postern_bin, root, Addr, Postern, Response};

/// Where Apache may be installed: (binary, modules directory).
const LOCATIONS: &[(&str, &str)] = &[
    ("/usr/sbin/apache2", "/usr/lib/apache2/modules"),
    ("/usr/sbin/httpd", "/usr/lib64/httpd/modules"),
    ("/usr/sbin/httpd", "/usr/lib/httpd/modules"),
];

/// Modules the test configs load: (module name, file). Ones compiled into the binary
/// (Debian builds in unixd and log_config) are skipped by `<IfModule !name>`.
const MODULES: &[(&str, &str)] = &[
    ("mpm_event_module", "mod_mpm_event.so"),
    ("authz_core_module", "mod_authz_core.so"),
    ("unixd_module", "mod_unixd.so"),
    ("log_config_module", "mod_log_config.so"),
    ("alias_module", "mod_alias.so"),
    ("env_module", "mod_env.so"),
    ("setenvif_module", "mod_setenvif.so"),
    ("headers_module", "mod_headers.so"),
    ("proxy_module", "mod_proxy.so"),
    ("proxy_fcgi_module", "mod_proxy_fcgi.so"),
    ("proxy_uwsgi_module", "mod_proxy_uwsgi.so"),
];

/// An installed Apache httpd with the modules the tests need.
#[derive(Clone, Debug)]
pub struct ApacheBin {
    pub bin: PathBuf,
    pub modules: PathBuf,
}

fn missing(what: &str) -> Option<ApacheBin> {
    if in_ci() {
        panic!("{what}, and CI=true: tests that need Apache must not skip (apt-get install apache2 in .ci/run)");
    }
    eprintln!("\n!!!!! SKIPPING: {what} (apt-get install apache2); this test did NOT run !!!!!\n");
    None
}

/// Where Apache is, if installed with mod_proxy_fcgi and mod_proxy_uwsgi. In CI a
/// missing Apache (or module) fails the test; locally it skips with a loud message.
pub fn apache_bin() -> Option<ApacheBin> {
    let Some((bin, modules)) = LOCATIONS
        .iter()
        .find(|(b, m)| Path::new(b).exists() && Path::new(m).is_dir())
    else {
        return missing("Apache httpd is not installed (no /usr/sbin/apache2)");
    };
    let builtin = Command::new(bin)
        .arg("-l")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for (name, file) in MODULES {
        let compiled_in = builtin.contains(&file.replace(".so", ".c"));
        if !compiled_in && !Path::new(modules).join(file).exists() {
            return missing(&format!(
                "the Apache module {name} ({modules}/{file}) is missing"
            ));
        }
    }
    Some(ApacheBin {
        bin: PathBuf::from(bin),
        modules: PathBuf::from(modules),
    })
}

/// A file from `deploy/apache/` with its `@NAME@` placeholders replaced. Panics if a
/// placeholder is left in a directive (comments may keep them).
pub fn deploy_conf(name: &str, vars: &[(&str, &str)]) -> String {
    let path = root().join("deploy/apache").join(name);
    let mut text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    for (k, v) in vars {
        let key = format!("@{k}@");
        assert!(
            text.contains(&key),
            "{} has no {key} placeholder",
            path.display()
        );
        text = text.replace(&key, v);
    }
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with('#') {
            continue;
        }
        let mut parts = l.split('@');
        parts.next();
        if let Some(p) = parts.next() {
            let unreplaced = !p.is_empty()
                && p.len() < 30
                && p.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
                && parts.next().is_some();
            assert!(
                !unreplaced,
                "{}: placeholder @{p}@ not replaced in {line:?}",
                path.display()
            );
        }
    }
    text
}

/// Replaces `from` by `to` in a config, panicking if `from` is not there (so a test
/// that edits a deploy file notices when the file changes under it).
pub fn edit(conf: &str, from: &str, to: &str) -> String {
    assert!(
        conf.contains(from),
        "expected {from:?} in the config:\n{conf}"
    );
    conf.replace(from, to)
}

/// A user and a group for Apache's children when it starts as root.
fn unprivileged() -> Option<(&'static str, &'static str)> {
    // SAFETY: getpwnam/getgrnam with NUL-terminated strings; only the NULL-ness of
    // the result is used.
    let has_user =
        |n: &str| unsafe { !libc::getpwnam(CString::new(n).unwrap().as_ptr()).is_null() };
    let has_group =
        |n: &str| unsafe { !libc::getgrnam(CString::new(n).unwrap().as_ptr()).is_null() };
    let user = ["www-data", "apache", "nobody"]
        .into_iter()
        .find(|u| has_user(u))?;
    let group = ["www-data", "apache", "nogroup", "nobody"]
        .into_iter()
        .find(|g| has_group(g))?;
    Some((user, group))
}

/// A private Apache httpd.
pub struct Apache {
    pub port: u16,
    pub dir: PathBuf,
    pub conf: PathBuf,
    pid: Option<i32>,
}

impl Apache {
    /// Starts Apache with `site` (e.g. a `deploy/apache/` file after [`deploy_conf`])
    /// after the server-wide settings. The error log is at `info`, with mod_proxy at
    /// `debug` (connection reuse) and mod_proxy_fcgi at `trace8` (every variable sent).
    pub fn start(bin: &ApacheBin, parent: &Path, site: &str) -> Apache {
        let port = free_port();
        let dir = parent.join(format!("apache-{port}"));
        std::fs::create_dir_all(dir.join("htdocs")).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = dir.display().to_string();
        let user = if unsafe { libc::geteuid() } == 0 {
            let (u, g) = unprivileged().expect("no www-data/nobody user for Apache's children");
            format!("User {u}\nGroup {g}")
        } else {
            String::new()
        };
        let mut modules = String::new();
        for (name, file) in MODULES {
            modules.push_str(&format!(
                "<IfModule !{name}>\n    LoadModule {name} {}/{file}\n</IfModule>\n",
                bin.modules.display()
            ));
        }
        let conf = format!(
            r#"# Written by protocol-tests/src/apache.rs for one test.
ServerRoot "{d}"
ServerName localhost
Listen 127.0.0.1:{port}
PidFile "{d}/httpd.pid"
DefaultRuntimeDir "{d}"
Mutex file:{d}
ErrorLog "{d}/error.log"
LogLevel info proxy:debug proxy_fcgi:trace8
{user}
{modules}
DocumentRoot "{d}/htdocs"
# One child, so that connection reuse is easy to see; enough threads for the
# concurrent tests.
StartServers 1
ServerLimit 1
ThreadsPerChild 32
MaxRequestWorkers 32
MinSpareThreads 1
MaxSpareThreads 64
Timeout 60
KeepAlive On
LogFormat "%h \"%r\" %>s %b %Dus" postern
CustomLog "{d}/access.log" postern

# ---- site ----
{site}
"#
        );
        let conf_path = dir.join("httpd.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let out = Command::new(&bin.bin)
            .arg("-f")
            .arg(&conf_path)
            .args(["-k", "start"])
            // Apache passes its own PATH and LD_LIBRARY_PATH on to backends: keep
            // cargo's out of the requests.
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("LANG", "C")
            .stdin(Stdio::null())
            .output()
            .expect("running apache2 -k start");
        let mut a = Apache {
            port,
            dir,
            conf: conf_path,
            pid: None,
        };
        if !out.status.success() {
            panic!(
                "apache2 -k start failed ({}): {}{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                a.error_log()
            );
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if a.pid.is_none() {
                a.pid = std::fs::read_to_string(a.dir.join("httpd.pid"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
            }
            if a.pid.is_some() && TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "Apache did not start listening on {port}:\n{}",
                a.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The Host header the client sends (with the port, as browsers do).
    pub fn host(&self) -> String {
        format!("localhost:{}", self.port)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    /// The FastCGI params mod_proxy_fcgi sent for every request so far (from its
    /// trace8 `AH01062: sending env var 'K' value 'V'` lines), one list per request.
    /// Values are as Apache logs them (non-ASCII bytes as `\xNN`).
    pub fn fcgi_params_sent(&self) -> Vec<Vec<(String, String)>> {
        let mut out: Vec<Vec<(String, String)>> = Vec::new();
        let mut last_client = String::new();
        for line in self.error_log().lines() {
            let Some(at) = line.find("AH01062: sending env var '") else {
                continue;
            };
            // "[time] [module:level] [pid P:tid T] file(line): [client IP:PORT] AH01062: ..."
            let client = line.split(']').nth(3).unwrap_or_default().to_owned();
            let rest = &line[at + "AH01062: sending env var '".len()..];
            let Some((k, v)) = rest.split_once("' value '") else {
                continue;
            };
            let v = v.strip_suffix('\'').unwrap_or(v);
            // A new request: another client connection, or a variable seen again.
            let first = out.last().is_none_or(|r| r.iter().any(|(key, _)| key == k));
            if first || client != last_client {
                out.push(Vec::new());
            }
            last_client = client;
            out.last_mut().unwrap().push((k.to_owned(), v.to_owned()));
        }
        out
    }

    /// How many new connections mod_proxy opened to a Unix-socket backend so far.
    pub fn backend_connects(&self) -> usize {
        self.error_log()
            .lines()
            .filter(|l| l.contains("AH02823"))
            .count()
    }

    /// Sends raw bytes and returns everything until EOF.
    pub fn raw(&self, req: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(req).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        out
    }

    fn parse(&self, resp: &[u8]) -> Response {
        parse_http(resp).unwrap_or_else(|| {
            panic!(
                "incomplete HTTP response from Apache: {:?}\nApache error log (tail):\n{}",
                String::from_utf8_lossy(resp),
                tail(&self.error_log(), 40)
            )
        })
    }

    /// One HTTP/1.1 request (`Connection: close`); headers are sent as given, plus a
    /// Content-Length for POST/PUT or a non-empty body.
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.host()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.parse(&self.raw(&bytes))
    }

    pub fn get(&self, target: &str) -> Response {
        self.request("GET", target, &[], b"")
    }

    /// A request whose body is sent with `Transfer-Encoding: chunked`, one chunk per
    /// element of `chunks`, with `pause` between them (so that Apache cannot have the
    /// whole body before it starts talking to the backend).
    pub fn request_chunked(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        chunks: &[&[u8]],
        pause: Duration,
    ) -> Response {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n",
            self.host()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        for c in chunks {
            if c.is_empty() {
                continue;
            }
            std::thread::sleep(pause);
            let mut b = format!("{:x}\r\n", c.len()).into_bytes();
            b.extend_from_slice(c);
            b.extend_from_slice(b"\r\n");
            // Apache may answer (and close) early, e.g. 411: keep what it said.
            if s.write_all(&b).is_err() {
                break;
            }
        }
        std::thread::sleep(pause);
        let _ = s.write_all(b"0\r\n\r\n");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        self.parse(&out)
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        let pid = self.pid.or_else(|| {
            std::fs::read_to_string(self.dir.join("httpd.pid"))
                .ok()
                .and_then(|s| s.trim().parse().ok())
        });
        if let Some(pid) = pid {
            // What `apache2 -k stop` does: SIGTERM to the parent (from our PidFile),
            // which stops its children and removes the pid file.
            // SAFETY: kill(2) on the Apache parent this test started.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if alive(pid) {
                // SAFETY: as above.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        if std::env::var_os("POSTERN_TEST_SHOW_LOGS").is_some() || std::thread::panicking() {
            eprintln!(
                "---- Apache error log ({}/error.log, tail) ----\n{}\n---- Apache access log ----\n{}",
                self.dir.display(),
                tail(&self.error_log(), 60),
                tail(&self.access_log(), 30)
            );
        }
    }
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        // No /proc: ask kill(2).
        Err(_) => unsafe { libc::kill(pid, 0) == 0 },
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The protocol postern speaks to Apache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    FastCgi,
    Uwsgi,
}

impl Proto {
    fn flag(self) -> &'static str {
        match self {
            Proto::FastCgi => "--fastcgi",
            Proto::Uwsgi => "--uwsgi",
        }
    }
}

/// Starts postern serving `app` with `proto` on a new Unix socket (mode 666) in `dir`
/// (a [`crate::harness::tempdir`], which Apache's children can traverse), with
/// `args` after the app, and waits until it is ready.
pub fn start_postern(
    dir: &Path,
    proto: Proto,
    app: &str,
    args: &[&str],
    venv: Option<&Path>,
) -> Postern {
    let sock = dir.join(format!("postern-{}.sock", free_port()));
    let mut cmd = Command::new(postern_bin());
    cmd.arg(app)
        .args(args)
        .arg(proto.flag())
        .arg(format!("unix:{}", sock.display()))
        .args(["--socket-mode", "666"])
        .env_remove("VIRTUAL_ENV")
        .env("RUST_BACKTRACE", "1");
    if let Some(v) = venv {
        cmd.arg("--venv").arg(v);
    }
    Postern::spawn(cmd, Addr::Unix(sock), dir, None)
}
