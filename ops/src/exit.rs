//! How every binary ends: the status its run chose, or its error on stderr (with the chain of
//! causes, `bin: what failed: why`) and status 1. A bad command line or configuration is 64
//! ([`crate::config::EXIT_USAGE`]), decided before the run.

use std::fmt::Display;
use std::process::ExitCode;

/// The exit status for `bin`'s run: `Ok(status)` as it is; an error printed as `bin: error`
/// (its alternate form, which for `anyhow` errors carries every cause) and status 1.
pub fn exit_status<E: Display>(bin: &str, run: Result<ExitCode, E>) -> ExitCode {
    match run {
        Ok(status) => status,
        Err(err) => {
            eprintln!("{bin}: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_keeps_its_status_and_an_error_is_status_one() {
        assert_eq!(exit_status::<String>("x", Ok(ExitCode::from(3))), ExitCode::from(3));
        assert_eq!(exit_status("x", Err("no such file")), ExitCode::FAILURE);
    }
}
