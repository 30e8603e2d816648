//! Reading one section of a uWSGI ini file the way uWSGI 2.0 does: magic variables
//! (`%d`, `%n`, …) are replaced in each line as it is read, lines become `key = value`
//! entries, then three passes run over the values in uWSGI's order: `$(ENV)`,
//! `@(FILE)`, and last `%(placeholder)` (a reference to another option's value).
//!
//! No tokio, pyo3 or tracing here: what the process knows (environment, working
//! directory, host name, time, user) comes in a [`Context`], so tests can pin it.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::IniError;

/// What uWSGI's magic variables and `$(ENV)` read from the running process.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The environment (`$(VAR)`, and `UWSGI_*` variables for `%(placeholder)`).
    pub env: HashMap<String, String>,
    /// `%v`, and the base of relative paths.
    pub cwd: PathBuf,
    /// `%h`.
    pub hostname: String,
    /// `%t` (seconds) and `%T` (microseconds).
    pub unix_time_micros: u64,
    /// `%u`, `%g`; `%U`, `%G` fall back to them without a name.
    pub uid: u32,
    pub gid: u32,
    pub user: Option<String>,
    pub group: Option<String>,
    /// `%k`.
    pub cpus: usize,
    /// Reading for `postern migrate`: what uWSGI reads at each start (`$(VAR)` not in
    /// `env`, `@(FILE)`, the host's and the process's magic variables) is not a constant
    /// to write into a TOML file. `$(VAR)` and `@(FILE)` are then left as written (a
    /// secret is never read, so never written), and each entry records in
    /// [`Entry::reads`] what it would have read.
    pub migrating: bool,
}

impl Context {
    /// The running process's view.
    pub fn from_process() -> Context {
        let uid = rustix::process::getuid().as_raw();
        let gid = rustix::process::getgid().as_raw();
        Context {
            env: std::env::vars().collect(),
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
            hostname: hostname(),
            unix_time_micros: unix_time_micros(),
            uid,
            gid,
            user: crate::users::user_by_uid(uid)
                .ok()
                .flatten()
                .map(|u| u.name),
            group: crate::users::group_name(gid).ok().flatten(),
            cpus: cpus(),
            migrating: false,
        }
    }

    /// This context with the host's facts as they are now (`%h`, `%t`/`%T`, `%k`), the
    /// rest (environment, directory, user) kept: a reload reads the ini as the start
    /// did, its `$(VAR)`, `%v`, `%u` from the start's process, not the master's now
    /// (whose environment `env =`/`[env]` and a --preload app changed, whose directory
    /// is --chdir's and whose user --uid's).
    pub fn with_host_now(&self) -> Context {
        Context {
            hostname: hostname(),
            unix_time_micros: unix_time_micros(),
            cpus: cpus(),
            ..self.clone()
        }
    }

    /// The view of `postern migrate`: this process's host and user, but no environment
    /// of its own (the shell that runs migrate is not the service's): `vars` are the
    /// only `$(VAR)` values taken as constants.
    pub fn for_migrate(vars: HashMap<String, String>) -> Context {
        Context {
            env: vars,
            migrating: true,
            ..Context::from_process()
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

fn unix_time_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Where the ini file is, as uWSGI's magic variables see it.
#[derive(Debug, Clone)]
pub struct FileFacts {
    /// The argument as given, section included (`%o`).
    pub given: String,
    /// The absolute path (`%p`): resolved, except that a symlink is not followed.
    pub absolute: PathBuf,
    /// The section asked for with `FILE:section` (`%x`), if any.
    pub section: Option<String>,
    /// The file's inode (`%i`).
    pub inode: Option<u64>,
}

impl FileFacts {
    /// Looks the file up on disk the way uWSGI does (realpath unless it is a symlink).
    pub fn of(given: &str, path: &Path, section: Option<&str>, cwd: &Path) -> FileFacts {
        let meta = std::fs::symlink_metadata(path).ok();
        let is_link = meta.as_ref().is_some_and(|m| m.file_type().is_symlink());
        let absolute = if is_link {
            cwd.join(path)
        } else {
            std::fs::canonicalize(path).unwrap_or_else(|_| cwd.join(path))
        };
        FileFacts {
            given: given.to_owned(),
            absolute,
            section: section.map(str::to_owned),
            inode: meta.map(|m| std::os::unix::fs::MetadataExt::ino(&m)),
        }
    }
}

/// One `key = value` line of the section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 1-based line number in the file.
    pub line: usize,
    /// The line as written (trimmed), before any expansion.
    pub text: String,
    pub key: String,
    /// The value after every expansion.
    pub value: String,
    /// What uWSGI would read at each start to make this value (`$(VAR)`, `@(FILE)`,
    /// `%h`, …), directly or through a `%(placeholder)`; only when
    /// [`Context::migrating`], else empty.
    pub reads: BTreeSet<String>,
    /// The file the line is in when another file included it (`ini = base.ini`), as
    /// that line wrote it; `None` for the file given.
    pub file: Option<std::sync::Arc<str>>,
}

impl Entry {
    /// Where the line is, for a message: `12`, or `base.ini:12` for an included file's.
    pub fn label(&self) -> String {
        match &self.file {
            None => self.line.to_string(),
            Some(f) => format!("{f}:{}", self.line),
        }
    }
}

/// How deep `ini =` lines may include one another.
const INCLUDE_DEPTH: usize = 8;

/// What a message shows instead of a hidden value.
pub const HIDDEN: &str = "(value hidden)";

impl Entry {
    /// The line as a message quotes it (start-up and reload warnings and errors,
    /// `postern migrate`'s comments): as written, but with the value of an `env` line
    /// (`env = NAME=(value hidden)`) and of an option or placeholder named like a secret
    /// (a word of its name is `key` or holds `password`, `passwd`, `secret`, `token` or
    /// `credential`: `db_password`, `api-key`) hidden. The log, the journal and a
    /// terminal are read by more people than the file.
    /// regression: `env = SECRET_KEY=…` was quoted whole in the WARN line of a duplicate
    /// and in migrate's comments.
    pub fn shown(&self) -> std::borrow::Cow<'_, str> {
        let Some((key, value)) = self.text.split_once('=') else {
            return self.text.as_str().into();
        };
        let value = value.trim_start_matches([' ', '\t']);
        if value.is_empty() {
            return self.text.as_str().into();
        }
        if self.key == "env" {
            return match value.split_once('=') {
                Some((name, v)) if !v.is_empty() => format!("{key}= {name}={HIDDEN}").into(),
                _ => self.text.as_str().into(),
            };
        }
        if secret_name(&self.key) {
            return format!("{key}= {HIDDEN}").into();
        }
        // A placeholder named like a secret (set-placeholder = db_password=VALUE).
        if matches!(self.key.as_str(), "set-placeholder" | "set-ph") {
            if let Some((name, v)) = value.split_once('=') {
                if !v.is_empty() && secret_name(name) {
                    return format!("{key}= {name}={HIDDEN}").into();
                }
            }
        }
        self.text.as_str().into()
    }
}

/// Hides a section's secrets in the messages that quote it: the lines ([`Entry::shown`])
/// and why each is not carried over, which may quote its value expanded.
/// - the value of an option or placeholder named like a secret, wherever it shows
///   (`redis://:%(redis_password)@host` expanded reads `redis://:hunter1@host`): as
///   `%(NAME)` (uWSGI's notation for an option's value);
/// - values by their form, whatever their line: a URL's password
///   (`scheme://user:PASS@`), uWSGI's `basicauth:realm,user:PASS`, and a word
///   `NAME=VALUE` or `--name=VALUE` whose name is like a secret's (`PGPASSWORD=…`,
///   `--api-key=…`).
///
/// regression: the lines hid them, but the reasons quoted them (an `attach-daemon`'s
/// `ExecStart=` with the placeholder expanded, a `cron` line's crontab line).
pub struct Hider {
    /// (value, what shows instead), longest first.
    values: Vec<(String, String)>,
}

impl Hider {
    pub fn of<'e>(entries: impl IntoIterator<Item = &'e Entry>) -> Hider {
        let mut values: Vec<(String, String)> = Vec::new();
        for e in entries {
            let (name, value) = match e.key.as_str() {
                "env" | "set-placeholder" | "set-ph" => match e.value.split_once('=') {
                    Some((name, v)) if secret_name(name) => (name, v),
                    _ => continue,
                },
                k if secret_name(k) => (k, e.value.as_str()),
                _ => continue,
            };
            // A value too short to tell from a message's own words is left (a message
            // naming "on" or "1" would lose its sense), and so is one uWSGI makes at each
            // start (`$(APP_SECRET)` when migrating): its reference is no secret, and
            // the reasons name it.
            let reference = ["$(", "@(", "%("].iter().any(|r| value.contains(r));
            if value.chars().count() >= 4 && !reference && e.reads.is_empty() {
                let by = match e.key.as_str() {
                    "env" => HIDDEN.to_owned(),
                    _ => format!("%({name})"),
                };
                values.push((value.to_owned(), by));
            }
        }
        values.sort_by_key(|v| std::cmp::Reverse(v.0.len()));
        values.dedup_by(|a, b| a.0 == b.0);
        Hider { values }
    }

    /// The line as a message quotes it.
    pub fn line(&self, e: &Entry) -> String {
        self.text(&e.shown())
    }

    /// `text` (a reason, a note) with the secrets hidden.
    pub fn text(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for (value, by) in &self.values {
            if text.contains(value.as_str()) {
                text = text.replace(value.as_str(), by);
            }
        }
        hide_by_form(&text)
    }
}

/// The passwords and secret-named values `text`'s words show by their form (see
/// [`Hider`]); also a MySQL client's `-pPASS` (`mysqldump -u root -pPASS db`).
pub fn hide_by_form(text: &str) -> String {
    // What is hidden already stays as it is (its words are not a NAME=VALUE's).
    let mut parts = text.split(HIDDEN);
    let mut out = hide_words(parts.next().unwrap_or_default());
    for part in parts {
        out.push_str(HIDDEN);
        out.push_str(&hide_words(part));
    }
    out
}

/// What a word asks [`hide_words`] to hide in the next one.
#[derive(Clone, Copy, PartialEq)]
enum Next {
    Nothing,
    /// After curl's `-u`/`--user`: `USER:PASS`.
    UserPass,
    /// After a header `Authorization:` (or `X-Api-Key:`, a secret-like name): its value,
    /// after a scheme word (`Bearer`, `Basic`).
    Credentials,
    /// After `basicauth:` whose realm goes on past a space (`basicauth:Admin Area,admin:PASS`):
    /// the rest of the realm, then `,USER:PASS`.
    AuthRealm,
}

fn hide_words(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut mysql = false;
    let mut next = Next::Nothing;
    while !rest.is_empty() {
        let space = rest.len() - rest.trim_start().len();
        out.push_str(&rest[..space]);
        rest = &rest[space..];
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let word = &rest[..end];
        rest = &rest[end..];
        let quote = word.len() - word.trim_start_matches(['"', '\'', '`', '(']).len();
        let bare = word[quote..].trim_end_matches(['"', '\'', '`', ')', ',', ';']);
        // regression: curl's `-u admin:PASS` and `-H "Authorization: Bearer TOKEN"` in
        // an attach-daemon or cron line were quoted as written.
        match std::mem::replace(&mut next, Next::Nothing) {
            Next::UserPass => {
                if let Some(colon) = bare.find(':').filter(|&c| c + 1 < bare.len()) {
                    out.push_str(&word[..quote + colon + 1]);
                    out.push_str(HIDDEN);
                    continue;
                }
            }
            Next::AuthRealm => {
                // regression (probe 313): a realm with a space put `,admin:PASS` in a
                // word of its own, which was shown as written.
                match word.find(',') {
                    Some(comma) => {
                        if let Some(colon) = word[comma..].find(':') {
                            let at = comma + colon + 1;
                            out.push_str(&word[..at]);
                            if at < word.len() {
                                out.push_str(HIDDEN);
                            }
                            continue;
                        }
                    }
                    None => {
                        out.push_str(word);
                        next = Next::AuthRealm;
                        continue;
                    }
                }
            }
            Next::Credentials if !bare.is_empty() => {
                if auth_scheme(bare) {
                    out.push_str(word);
                    next = Next::Credentials;
                } else {
                    out.push_str(&word[..quote]);
                    out.push_str(HIDDEN);
                }
                continue;
            }
            _ => {}
        }
        if let Some(i) = word.find("basicauth") {
            if word[i..]
                .find(':')
                .is_some_and(|c| !word[i + c..].contains(','))
            {
                next = Next::AuthRealm;
            }
        }
        if bare == "-u" || bare == "--user" || bare == "--proxy-user" {
            next = Next::UserPass;
        } else if bare == "--oauth2-bearer" {
            next = Next::Credentials;
        }
        // `-uUSER:PASS`, `--user=USER:PASS`, `--oauth2-bearer=TOKEN`.
        let mut glued = bare
            .strip_prefix("--user=")
            .or_else(|| bare.strip_prefix("--proxy-user="))
            .or_else(|| bare.strip_prefix("-u"))
            .and_then(|v| {
                v.find(':')
                    .filter(|&c| c + 1 < v.len())
                    .map(|c| bare.len() - v.len() + c)
            })
            .or_else(|| {
                let token = bare.strip_prefix("--oauth2-bearer=")?;
                (!token.is_empty()).then_some("--oauth2-bearer".len())
            });
        // A header's value: in the next words (`Authorization:`), or glued to its name:
        // `--header=Authorization:CREDENTIALS`, `X-Api-Key:KEY`, and after a scheme
        // word, the next word (`"Authorization:Bearer TOKEN"`).
        // regression: the scheme word glued to the name was hidden and the token after
        // it shown, and a glued secret-named header (`X-Api-Key:KEY`) shown whole.
        match glued.is_none().then(|| secret_header(bare)).flatten() {
            Some((_, "")) => next = Next::Credentials,
            Some((_, value)) if auth_scheme(value) => {
                out.push_str(word);
                next = Next::Credentials;
                continue;
            }
            // (`bare` has lost a placeholder's closing `)`.)
            Some((colon, value)) if !value.starts_with("%(") => {
                glued = Some(colon);
            }
            _ => {}
        }
        if let Some(colon) = glued {
            out.push_str(&word[..quote + colon + 1]);
            out.push_str(HIDDEN);
            continue;
        }
        // The command a word names, whatever is glued before it: a path
        // (`/usr/bin/mysqldump`), a quote (`sh -c "mysql ...`), a prefix
        // (`exec:mysqladmin`, a reason's `(ExecStart=mysqldump`).
        // regression: only the part after the last `/` was looked at, so those forms'
        // `-pPASS` was shown.
        let command = word
            .rsplit(['/', '=', ':'])
            .next()
            .unwrap_or_default()
            .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
            .to_ascii_lowercase();
        mysql |= command.starts_with("mysql") || command.starts_with("mariadb");
        match word[quote..].strip_prefix("-p") {
            Some(pass) if mysql && !pass.is_empty() && !pass.starts_with("%(") => {
                out.push_str(&word[..quote]);
                out.push_str("-p");
                out.push_str(HIDDEN);
            }
            _ => out.push_str(&hide_word(word)),
        }
    }
    out
}

/// A header's scheme word (`Authorization: Bearer TOKEN`): what follows it is the secret.
fn auth_scheme(word: &str) -> bool {
    [
        "bearer",
        "basic",
        "token",
        "digest",
        "apikey",
        "negotiate",
        "ntlm",
    ]
    .iter()
    .any(|s| word.eq_ignore_ascii_case(s))
}

/// `NAME:VALUE` (`--header=NAME:VALUE`, `-HNAME:VALUE` too) whose NAME is a header
/// carrying a secret (`Authorization`, `Proxy-Authorization`, a secret-like name with a
/// `-`: `X-Api-Key`): the colon's index and the value (empty: it is in the next word).
fn secret_header(word: &str) -> Option<(usize, &str)> {
    let colon = word.find(':')?;
    let name = word[..colon].rsplit('=').next().unwrap_or_default();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return None;
    }
    let name = name.to_ascii_lowercase();
    (name.ends_with("authorization") || (name.contains('-') && secret_name(&name)))
        .then(|| (colon, &word[colon + 1..]))
}

fn hide_word(word: &str) -> String {
    let placeholder = |v: &str| (v.starts_with("%(") && v.ends_with(')')) || v == HIDDEN;
    // NAME=VALUE, --name=VALUE, each of a word's: a reason's `(ExecStart=PGPASSWORD=…`,
    // `exec:DB_PASSWORD=…`, `"API_TOKEN=…`. The name is what ends at the `=` (letters,
    // digits, `_`, `-`, `.`), so a quote or prefix before it does not hide it; all after
    // the first secret name's `=` is hidden, to the word's end.
    // regression: the word was split at its first `=` only, so `ExecStart=PGPASSWORD=`
    // showed the password.
    let mut at = 0;
    while let Some(eq) = word[at..].find('=').map(|i| at + i) {
        let head = &word[..eq];
        let name_at = head
            .char_indices()
            .rev()
            .find(|&(_, c)| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.')))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let name = head[name_at..].trim_start_matches('-');
        let value = &word[eq + 1..];
        if !value.is_empty() && secret_name(name) && !placeholder(value) {
            return hide_word_tail(&format!("{head}={HIDDEN}"));
        }
        at = eq + 1;
    }
    hide_word_tail(word)
}

fn hide_word_tail(word: &str) -> String {
    let placeholder = |v: &str| (v.starts_with("%(") && v.ends_with(')')) || v == HIDDEN;
    // basicauth:realm,user:PASS (basicauth-next too).
    if let Some(i) = word.find("basicauth") {
        let args = &word[i..];
        if let Some(cred) = args
            .find(':')
            .and_then(|c| args[c..].find(',').map(|k| c + k + 1))
        {
            if let Some(colon) = args[cred..].find(':') {
                let at = i + cred + colon + 1;
                if at < word.len() && !placeholder(&word[at..]) {
                    return format!("{}{HIDDEN}", &word[..at]);
                }
            }
        }
    }
    // scheme://user:PASS@host (each URL of the word).
    let mut out = String::new();
    let mut rest = word;
    while let Some(i) = rest.find("://") {
        let (head, after) = rest.split_at(i + 3);
        out.push_str(head);
        let authority = &after[..after.find('/').unwrap_or(after.len())];
        let hidden = authority.rfind('@').and_then(|at| {
            let userinfo = &authority[..at];
            let colon = userinfo.find(':')?;
            let pass = &userinfo[colon + 1..];
            (!pass.is_empty() && !placeholder(pass))
                .then(|| format!("{}:{HIDDEN}", &userinfo[..colon]))
        });
        match hidden {
            Some(userinfo) => {
                let at = authority.rfind('@').unwrap_or(0);
                out.push_str(&userinfo);
                rest = &after[at..];
            }
            None => rest = after,
        }
    }
    out.push_str(rest);
    out
}

/// Whether an option or placeholder's name says its value is a secret: a word of it
/// (split at `-`, `_`, `.`) is `key` or `pass`, ends in `apikey` or `pwd` (`MYSQL_PWD`;
/// not the shell's `PWD` and `OLDPWD`), or holds `password`, `passwd`, `secret`, `token`
/// or `credential`.
pub fn secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let shell = matches!(name.as_str(), "pwd" | "oldpwd");
    name.split(['-', '_', '.']).any(|w| {
        w == "key"
            || w == "pass"
            || w.ends_with("apikey")
            || (w.ends_with("pwd") && !shell)
            || ["password", "passwd", "secret", "token", "credential"]
                .iter()
                .any(|s| w.contains(s))
    })
}

/// A section read and expanded.
#[derive(Debug, Default)]
pub struct Section {
    pub entries: Vec<Entry>,
    /// Keys some `%(…)` referred to: placeholders, not options to carry over.
    pub placeholders_used: BTreeSet<String>,
    /// Things worth telling the user about the expansion itself (an unset `$(VAR)`, an
    /// unknown magic letter), each with its line.
    pub notes: Vec<(usize, String)>,
}

/// uWSGI's `%X` table for this file. Every byte has an entry: letters uWSGI does not
/// define expand to nothing (`None` here says so, for a note).
fn magic(c: char, f: &FileFacts, ctx: &Context) -> Option<String> {
    let p = f.absolute.to_string_lossy().into_owned();
    let slash = p.rfind('/').map_or(0, |i| i + 1);
    let s = p[slash..].to_owned();
    // With its trailing slash, like uWSGI's (it strips it only to compute %c and %0..%9).
    let d = p[..slash].to_owned();
    let d_trimmed = d.strip_suffix('/').unwrap_or(&d);
    let (n, e) = match s.rfind('.') {
        Some(i) => (s[..i].to_owned(), s[i + 1..].to_owned()),
        None => (s.clone(), String::new()),
    };
    Some(match c {
        // Upper case: "the first non-template config file", which is this one: postern
        // reads a single file, with no --include or --inherit.
        'o' | 'O' => f.given.clone(),
        'p' | 'P' => p,
        's' | 'S' => s,
        'd' | 'D' => d,
        'c' | 'C' => d_trimmed
            .rfind('/')
            .map_or(String::new(), |i| d_trimmed[i + 1..].to_owned()),
        'e' | 'E' => e,
        'n' | 'N' => n,
        'x' | 'X' => f.section.clone().unwrap_or_default(),
        'i' | 'I' => f.inode.map(|i| i.to_string()).unwrap_or_default(),
        'j' | 'J' => djb33x_hex(p.as_bytes()),
        '0'..='9' => d_trimmed
            .split('/')
            .filter(|part| !part.is_empty())
            .nth(c as usize - '0' as usize)
            .unwrap_or("")
            .to_owned(),
        'v' => ctx.cwd.to_string_lossy().into_owned(),
        'h' => ctx.hostname.clone(),
        't' => (ctx.unix_time_micros / 1_000_000).to_string(),
        'T' => ctx.unix_time_micros.to_string(),
        'k' => ctx.cpus.to_string(),
        'u' => ctx.uid.to_string(),
        'U' => ctx.user.clone().unwrap_or_else(|| ctx.uid.to_string()),
        'g' => ctx.gid.to_string(),
        'G' => ctx.group.clone().unwrap_or_else(|| ctx.gid.to_string()),
        '[' => "\x1b".to_owned(),
        '%' => "%".to_owned(),
        // Kept for the placeholder pass.
        '(' => "%(".to_owned(),
        _ => return None,
    })
}

/// `%j`: uWSGI's djb33x hash of the absolute path, as its 4 bytes in memory (little
/// endian) in upper-case hex. uWSGI hashes `char`s, which are signed on x86: bytes
/// ≥ 0x80 are sign-extended before the XOR.
fn djb33x_hex(bytes: &[u8]) -> String {
    let mut h: u32 = 5381;
    for &b in bytes {
        h = h.wrapping_shl(5).wrapping_add(h) ^ (b as i8 as i32 as u32);
    }
    h.to_le_bytes().iter().map(|b| format!("{b:02X}")).collect()
}

/// Replaces `%X` in one line. Letters with no meaning for postern (`%b`, the uWSGI
/// binary; `%V`, its version) or none at all expand to nothing, as uWSGI does, and
/// are reported.
fn magic_line(line: &str, f: &FileFacts, ctx: &Context, mut unknown: impl FnMut(char)) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            // A '%' ending the line stays: uWSGI would join it with the next line's
            // first byte, which no real file relies on.
            None => out.push('%'),
            Some(m) => match magic(m, f, ctx) {
                // `%d/app.sock`: %d ends with its `/` already, and the `//` uWSGI
                // would keep ends up in the paths postern logs and writes.
                Some(v) if v.len() > 1 && v.ends_with('/') && chars.as_str().starts_with('/') => {
                    out.push_str(&v[..v.len() - 1])
                }
                Some(v) => out.push_str(&v),
                None => unknown(m),
            },
        }
    }
    out
}

/// Reads `section` of the ini `text` (uWSGI's rules: whole-line `;` and `#` comments,
/// no inline comments or quoting, `key` alone means `key =` empty, the first `=`
/// splits, every `[section]` of that name counts) and expands it.
pub fn read_section(
    text: &str,
    facts: &FileFacts,
    section: &str,
    ctx: &Context,
) -> Result<Section, IniError> {
    let mut out = Section::default();
    let mut within = vec![(facts.absolute.clone(), section.to_owned())];
    let (found, seen) = collect(text, facts, section, ctx, None, &mut out, &mut within)?;
    let Some(header) = found else {
        return Err(IniError::NoSection {
            path: PathBuf::from(&facts.given),
            section: section.to_owned(),
            found: seen,
        });
    };
    // regression: an empty section was refused as missing ("there is no [uwsgi]
    // section (it has [uwsgi] …)"); uWSGI starts on it with the command line's options.
    if out.entries.is_empty() {
        out.notes.push((
            header,
            format!("[{section}] has no option lines: nothing to carry over; the app and the options come from the command line or --config, as uWSGI starts on it"),
        ));
    }
    expand_env(&mut out, ctx)?;
    expand_files(&mut out, ctx)?;
    expand_placeholders(&mut out, ctx)?;
    Ok(out)
}

/// An `ini = FILE[:section]` (`include`, `inherit`) line's file, when postern reads it
/// in place: a literal path (magic variables such as `%d` expanded; no `$(VAR)` or
/// `%(placeholder)`, which are expanded later) of an ini file. `None`: the line stays,
/// and the mapping refuses it with its reason.
fn include_target(key: &str, value: &str) -> Option<(PathBuf, String)> {
    if !matches!(key, "ini" | "include" | "inherit") || value.is_empty() {
        return None;
    }
    if value.starts_with(':')
        || value.contains("$(")
        || value.contains("%(")
        || value.contains("@(")
    {
        return None;
    }
    let (path, section) = super::split_source(value);
    let ext = path.extension().map(|e| e.to_ascii_lowercase());
    if ext
        .as_ref()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "yaml" | "yml" | "xml" | "json" | "js"))
    {
        return None;
    }
    Some((path, section.unwrap_or_else(|| "uwsgi".to_owned())))
}

/// The section an `ini = :section` (`include`, `inherit`) line names in its own file,
/// when it is a literal name.
fn own_section<'v>(key: &str, value: &'v str) -> Option<&'v str> {
    if !matches!(key, "ini" | "include" | "inherit") {
        return None;
    }
    let name = value.strip_prefix(':')?;
    (!name.is_empty() && !name.contains(['$', '%', '@', '[', ']'])).then_some(name)
}

/// Collects `section`'s lines of `text` into `out`, an `ini =` line's file in its place
/// (as uWSGI reads it: its options where the line is, so later lines override them).
/// `file`: how the including line named this file (`None`: the file given). `within`:
/// the files (and sections) being read, to refuse an include loop. Returns the line of
/// the section's first header, and the sections seen.
fn collect(
    text: &str,
    facts: &FileFacts,
    section: &str,
    ctx: &Context,
    file: Option<std::sync::Arc<str>>,
    out: &mut Section,
    within: &mut Vec<(PathBuf, String)>,
) -> Result<(Option<usize>, Vec<String>), IniError> {
    let mut current = String::new();
    let mut seen: Vec<String> = Vec::new();
    // The last file an `ini = FILE` line of this section read: uWSGI reads a later
    // `ini = :section` from it, not from this file (its `last_file`).
    let mut included: Option<String> = None;
    // The line of the section's first header: an empty section is still a section.
    let mut found = None;
    let from = |n: usize| match &file {
        None => format!("line {n}"),
        Some(f) => format!("{f}:{n}"),
    };
    for (i, raw) in text.split('\n').enumerate() {
        let number = i + 1;
        let mut bad = Vec::new();
        let line = magic_line(raw, facts, ctx, |m| bad.push(m));
        let reads: BTreeSet<String> = if ctx.migrating {
            process_magic(raw)
        } else {
            BTreeSet::new()
        };
        let line = line.trim_matches([' ', '\t', '\r']);
        if line.is_empty() || line.starts_with([';', '#']) {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            // uWSGI drops the last character, whatever it is.
            let mut name = rest.to_owned();
            name.pop();
            if !seen.contains(&name) {
                seen.push(name.clone());
            }
            if name == section && found.is_none() {
                found = Some(number);
            }
            current = name;
            continue;
        }
        if current != section {
            continue;
        }
        for m in bad {
            let what = match m {
                'b' => "%b (the uWSGI binary's path) means nothing to postern".to_owned(),
                'V' => "%V (the uWSGI version) means nothing to postern".to_owned(),
                _ => format!("%{m} is not a uWSGI magic variable"),
            };
            let text = format!("{what}: it expands to nothing, as in uWSGI");
            out.notes.push(match &file {
                None => (number, text),
                Some(f) => (0, format!("{f}:{number}: {text}")),
            });
        }
        let (key, value) = line.split_once('=').unwrap_or((line, ""));
        let key = key.trim_end_matches([' ', '\t', '\r']).to_owned();
        let value = value.trim_matches([' ', '\t', '\r']).to_owned();
        // `ini = :section`: a section of this same file, read from this text.
        // regression (probe 401): refused ("copy the options of [uwsgi] into
        // [production]"), where `ini = %p:uwsgi`, the same thing, was read.
        if let Some(sub) = own_section(&key, &value) {
            let sub = sub.to_owned();
            if let Some(last) = &included {
                let last = super::split_source(last).0;
                return Err(IniError::Refused(format!(
                    "{}: {key} = {value}: uWSGI reads a `:section` include from the last ini file it opened, {} here, not from this file: write `{key} = {}:{sub}` for that one, or `{key} = %p:{sub}` for this file's",
                    from(number),
                    last.display(),
                    last.display()
                )));
            }
            let inc = Include {
                text,
                facts,
                section: sub,
                file: file.clone(),
                real: facts.absolute.clone(),
                path: facts.absolute.clone(),
                what: "sections",
            };
            include(
                inc,
                ctx,
                out,
                within,
                &format!("{}: {key} = {value}", from(number)),
            )?;
            continue;
        }
        // regression (probe 313): `ini = %d/base.ini` (a shared base file, a common
        // layout) was refused: "postern reads one file".
        if let Some((path, sub)) = include_target(&key, &value) {
            let path = if path.is_relative() {
                ctx.cwd.join(&path)
            } else {
                path
            };
            let shown = value.clone();
            let real = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            let at = format!("{}: {key} = {value}", from(number));
            let bytes = std::fs::read(&path).map_err(|e| {
                IniError::Refused(format!(
                    "{}: {key} = {value}: cannot read {}: {e} (a relative path is taken from the directory postern starts in, as uWSGI does: %d/ names the including file's)",
                    from(number),
                    path.display()
                ))
            })?;
            let text = String::from_utf8_lossy(&bytes);
            let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
            let sub_facts = FileFacts::of(&shown, &path, Some(&sub), &ctx.cwd);
            included = Some(shown.clone());
            let inc = Include {
                text,
                facts: &sub_facts,
                section: sub,
                file: Some(std::sync::Arc::from(shown.as_str())),
                real,
                path,
                what: "files",
            };
            include(inc, ctx, out, within, &at)?;
            continue;
        }
        out.entries.push(Entry {
            line: number,
            text: raw.trim_matches([' ', '\t', '\r']).to_owned(),
            key,
            value,
            reads,
            file: file.clone(),
        });
    }
    Ok((found, seen))
}

/// A section an `ini =` line reads: of another file, or of this one (`:section`).
struct Include<'a> {
    text: &'a str,
    facts: &'a FileFacts,
    section: String,
    /// How its lines are named (None: this file's own, by line number).
    file: Option<std::sync::Arc<str>>,
    /// Which file it is, for loops: the canonical path.
    real: PathBuf,
    /// The path a missing section is reported with.
    path: PathBuf,
    /// "files" or "sections": what includes each other in a loop's refusal.
    what: &'static str,
}

/// Reads `inc` into `out` (the including line is `at`, "FILE:LINE: key = value"),
/// refusing a loop (a section already being read further up), a nesting past
/// [`INCLUDE_DEPTH`] and a section the text does not have.
fn include(
    inc: Include<'_>,
    ctx: &Context,
    out: &mut Section,
    within: &mut Vec<(PathBuf, String)>,
    at: &str,
) -> Result<(), IniError> {
    if within
        .iter()
        .any(|(p, s)| *p == inc.real && *s == inc.section)
    {
        return Err(IniError::Refused(format!(
            "{at}: the {} include each other without end",
            inc.what
        )));
    }
    if within.len() > INCLUDE_DEPTH {
        return Err(IniError::Refused(format!(
            "{at}: includes nested more than {INCLUDE_DEPTH} deep"
        )));
    }
    within.push((inc.real, inc.section.clone()));
    let (found, seen) = collect(
        inc.text,
        inc.facts,
        &inc.section,
        ctx,
        inc.file,
        out,
        within,
    )?;
    within.pop();
    if found.is_none() {
        return Err(IniError::NoSection {
            path: inc.path,
            section: inc.section,
            found: seen,
        });
    }
    Ok(())
}

/// The magic variables in `raw` whose value is the running process's or host's (`%h`,
/// `%k`, `%v`, `%t`, `%T`, `%u`, `%U`, `%g`, `%G`): uWSGI computes them at each start.
fn process_magic(raw: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            continue;
        }
        if let Some(m @ ('h' | 'k' | 'v' | 't' | 'T' | 'u' | 'U' | 'g' | 'G')) = chars.next() {
            out.insert(format!("%{m}"));
        }
    }
    out
}

/// Bound on the replacements in one value: uWSGI loops forever on `a = %(a)`.
const MAX_EXPANSIONS: usize = 256;

/// Bound on one value once its `$(…)`, `@(…)` and `%(…)` are expanded. Real option
/// values (paths, module names, `env`, `route` lines, a token or a key read with
/// `@(file)`) stay well under 4 KiB; 64 KiB is sixteen times that. Without a bound,
/// placeholders that each repeat the one before twice (`v2 = %(v1)%(v1)`) double at
/// every line: 27 lines took a minute and 1.8 GB, at the start and again at each
/// reload. With it such a file stops at about its fifteenth line, in milliseconds.
pub const VALUE_MAX: usize = 64 * 1024;

/// Bound on all the section's values together once expanded: sixteen values at
/// [`VALUE_MAX`], hundreds of times a real file. It bounds the work too: each value
/// is rescanned at most [`MAX_EXPANSIONS`] times.
pub const SECTION_MAX: usize = 1024 * 1024;

/// How a value went over a bound while it was expanded.
enum Over {
    /// It never settles (a placeholder refers to itself, maybe through others).
    Loop,
    /// Over [`VALUE_MAX`].
    Size,
}

/// Replaces each `S(…)` in `value` (parentheses may nest) with what `hook` returns for
/// the text inside; `None` leaves it as written. Like uWSGI, scanning restarts from the
/// start after a replacement, so a value that expands to another reference is expanded
/// too. `Err(Over)` means the value never settles or grows over [`VALUE_MAX`].
fn expand_value(
    value: &str,
    symbol: char,
    mut hook: impl FnMut(&str) -> Result<Option<String>, IniError>,
) -> Result<Result<String, Over>, IniError> {
    let mut v = value.to_owned();
    let mut from = 0;
    let mut rounds = 0;
    'scan: loop {
        let bytes = v.as_bytes();
        let mut i = from;
        while i + 1 < bytes.len() {
            if bytes[i] == symbol as u8 && bytes[i + 1] == b'(' {
                let start = i + 2;
                let mut depth = 0usize;
                let mut j = start;
                while j < bytes.len() {
                    match bytes[j] {
                        b'(' => depth += 1,
                        b')' if depth == 0 => break,
                        b')' => depth -= 1,
                        _ => {}
                    }
                    j += 1;
                }
                if j >= bytes.len() {
                    break 'scan; // unclosed: left as written
                }
                if j == start {
                    i = j + 1; // `S()` is nothing to expand
                    continue;
                }
                if let Some(new) = hook(&v[start..j])? {
                    rounds += 1;
                    if rounds > MAX_EXPANSIONS {
                        return Ok(Err(Over::Loop));
                    }
                    // Checked before the new value is built.
                    if v.len() - (j + 1 - i) + new.len() > VALUE_MAX {
                        return Ok(Err(Over::Size));
                    }
                    v = format!("{}{}{}", &v[..i], new, &v[j + 1..]);
                    from = 0;
                    continue 'scan;
                }
                i = j + 1;
                continue;
            }
            i += 1;
        }
        break;
    }
    Ok(Ok(v))
}

/// Runs one pass over every entry's value. The hook gets the text inside `S(…)`, the
/// entries, the line, the notes, and the entry's [`Entry::reads`] to add to.
fn pass(
    section: &mut Section,
    symbol: char,
    mut hook: impl FnMut(
        &str,
        &[Entry],
        usize,
        &mut Vec<(usize, String)>,
        &mut BTreeSet<String>,
    ) -> Result<Option<String>, IniError>,
) -> Result<(), IniError> {
    let mut total: usize = section.entries.iter().map(|e| e.value.len()).sum();
    for i in 0..section.entries.len() {
        let value = section.entries[i].value.clone();
        if !value.contains(symbol) {
            continue;
        }
        let line = section.entries[i].line;
        let entries = &section.entries;
        let notes = &mut section.notes;
        let noted = notes.len();
        let mut reads = BTreeSet::new();
        let expanded = expand_value(&value, symbol, |inner| {
            hook(inner, entries, line, notes, &mut reads)
        })?;
        // A log format's `%(var)` are uWSGI's log variables (`%(addr)`, `%(status)`),
        // left as written when no placeholder has their name: nothing to say of them.
        // regression (probe 319): 16 "refers to no option" notes for one log-format.
        if symbol == '%' && is_log_format(&section.entries[i].key) {
            section.notes.truncate(noted);
        }
        // Said once per line and name (a value is expanded until it no longer changes).
        let mut seen = BTreeSet::new();
        let mut k = noted;
        while k < section.notes.len() {
            if seen.insert(section.notes[k].1.clone()) {
                k += 1;
            } else {
                section.notes.remove(k);
            }
        }
        // A note about an included file's line names that file (a note's number is a
        // line of the file given; 0 is none).
        // regression (review 316): `main.ini:12` for line 12 of the included file.
        if let Some(f) = &section.entries[i].file {
            for n in &mut section.notes[noted..] {
                *n = (0, format!("{f}:{}: {}", n.0, n.1));
            }
        }
        section.entries[i].reads.extend(reads);
        let key = || section.entries[i].key.clone();
        match expanded {
            Ok(v) => {
                total = total - value.len() + v.len();
                if v.len() > value.len() && total > SECTION_MAX {
                    return Err(IniError::SectionTooLarge { line, key: key() });
                }
                section.entries[i].value = v;
            }
            Err(Over::Loop) => return Err(IniError::Loop { line, key: key() }),
            Err(Over::Size) => return Err(IniError::ValueTooLarge { line, key: key() }),
        }
    }
    Ok(())
}

/// uWSGI's options whose value is a log format, where `%(name)` is a log variable.
fn is_log_format(key: &str) -> bool {
    matches!(
        key,
        "log-format"
            | "logformat"
            | "log-format-strftime"
            | "logformat-strftime"
            | "log-req-encoder"
    ) || key.starts_with("log-encoder")
}

/// `$(VAR)`, `$(VAR:-DEFAULT)` (unset or empty), `$(VAR-DEFAULT)` (unset only). An unset
/// variable with no default is left as written, as uWSGI does. When migrating, a
/// variable not given as a constant is left as written and recorded: uWSGI reads it at
/// each start, in the service's environment, not in the shell that runs migrate.
fn expand_env(section: &mut Section, ctx: &Context) -> Result<(), IniError> {
    pass(section, '$', |inner, _, line, notes, reads| {
        let (name, default, or_empty) = if let Some((n, d)) = inner.split_once(":-") {
            (n, Some(d), true)
        } else if let Some((n, d)) = inner.split_once('-') {
            (n, Some(d), false)
        } else {
            (inner, None, false)
        };
        if ctx.migrating && !ctx.env.contains_key(name) {
            reads.insert(format!("$({name})"));
            return Ok(None);
        }
        Ok(match (ctx.env.get(name), default) {
            (Some(v), Some(d)) if or_empty && v.is_empty() => Some(d.to_owned()),
            (Some(v), _) => Some(v.clone()),
            (None, Some(d)) => Some(d.to_owned()),
            (None, None) => {
                notes.push((
                    line,
                    format!("environment variable {name} is not set: $({name}) is kept as written, as uWSGI does"),
                ));
                None
            }
        })
    })
}

/// `@(FILE)`: the file's contents, less one trailing newline. Other sources uWSGI can
/// read there (`exec://`, `http://`, …) are not run: they stay as written. When
/// migrating, nothing is read (uWSGI reads the file at each start, and it may hold a
/// secret): the reference stays as written and is recorded.
fn expand_files(section: &mut Section, ctx: &Context) -> Result<(), IniError> {
    pass(section, '@', |inner, _, line, notes, reads| {
        if ctx.migrating {
            reads.insert(format!("@({inner})"));
            return Ok(None);
        }
        if inner.contains("://") {
            notes.push((
                line,
                format!("@({inner}) is not read (postern reads plain files only): kept as written"),
            ));
            return Ok(None);
        }
        use std::io::Read as _;
        let path = ctx.cwd.join(inner);
        let at_file = |source| IniError::AtFile {
            line,
            path: path.clone(),
            source,
        };
        // No more than can fit in a value: a larger file is refused as the value is.
        let mut bytes = Vec::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(VALUE_MAX as u64 + 1).read_to_end(&mut bytes))
            .map_err(at_file)?;
        let mut text = match String::from_utf8(bytes) {
            Ok(text) => text,
            // Cut inside a character by the bound: the file is over it, and its text
            // with that character replaced is too, so it is refused as such.
            Err(e) if e.utf8_error().error_len().is_none() && e.as_bytes().len() > VALUE_MAX => {
                String::from_utf8_lossy(e.as_bytes()).into_owned()
            }
            Err(e) => {
                return Err(at_file(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    e.utf8_error(),
                )))
            }
        };
        if text.ends_with(['\n', '\r']) {
            text.pop();
        }
        Ok(Some(text))
    })
}

/// `%(name)`: the value of the first option called `name` (`UWSGI_NAME` in the
/// environment first: uWSGI turns those into options before reading any file). A name
/// nothing defines is left as written. With spaces inside, uWSGI's pipeline
/// arithmetic: `%(a + b * 2)` is `((a + b) * 2)`, `%(a b)` concatenates, `%(a ++)`.
fn expand_placeholders(section: &mut Section, ctx: &Context) -> Result<(), IniError> {
    let mut used = BTreeSet::new();
    pass(section, '%', |inner, entries, line, notes, reads| {
        // What the definition read at start, the value's reads too.
        let mut lookup = |name: &str| -> Option<String> {
            let env_name = format!("UWSGI_{}", name.to_ascii_uppercase().replace('-', "_"));
            ctx.env.get(&env_name).cloned().or_else(|| {
                let (value, from) = placeholder_value(entries, name)?;
                reads.extend(from.iter().cloned());
                Some(value)
            })
        };
        if !inner.contains(' ') {
            used.insert(inner.to_owned());
            let found = lookup(inner);
            // regression (probe 313): `socket = /run/%(appname).sock` with `appname`
            // defined nowhere bound a socket of that literal name, silently.
            if found.is_none() {
                notes.push((
                    line,
                    format!("%({inner}) refers to no option, set-placeholder or UWSGI_{} variable: it is kept as written, as uWSGI does (a misspelt placeholder?)", inner.to_ascii_uppercase().replace('-', "_")),
                ));
            }
            return Ok(found);
        }
        Ok(Some(arithmetic(inner, |name| {
            used.insert(name.to_owned());
            lookup(name).unwrap_or_default()
        })))
    })?;
    section.placeholders_used = used;
    Ok(())
}

/// The first definition of `name` (an option line, or `set-placeholder`/`set-ph`), and
/// what that line read at start.
fn placeholder_value<'e>(
    entries: &'e [Entry],
    name: &str,
) -> Option<(String, &'e BTreeSet<String>)> {
    entries.iter().find_map(|e| {
        if e.key == name {
            return Some((e.value.clone(), &e.reads));
        }
        if matches!(e.key.as_str(), "set-placeholder" | "set-ph") {
            let (k, v) = e.value.split_once('=')?;
            return (k.trim() == name).then(|| (v.trim().to_owned(), &e.reads));
        }
        None
    })
}

/// uWSGI's placeholder pipeline: tokens separated by spaces are numbers, option names
/// or operators (`+ - * /` take the next token; `++`/`--` act at once); two values in
/// a row concatenate. Division by zero gives 0, as in uWSGI.
fn arithmetic(expr: &str, mut value_of: impl FnMut(&str) -> String) -> String {
    #[derive(Clone, Copy)]
    enum Op {
        Concat,
        Add,
        Sub,
        Mul,
        Div,
    }
    let num = |s: &str| -> i64 {
        // strtoll: leading digits, 0 when there are none.
        let t = s.trim_start();
        let sign_len = usize::from(t.starts_with(['-', '+']));
        let end = t[sign_len..]
            .find(|c: char| !c.is_ascii_digit())
            .map_or(t.len(), |i| i + sign_len);
        t[..end].parse().unwrap_or(0)
    };
    let mut current: Option<String> = None;
    let mut op = Op::Concat;
    for token in expr.split(' ').filter(|t| !t.is_empty()) {
        let value = match token {
            "+" => {
                op = Op::Add;
                continue;
            }
            "-" => {
                op = Op::Sub;
                continue;
            }
            "*" => {
                op = Op::Mul;
                continue;
            }
            "/" => {
                op = Op::Div;
                continue;
            }
            "++" | "--" => {
                if let Some(c) = &current {
                    let d = if token == "++" { 1 } else { -1 };
                    current = Some(num(c).wrapping_add(d).to_string());
                }
                op = Op::Concat;
                continue;
            }
            t if t.bytes().all(|b| b.is_ascii_digit()) => t.to_owned(),
            name => value_of(name),
        };
        let a = current.take().unwrap_or_default();
        current = Some(match op {
            Op::Concat => a + &value,
            Op::Add => num(&a).wrapping_add(num(&value)).to_string(),
            Op::Sub => num(&a).wrapping_sub(num(&value)).to_string(),
            Op::Mul => num(&a).wrapping_mul(num(&value)).to_string(),
            Op::Div => match num(&value) {
                0 => "0".to_owned(),
                b => num(&a).wrapping_div(b).to_string(),
            },
        });
        op = Op::Concat;
    }
    current.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            env: [
                ("HOME", "/home/ann"),
                ("EMPTY", ""),
                ("UWSGI_FOO", "from-env"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            cwd: PathBuf::from("/work"),
            hostname: "web1".into(),
            unix_time_micros: 1_700_000_000_123_456,
            uid: 1000,
            gid: 2000,
            user: Some("ann".into()),
            group: None,
            cpus: 8,
            migrating: false,
        }
    }

    fn facts(section: Option<&str>) -> FileFacts {
        FileFacts {
            given: match section {
                Some(s) => format!("conf/mysite.uwsgi.ini:{s}"),
                None => "conf/mysite.uwsgi.ini".into(),
            },
            absolute: PathBuf::from("/srv/apps/mysite/conf/mysite.uwsgi.ini"),
            section: section.map(str::to_owned),
            inode: Some(4242),
        }
    }

    fn value_of(text: &str) -> String {
        let s = read_section(
            &format!("[uwsgi]\nv = {text}\n"),
            &facts(None),
            "uwsgi",
            &ctx(),
        )
        .unwrap();
        s.entries[0].value.clone()
    }

    #[test]
    fn expands_file_magic() {
        assert_eq!(value_of("%p"), "/srv/apps/mysite/conf/mysite.uwsgi.ini");
        assert_eq!(value_of("%d"), "/srv/apps/mysite/conf/"); // trailing slash
        assert_eq!(value_of("%dapp.sock"), "/srv/apps/mysite/conf/app.sock");
        // regression: `%d/app.sock` gave `/srv/apps/mysite/conf//app.sock`.
        assert_eq!(value_of("%d/app.sock"), "/srv/apps/mysite/conf/app.sock");
        assert_eq!(value_of("%s"), "mysite.uwsgi.ini");
        assert_eq!(value_of("%n"), "mysite.uwsgi"); // up to the last dot
        assert_eq!(value_of("%e"), "ini");
        assert_eq!(value_of("%c"), "conf");
        assert_eq!(value_of("%o"), "conf/mysite.uwsgi.ini");
        assert_eq!(value_of("%0|%1|%2|%3|%4"), "srv|apps|mysite|conf|");
        assert_eq!(value_of("%x"), ""); // no section given
        assert_eq!(value_of("%i"), "4242");
    }

    #[test]
    fn upper_case_magic_is_the_same_file() {
        assert_eq!(
            value_of("%D%N.%E"),
            "/srv/apps/mysite/conf/mysite.uwsgi.ini"
        );
        assert_eq!(value_of("%P"), value_of("%p"));
        assert_eq!(value_of("%S|%C|%O|%X|%I|%J"), value_of("%s|%c|%o|%x|%i|%j"));
    }

    #[test]
    fn expands_section_magic() {
        let text = "[app1]\nsocket = /run/%x.sock\n";
        let s = read_section(text, &facts(Some("app1")), "app1", &ctx()).unwrap();
        assert_eq!(s.entries[0].value, "/run/app1.sock");
        let s = read_section("[app1]\nv = %o\n", &facts(Some("app1")), "app1", &ctx()).unwrap();
        assert_eq!(s.entries[0].value, "conf/mysite.uwsgi.ini:app1");
    }

    #[test]
    fn expands_process_magic() {
        assert_eq!(value_of("%v"), "/work");
        assert_eq!(value_of("%h"), "web1");
        assert_eq!(value_of("%t"), "1700000000");
        assert_eq!(value_of("%T"), "1700000000123456");
        assert_eq!(value_of("%k"), "8");
        assert_eq!(value_of("%u:%U"), "1000:ann");
        assert_eq!(value_of("%g:%G"), "2000:2000"); // no group name: the id
        assert_eq!(value_of("%["), "\x1b");
        assert_eq!(value_of("100%%"), "100%");
    }

    #[test]
    fn no_extension_means_the_whole_name() {
        let f = FileFacts {
            absolute: PathBuf::from("/etc/uwsgi/myapp"),
            ..facts(None)
        };
        let s = read_section("[uwsgi]\nv = %n|%e|%d\n", &f, "uwsgi", &ctx()).unwrap();
        assert_eq!(s.entries[0].value, "myapp||/etc/uwsgi/");
    }

    #[test]
    fn hashes_the_path_like_uwsgi() {
        // djb33x("/a") = (((5381 * 33) ^ '/') * 33) ^ 'a' = 0x005966AB, shown as its
        // little-endian bytes.
        assert_eq!(djb33x_hex(b"/a"), "AB665900");
        // A byte >= 0x80 is sign-extended first (uWSGI hashes signed chars).
        assert_eq!(
            djb33x_hex(&[0xff]),
            format!("{:08X}", ((5381u32 * 33) ^ 0xffff_ffff).swap_bytes())
        );
    }

    #[test]
    fn unknown_magic_expands_to_nothing_with_a_note() {
        let s = read_section("[uwsgi]\nv = a%zb%bc%V\n", &facts(None), "uwsgi", &ctx()).unwrap();
        assert_eq!(s.entries[0].value, "abc");
        assert_eq!(s.notes.len(), 3, "{:?}", s.notes);
        assert!(s.notes[0].1.contains("%z is not a uWSGI magic variable"));
        assert!(s.notes[1].1.contains("%b"));
        assert_eq!(value_of("50%"), "50%");
    }

    #[test]
    fn reads_lines_like_uwsgi() {
        let text = "; comment\n# comment too\n[uwsgi]\n  socket   =  /tmp/a.sock  \r\nmaster\nenv = A=B=C\n  ; indented comment\nchdir = /x ; not a comment\nquoted = \"q\"\n[other]\nsocket = /tmp/other.sock\n[uwsgi]\nprocesses=4";
        let s = read_section(text, &facts(None), "uwsgi", &ctx()).unwrap();
        let kv: Vec<(&str, &str, usize)> = s
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str(), e.line))
            .collect();
        assert_eq!(
            kv,
            vec![
                ("socket", "/tmp/a.sock", 4),
                ("master", "", 5),
                ("env", "A=B=C", 6),
                ("chdir", "/x ; not a comment", 8),
                ("quoted", "\"q\"", 9),
                ("processes", "4", 13),
            ]
        );
        assert_eq!(s.entries[0].text, "socket   =  /tmp/a.sock");
    }

    #[test]
    fn reads_the_section_asked_for() {
        let text = "[uwsgi]\nsocket = a\n[app2]\nsocket = b\n";
        let s = read_section(text, &facts(Some("app2")), "app2", &ctx()).unwrap();
        assert_eq!(s.entries.len(), 1);
        assert_eq!(s.entries[0].value, "b");
    }

    #[test]
    fn rejects_a_missing_section_naming_those_found() {
        let e = read_section("[app1]\na = 1\n[app2]\n", &facts(None), "uwsgi", &ctx()).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("[uwsgi]") && m.contains("[app1]") && m.contains("[app2]"),
            "{m}"
        );
    }

    #[test]
    fn takes_an_empty_section_as_no_options() {
        for text in [
            "[uwsgi]\n",
            "[app]\na = 1\n\n[uwsgi]\n; only a comment\n# another\n",
        ] {
            let s = read_section(text, &facts(None), "uwsgi", &ctx()).unwrap();
            assert!(s.entries.is_empty(), "{text:?}");
            let header = text.lines().position(|l| l == "[uwsgi]").unwrap() + 1;
            assert_eq!(s.notes.len(), 1, "{text:?}");
            assert_eq!(s.notes[0].0, header, "{text:?}");
            assert!(
                s.notes[0].1.starts_with("[uwsgi] has no option lines"),
                "{:?}",
                s.notes
            );
        }
    }

    #[test]
    fn expands_env() {
        assert_eq!(value_of("$(HOME)/app"), "/home/ann/app");
        assert_eq!(value_of("$(NOPE:-dflt)"), "dflt");
        assert_eq!(value_of("$(EMPTY:-dflt)"), "dflt");
        assert_eq!(value_of("$(EMPTY-dflt)"), "");
        assert_eq!(value_of("$(NOPE-dflt)"), "dflt");
        assert_eq!(value_of("$(HOME:-dflt)"), "/home/ann");
        let s = read_section("[uwsgi]\nv = $(NOPE)/x\n", &facts(None), "uwsgi", &ctx()).unwrap();
        assert_eq!(s.entries[0].value, "$(NOPE)/x");
        assert!(s.notes[0].1.contains("NOPE is not set"), "{:?}", s.notes);
    }

    #[test]
    fn expands_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("name"), "web7\n").unwrap();
        let c = Context {
            cwd: dir.path().to_owned(),
            ..ctx()
        };
        let s = read_section(
            "[uwsgi]\nv = @(name).sock\nw = @(exec://id)\n",
            &facts(None),
            "uwsgi",
            &c,
        )
        .unwrap();
        assert_eq!(s.entries[0].value, "web7.sock");
        assert_eq!(s.entries[1].value, "@(exec://id)");
        let e = read_section("[uwsgi]\nv = @(missing)\n", &facts(None), "uwsgi", &c).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn expands_placeholders() {
        let text = "[uwsgi]\nbase = /srv\nproject = shop\nchdir = %(base)/%(project)\nsocket = %(chdir)/app.sock\nlate = %(later)\nlater = yes\nkeep = %(undefined)\nset-ph = ph = 7\nuse = %(ph)\nenv-wins = %(foo)\nfoo = from-file\n";
        let s = read_section(text, &facts(None), "uwsgi", &ctx()).unwrap();
        let get = |k: &str| s.entries.iter().find(|e| e.key == k).unwrap().value.clone();
        assert_eq!(get("chdir"), "/srv/shop");
        assert_eq!(get("socket"), "/srv/shop/app.sock");
        assert_eq!(get("late"), "yes");
        assert_eq!(get("keep"), "%(undefined)");
        assert_eq!(get("use"), "7");
        assert_eq!(get("env-wins"), "from-env"); // UWSGI_FOO comes before the file
        for k in [
            "base",
            "project",
            "chdir",
            "later",
            "ph",
            "foo",
            "undefined",
        ] {
            assert!(
                s.placeholders_used.contains(k),
                "{k}: {:?}",
                s.placeholders_used
            );
        }
    }

    #[test]
    fn first_definition_wins() {
        let s = read_section(
            "[uwsgi]\na = 1\na = 2\nv = %(a)\n",
            &facts(None),
            "uwsgi",
            &ctx(),
        )
        .unwrap();
        assert_eq!(s.entries[2].value, "1");
    }

    #[test]
    fn magic_runs_before_placeholders() {
        let s = read_section(
            "[uwsgi]\nsock = %n\nv = /run/%(sock).sock\nw = %%(sock)\n",
            &facts(None),
            "uwsgi",
            &ctx(),
        )
        .unwrap();
        assert_eq!(s.entries[1].value, "/run/mysite.uwsgi.sock");
        assert_eq!(s.entries[2].value, "mysite.uwsgi"); // %% → %, then %(sock)
    }

    #[test]
    fn computes_placeholder_arithmetic() {
        let s = read_section(
            "[uwsgi]\nfa = 17\nfb = 30\nt1 = %(fa + fb + 3)\nt2 = %(fa + fb + 3 * 2)\nt3 = %(fa ++)\nt4 = %(fa fb ++)\nt5 = %(fa / 0)\nt6 = %(fa - nothing)\n",
            &facts(None),
            "uwsgi",
            &ctx(),
        )
        .unwrap();
        let v: Vec<&str> = s.entries[2..].iter().map(|e| e.value.as_str()).collect();
        assert_eq!(v, ["50", "100", "18", "1731", "0", "17"]);
    }

    #[test]
    fn rejects_a_placeholder_loop() {
        let e = read_section("[uwsgi]\na = x%(a)\n", &facts(None), "uwsgi", &ctx()).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    // regression: placeholders that doubled at each line (`v2 = %(v1)%(v1)`) had no
    // bound: 27 lines took a minute and 1.8 GB, at the start and at each reload.
    #[test]
    fn refuses_a_value_expanded_past_its_bound() {
        let mut text = String::from("[uwsgi]\nv0 = ab\n");
        for n in 1..=30 {
            text += &format!("v{n} = %(v{})%(v{})\n", n - 1, n - 1);
        }
        let e = read_section(&text, &facts(None), "uwsgi", &ctx()).unwrap_err();
        assert!(
            matches!(e, IniError::ValueTooLarge { line: 18, .. }),
            "{e:?}"
        );
        let said = e.to_string();
        assert!(
            said.starts_with("line 18: v16's value is over 64 KiB"),
            "{said}"
        );
        // Up to the bound is expanded as before.
        let half = "x".repeat(VALUE_MAX / 2);
        let text = format!("[uwsgi]\nh = {half}\nv = %(h)%(h)\n");
        let s = read_section(&text, &facts(None), "uwsgi", &ctx()).unwrap();
        assert_eq!(s.entries[1].value.len(), VALUE_MAX);
    }

    #[test]
    fn refuses_a_section_expanded_past_its_bound() {
        let mut text = format!("[uwsgi]\nbig = {}\n", "x".repeat(VALUE_MAX - 1));
        for n in 0..20 {
            text += &format!("c{n} = %(big)\n");
        }
        let e = read_section(&text, &facts(None), "uwsgi", &ctx()).unwrap_err();
        // `big` and 15 copies are 16 bytes short of 1 MiB; the five `%(big)` still
        // written out count too.
        assert!(
            matches!(e, IniError::SectionTooLarge { line: 17, .. }),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .starts_with("line 17: with c14 expanded, the section's values are over 1 MiB"),
            "{e}"
        );
    }

    #[test]
    fn refuses_an_at_file_past_the_value_bound() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), "y".repeat(VALUE_MAX + 10)).unwrap();
        std::fs::write(dir.path().join("ok"), "y".repeat(100)).unwrap();
        let mut c = ctx();
        c.cwd = dir.path().to_owned();
        let e = read_section("[uwsgi]\na = @(big)\n", &facts(None), "uwsgi", &c).unwrap_err();
        assert!(
            matches!(e, IniError::ValueTooLarge { line: 2, .. }),
            "{e:?}"
        );
        let s = read_section("[uwsgi]\na = @(ok)\n", &facts(None), "uwsgi", &c).unwrap();
        assert_eq!(s.entries[0].value.len(), 100);
    }

    // regression: review-last: a non-ASCII file over the bound, cut inside a character
    // by the bounded read, was refused as "incomplete utf-8 byte sequence from index
    // 65536", not as over 64 KiB.
    #[test]
    fn refuses_a_non_ascii_at_file_past_the_value_bound_as_over_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), "é".repeat(VALUE_MAX)).unwrap();
        std::fs::write(dir.path().join("bad"), b"ab\xffcd").unwrap();
        let mut c = ctx();
        c.cwd = dir.path().to_owned();
        let e = read_section("[uwsgi]\na = @(big)\n", &facts(None), "uwsgi", &c).unwrap_err();
        assert!(
            matches!(e, IniError::ValueTooLarge { line: 2, .. }),
            "{e:?}"
        );
        // A file that is not UTF-8 within the bound is still that.
        let e = read_section("[uwsgi]\na = @(bad)\n", &facts(None), "uwsgi", &c).unwrap_err();
        assert!(matches!(e, IniError::AtFile { line: 2, .. }), "{e:?}");
    }

    #[test]
    fn leaves_unclosed_references() {
        assert_eq!(value_of("$(HOME"), "$(HOME");
        assert_eq!(value_of("%(x"), "%(x");
        assert_eq!(value_of("$()"), "$()");
    }
}
