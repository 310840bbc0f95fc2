//! TOML configuration files: reading, parsing, validating, and the one error type that names
//! the field at fault (so `--check-config` can say exactly what to fix, and exit 64).

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// A configuration that cannot be used, and the field to blame.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML for the schema (the parser's message names the field and line).
    #[error("{path}: {message}")]
    Parse {
        /// The file (`<config>` for text).
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A field holds a value that cannot work.
    #[error("invalid `{field}`: {message}")]
    Invalid {
        /// Dotted path of the field, e.g. `rounds[1].cash.envelopes`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// The error for a field holding a value that cannot work.
pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), message: message.into() }
}

/// A configuration read from TOML: what parsing alone cannot check, `validate` does.
pub trait Validate: DeserializeOwned {
    /// Checks every value that parsing alone cannot.
    fn validate(&self) -> Result<(), ConfigError>;

    /// Checks the files the configuration names (certificates, keys) can be read and used,
    /// as `nginx -t` does. Run by `--check-config` and before serving; not by [`parse`].
    fn check_files(&self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// What a file named by a configuration must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// One or more PEM certificates.
    Certificates,
    /// A PEM private key.
    PrivateKey,
}

/// Reads `path` as `kind`; a missing, unreadable or unusable file names `field`.
pub fn check_tls_file(field: &str, path: &Path, kind: TlsFile) -> Result<(), ConfigError> {
    let loaded = match kind {
        TlsFile::Certificates => crate::tls::load_certs(path).map(drop),
        TlsFile::PrivateKey => crate::tls::load_key(path).map(drop),
    };
    loaded.map_err(|err| invalid(field, err.to_string()))
}

/// Parses and validates configuration text.
pub fn parse<T: Validate>(text: &str) -> Result<T, ConfigError> {
    let config: T = toml::from_str(text).map_err(|err| ConfigError::Parse {
        path: PathBuf::from("<config>"),
        message: parse_message(text, &err),
    })?;
    config.validate()?;
    Ok(config)
}

/// The parser's message and where: never the offending line itself, which toml's own text
/// quotes, since that line may hold a token key or a database password (a misspelt
/// `secret_hex`, an unquoted value) and the message goes to the journal.
fn parse_message(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim();
    // serde's "invalid type: string \"VALUE\", expected u32" quotes the value too, and so does
    // "unknown variant `VALUE`, expected one of ..." (a URL with its password given where a
    // ledger kind is asked for).
    let message = match (message.split_once(':'), message.rsplit_once(", expected")) {
        (
            Some((kind @ ("invalid type" | "invalid value" | "invalid length"), _)),
            Some((_, want)),
        ) => {
            format!("{kind}, expected{want}")
        }
        _ if message.starts_with("unknown variant") => match message.rsplit_once(", expected") {
            Some((_, want)) => format!("unknown variant, expected{want}"),
            None => "unknown variant".to_owned(),
        },
        _ => message.to_owned(),
    };
    match err.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// Reads, parses and validates a configuration file.
pub fn load<T: Validate>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    parse(&text).map_err(|err| match err {
        ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.to_owned(), message },
        other => other,
    })
}

/// Exit status for a bad command line or configuration (sysexits' `EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;

/// Exit status for data that does not fit a valid configuration: a ledger the configured
/// rounds do not replay (sysexits' `EX_DATAERR`).
pub const EXIT_DATA: u8 = 65;

/// Loads `path` for binary `bin` and checks the files it names (and that `SHAKE_FAILPOINT`, if
/// set, names only known faults), or prints `bin: error` and hands back exit status 64.
pub fn load_or_exit<T: Validate>(bin: &str, path: &Path) -> Result<T, std::process::ExitCode> {
    let usage = |err: &dyn std::fmt::Display| {
        eprintln!("{bin}: {err}");
        std::process::ExitCode::from(EXIT_USAGE)
    };
    if let Ok(value) = std::env::var("SHAKE_FAILPOINT") {
        let unknown = crate::supervise::unknown_failpoints(&value);
        if !unknown.is_empty() {
            return Err(usage(&format_args!(
                "SHAKE_FAILPOINT names no such fault: {} (known: {})",
                unknown.join(", "),
                crate::supervise::FAILPOINTS.join(", ")
            )));
        }
    }
    load(path)
        .and_then(|config: T| config.check_files().map(|()| config))
        .map_err(|err| usage(&err))
}

/// `--check-config FILE`: prints `FILE: ok (summary)` and returns success, or prints the error
/// (which names the field) and returns 64.
pub fn check<T: Validate>(
    bin: &str,
    path: &Path,
    summary: impl FnOnce(&T) -> String,
) -> std::process::ExitCode {
    match checked::<T>(bin, path, summary) {
        Ok(_) => std::process::ExitCode::SUCCESS,
        Err(code) => code,
    }
}

/// [`check`], handing back the configuration checked for a check that goes on with it.
pub fn checked<T: Validate>(
    bin: &str,
    path: &Path,
    summary: impl FnOnce(&T) -> String,
) -> Result<T, std::process::ExitCode> {
    let config = load_or_exit::<T>(bin, path)?;
    println!("{}: ok ({})", path.display(), summary(&config));
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        size: u32,
        #[serde(default)]
        kind: Option<Kind>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        Fjall,
        Postgres,
    }

    impl Validate for Sample {
        fn validate(&self) -> Result<(), ConfigError> {
            if self.size == 0 { Err(invalid("size", "at least 1")) } else { Ok(()) }
        }
    }

    #[test]
    fn missing_and_unusable_tls_files_name_their_field() {
        let missing = Path::new("/nonexistent/cert.pem");
        match check_tls_file("tls.cert", missing, TlsFile::Certificates) {
            Err(ConfigError::Invalid { field, message }) => {
                assert_eq!(field, "tls.cert");
                assert!(message.contains("/nonexistent/cert.pem"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let file =
            std::env::temp_dir().join(format!("shake-ops-notpem-{}.pem", std::process::id()));
        std::fs::write(&file, "not a certificate").unwrap();
        assert!(check_tls_file("tls.key", &file, TlsFile::PrivateKey).is_err());
        assert!(check_tls_file("tls.cert", &file, TlsFile::Certificates).is_err());
        std::fs::remove_file(file).unwrap();
    }

    #[test]
    fn parse_validate_and_name_the_file() {
        assert_eq!(parse::<Sample>("size = 3").unwrap().size, 3);
        assert!(
            matches!(parse::<Sample>("size = 0"), Err(ConfigError::Invalid { field, .. }) if field == "size")
        );
        assert!(matches!(parse::<Sample>("colour = 1"), Err(ConfigError::Parse { .. })));
        // Where and why, never the line: it may hold a secret.
        for text in [
            "size = 1\nsecert_hex = \"0badc0ffee\"",
            "size = 1\nsecret_hex = 0badc0ffee",
            "\nsize = \"0badc0ffee\"",
            "size = 1\nkind = \"postgres://app:0badc0ffee@db\"",
        ] {
            let said = parse::<Sample>(text).unwrap_err().to_string();
            assert!(said.contains("line 2, column"), "{said}");
            assert!(!said.contains("0badc0ffee"), "{said}");
        }
        assert!(matches!(
            parse::<Sample>("size = 1\nkind = \"fjall\""),
            Ok(Sample { kind: Some(Kind::Fjall), .. })
        ));
        let said = parse::<Sample>("size = 1\nkind = \"nope\"").unwrap_err().to_string();
        assert!(said.contains("unknown variant, expected `fjall` or `postgres`"), "{said}");
        let missing = Path::new("/nonexistent/shake.toml");
        assert!(matches!(load::<Sample>(missing), Err(ConfigError::Read { .. })));
        let file =
            std::env::temp_dir().join(format!("shake-ops-config-{}.toml", std::process::id()));
        std::fs::write(&file, "size = [").unwrap();
        match load::<Sample>(&file) {
            Err(ConfigError::Parse { path, .. }) => assert_eq!(path, file),
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(file).unwrap();
    }
}
