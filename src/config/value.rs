//! The typed values options take. Each type parses from the text a user types (clap uses
//! `FromStr`) and from a TOML value (a string, or a number where that is natural), and
//! prints back as the text that would parse to it, so `--print-config` output can be fed
//! back as a `--config` file.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `Deserialize` from a TOML string, integer, float or boolean, through `FromStr`: the
/// text a user would type is the source of truth.
macro_rules! from_text {
    ($($t:ty),* $(,)?) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = Scalar::deserialize(d)?.0;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
from_text!(
    Mode,
    KeyValue,
    crate::server::listener::ListenAddr,
    Size,
    Seconds
);

/// `Serialize` as the `Display` text.
macro_rules! as_text {
    ($($t:ty),* $(,)?) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}
as_text!(Mode, KeyValue, crate::server::listener::ListenAddr);

// Sizes and seconds serialise as a number when that is how they would be typed
// (`buffer-size = 65535`, `timeout = 2.5`).
impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = self.to_string();
        match text.parse::<u64>() {
            Ok(n) if i64::try_from(n).is_ok() => s.serialize_i64(n as i64),
            _ => s.serialize_str(&text),
        }
    }
}

impl Serialize for Seconds {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0.as_secs_f64())
    }
}

/// A TOML string, integer, float or boolean, as the text it would be on the command line.
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A size in bytes: `65535`, `64k`, `1M`, `1MiB`, `2G` (powers of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_size(s).map(Size)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The largest unit that divides exactly, so the text reads as it was likely typed.
        let n = self.0;
        for (shift, unit) in [(30, "G"), (20, "M"), (10, "k")] {
            if n != 0 && n % (1 << shift) == 0 {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}")
    }
}

/// Parses `65535`, `64k`, `1M`, `1MiB`, `2G` (powers of 1024): [`crate::size::parse`].
pub use crate::size::parse as parse_size;

/// The bound of every [`Seconds`] value (exclusive).
const MAX_SECONDS: f64 = 1e9;

/// A positive number of seconds (`5`, `0.5`, `30s`), below [`MAX_SECONDS`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Seconds(pub Duration);

impl FromStr for Seconds {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        // A unit as gunicorn's and systemd's users write them: `30s`, `500ms`, `5m`, `1h`.
        // regression: `--timeout 1m` was refused while `30s` was accepted.
        let v = crate::size::seconds(s)?;
        // Checked after the conversion too: 1e-10 is positive but rounds to 0 ns.
        let d = Duration::try_from_secs_f64(v).unwrap_or_default();
        // The bound keeps every deadline computed from it (now + timeout) representable.
        if v.is_finite() && v >= MAX_SECONDS {
            return Err(format!(
                "{s:?} seconds is too long: it must be below {MAX_SECONDS} (about 31 years)"
            ));
        }
        if !v.is_finite() || d.is_zero() {
            return Err(format!("{s:?} is not a positive number of seconds"));
        }
        Ok(Seconds(d))
    }
}

/// `--pythonpath`'s values (or `POSTERN_PYTHONPATH`'s) as directories: each split at `:`
/// (PYTHONPATH's separator) and `,` (gunicorn's: its `--pythonpath a,b` is two
/// directories, and so it is for a user who migrates), empty entries left out. A
/// `--config` file's list is not split: a directory whose name holds `:` or `,` is
/// written there.
pub fn path_list(value: toml::Value) -> toml::Value {
    let toml::Value::Array(entries) = value else {
        return value;
    };
    toml::Value::Array(
        entries
            .into_iter()
            .flat_map(|e| match e {
                toml::Value::String(s) => s
                    .split([':', ','])
                    .filter(|d| !d.is_empty())
                    .map(|d| toml::Value::String(d.to_owned()))
                    .collect(),
                other => vec![other],
            })
            .collect(),
    )
}

/// The duration limits that `0` or `off` switches off (as 0 does `--max-requests`).
pub const OFF_LIMITS: &[&str] = &["timeout", "slow-log", "max-lifetime", "max-body"];

/// Seconds, or `0`/`off` for no limit (zero seconds, removed from the merged layers by
/// [`is_off`]).
pub fn seconds_or_off(s: &str) -> Result<Seconds, String> {
    let t = s.trim();
    let number = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = ["", "s", "ms", "m", "min", "h"].contains(&&t[number.len()..]);
    if t.eq_ignore_ascii_case("off") || unit && number.trim().parse::<f64>() == Ok(0.0) {
        return Ok(Seconds(Duration::ZERO));
    }
    s.parse().map_err(|e| format!("{e} (0 or off: no limit)"))
}

/// A size, or `0`/`off` for no limit (`Size(0)`, removed from the merged layers by
/// [`is_off`], and taken as no limit where it is read).
/// regression (probe 401): `--max-body 0` refused every body (413) and `off` was "not a
/// size", so a lower layer's limit could not be taken off (uWSGI's `limit-post = 0` is
/// no limit).
pub fn size_or_off(s: &str) -> Result<Size, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(Size(0));
    }
    s.parse().map_err(|e| format!("{e} (0 or off: no limit)"))
}

/// Whether a merged value switches its limit off: `0`, `0.0`, `"0"` or `"off"`.
pub fn is_off(v: &toml::Value) -> bool {
    match v {
        toml::Value::Integer(n) => *n == 0,
        toml::Value::Float(f) => *f == 0.0,
        toml::Value::String(s) => seconds_or_off(s).is_ok_and(|d| d.0.is_zero()),
        _ => false,
    }
}

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.as_secs_f64())
    }
}

/// Unix permission bits, octal: `660`, `0660`, `0o660`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mode(pub u32);

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let digits = t.strip_prefix("0o").unwrap_or(t);
        // from_str_radix takes a sign; a mode has none.
        Some(digits)
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| u32::from_str_radix(d, 8).ok())
            .filter(|&v| v <= 0o777)
            .map(Mode)
            .ok_or_else(|| format!("{s:?} is not octal permission bits like 660 (or 027)"))
    }
}

/// Three digits at least (`660`, `027`): how the options are written.
impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:03o}", self.0)
    }
}

/// `KEY=VALUE` (`--env`); in TOML, one entry of the `[env]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue(pub String, pub String);

impl KeyValue {
    /// A variable the environment can hold: a name that is not empty and has no `=` or
    /// NUL, a value without NUL (`std::env::set_var` would panic on either).
    pub fn new(k: String, v: String) -> Result<KeyValue, String> {
        if k.is_empty() || k.contains(['=', '\0']) {
            return Err(format!("{k:?} is not an environment variable name"));
        }
        if v.contains('\0') {
            return Err(format!("the value of {k} contains a NUL character"));
        }
        Ok(KeyValue(k, v))
    }
}

impl FromStr for KeyValue {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
        KeyValue::new(k.to_owned(), v.to_owned())
    }
}

impl fmt::Display for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.0, self.1)
    }
}

/// `Vec<T>` fields: one value or a list in TOML (`uwsgi = "unix:/a.sock"` or
/// `uwsgi = ["unix:/a.sock", ":3031"]`). A bad entry is reported with `T`'s own message.
pub mod one_or_many {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
        v.serialize(s)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<Vec<T>, D::Error>
    where
        T: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        // Not an untagged enum: its error ("data did not match any variant") would hide
        // why the value is wrong.
        let one = |v: toml::Value| T::deserialize(v).map_err(|e| D::Error::custom(e.message()));
        match toml::Value::deserialize(d)? {
            toml::Value::Array(items) => items.into_iter().map(one).collect(),
            v => one(v).map(|t| vec![t]),
        }
    }
}

/// The `env` option: `--env K=V` on the command line, a `[env]` table in TOML (numbers
/// and booleans are taken as their TOML text: `PORT = 8000` is `"8000"`; a list or a
/// table is an error).
pub mod env_table {
    use super::KeyValue;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[KeyValue], s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(v.iter().map(|KeyValue(k, v)| (k, v)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<KeyValue>, D::Error> {
        let table = toml::Table::deserialize(d)?;
        table
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                        v.to_string()
                    }
                    // The key and the value's type, not the value: it may hold a secret.
                    other => return Err(format!(
                        "{k} is {} {}: an environment variable is a string (or a number or boolean, taken as its text)",
                        if other.type_str().starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" },
                        other.type_str()
                    )),
                };
                KeyValue::new(k, v)
            })
            .map(|kv| kv.map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_back_as_they_parse() {
        for s in ["65535", "64k", "1M", "3G", "1000"] {
            assert_eq!(s.parse::<Size>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn seconds_and_modes() {
        assert_eq!(
            "0.5".parse::<Seconds>().unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!("30s".parse::<Seconds>().unwrap().to_string(), "30");
        // regression: `1m` was refused while `30s` was accepted.
        for (text, secs) in [
            ("1m", 60.0),
            ("2min", 120.0),
            ("1h", 3600.0),
            ("500ms", 0.5),
            ("1.5 m", 90.0),
        ] {
            assert_eq!(
                text.parse::<Seconds>().unwrap().0.as_secs_f64(),
                secs,
                "{text}"
            );
        }
        let e = "1d".parse::<Seconds>().unwrap_err();
        assert!(e.contains("with a unit: 500ms, 5m, 1h"), "{e}");
        assert!("0".parse::<Seconds>().is_err());
        assert!("-1".parse::<Seconds>().is_err());
        // regression: 1e-10 passed as positive and became a zero --timeout.
        assert!("1e-10".parse::<Seconds>().is_err());
        assert!("NaN".parse::<Seconds>().is_err());
        // regression: 1e9 was "not a positive number of seconds"; the message says the bound.
        assert_eq!(
            "1000000000".parse::<Seconds>().unwrap_err(),
            "\"1000000000\" seconds is too long: it must be below 1000000000 (about 31 years)"
        );
        assert!("999999999".parse::<Seconds>().is_ok());
        assert_eq!("0660".parse::<Mode>().unwrap(), Mode(0o660));
        assert_eq!(Mode(0o660).to_string(), "660");
        assert!("999".parse::<Mode>().is_err());
    }

    // regression: `uwsgi = 3031` in a --config file said only "data did not match any
    // variant of untagged enum OneOrMany".
    #[test]
    fn a_bad_list_entry_says_what_is_wrong_with_it() {
        #[derive(Deserialize, Debug)]
        struct T {
            #[serde(with = "one_or_many")]
            #[allow(dead_code)]
            uwsgi: Vec<crate::server::listener::ListenAddr>,
        }
        for text in ["uwsgi = 3031", "uwsgi = [\"unix:/a.sock\", \"nowhere\"]"] {
            let e = toml::from_str::<T>(text).unwrap_err().to_string();
            assert!(!e.contains("untagged"), "{e}");
            assert!(e.contains("3031") || e.contains("nowhere"), "{e}");
        }
        let ok: T = toml::from_str("uwsgi = [\"unix:/a.sock\", \":3031\"]").unwrap();
        assert_eq!(ok.uwsgi.len(), 2);
    }

    // regression: `[env] A = [1, 2]` set A to the text "[1, 2]".
    #[test]
    fn env_values_are_scalars() {
        #[derive(Deserialize)]
        struct T {
            #[serde(with = "env_table")]
            env: Vec<KeyValue>,
        }
        let t: T = toml::from_str("[env]\nPORT = 80\nDEBUG = true\nNAME = \"x\"\n").unwrap();
        let text: Vec<String> = t.env.iter().map(|kv| kv.to_string()).collect();
        assert_eq!(text, ["DEBUG=true", "NAME=x", "PORT=80"]);
        let e = toml::from_str::<T>("[env]\nA = [1, 2]\n")
            .err()
            .unwrap()
            .message()
            .to_owned();
        assert!(e.contains("an environment variable is a string"), "{e}");
        // regression: the message held the value (`A = [1, 2]`), which may be a secret.
        assert!(e.contains("A is an array") && !e.contains("[1, 2]"), "{e}");
        // regression: these made std::env::set_var panic at start.
        for bad in ["\"A=B\" = \"x\"", "\"\" = \"x\"", "A = \"x\\u0000y\""] {
            let e = toml::from_str::<T>(&format!("[env]\n{bad}\n")).err();
            assert!(e.is_some(), "{bad}");
        }
        assert!("=x".parse::<KeyValue>().is_err());
    }

    #[test]
    fn toml_numbers_and_strings_both_parse() {
        #[derive(Deserialize)]
        struct T {
            a: Size,
            b: Size,
            c: Seconds,
            d: Mode,
        }
        let t: T = toml::from_str("a = 1048576\nb = \"10M\"\nc = 2.5\nd = 660\n").unwrap();
        assert_eq!((t.a.0, t.b.0), (1 << 20, 10 << 20));
        assert_eq!(t.c.0, Duration::from_millis(2500));
        assert_eq!(t.d, Mode(0o660));
    }
}
