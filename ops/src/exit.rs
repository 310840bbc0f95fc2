//! How every binary ends: the status its run chose, or its error on stderr (with the chain of
//! causes, `bin: what failed: why`) and status 1. A bad command line or configuration is 64
//! ([`crate::config::EXIT_USAGE`]), decided before the run ([`command_line`] for the first).

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

/// The command line, parsed; a bad one ends the process with its message and status 64
/// (clap's own is 2, which `shake-swarm` and `shake-phone` give other meanings, and which a
/// systemd unit's `RestartPreventExitStatus=64` would not stop), `--help` and `--version`
/// with their text and 0.
pub fn command_line<C: clap::Parser>() -> C {
    C::try_parse().unwrap_or_else(|err| {
        let _ = err.print();
        std::process::exit(usage_status(&err))
    })
}

fn usage_status(err: &clap::Error) -> i32 {
    if err.use_stderr() { i32::from(crate::config::EXIT_USAGE) } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_keeps_its_status_and_an_error_is_status_one() {
        assert_eq!(exit_status::<String>("x", Ok(ExitCode::from(3))), ExitCode::from(3));
        assert_eq!(exit_status("x", Err("no such file")), ExitCode::FAILURE);
    }

    #[derive(clap::Parser, Debug)]
    #[command(name = "x", version)]
    struct Args {
        #[arg(long)]
        rate: u32,
    }

    #[test]
    fn a_bad_command_line_is_64_and_help_is_0() {
        use clap::Parser;
        assert_eq!(Args::try_parse_from(["x", "--rate", "5"]).unwrap().rate, 5);
        for bad in [&["x", "--rate", "5k"][..], &["x", "--rat", "5"], &["x"]] {
            let err = Args::try_parse_from(bad).unwrap_err();
            assert_eq!(usage_status(&err), 64, "{bad:?}");
        }
        for asked in [&["x", "--help"][..], &["x", "--version"]] {
            let err = Args::try_parse_from(asked).unwrap_err();
            assert_eq!(usage_status(&err), 0, "{asked:?}");
        }
    }
}
