//! `cargo xtask`: the workspace's build tooling, std only.
//!
//! The `.cargo/config.toml` alias `xtask = "run --package xtask --quiet --"` makes
//! `cargo xtask <subcommand>` work from anywhere in the repository. Run `cargo xtask help` for
//! the list of subcommands.
//!
//! Every external command is `cargo` (taken from the `CARGO` environment variable that cargo
//! sets for the processes it runs, falling back to `cargo` on `PATH`), run in the workspace
//! root, echoed as `$ <command line>` before it starts, and given the inherited stdio unless
//! its output has to be parsed.

mod bench;
mod ci;
mod tidy;

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

/// The subcommands and their one-line help, in the order `help` prints them.
const COMMANDS: &[(&str, &str)] = &[
    (
        "ci",
        "run every CI check in order: fmt, clippy, tests, docs, examples, tidy, cargo-deny",
    ),
    (
        "tidy",
        "check repository rules: core dependency boundary, forbidden macros, lints, docs",
    ),
    (
        "bench [--quick]",
        "run the benches and merge their reports into target/bench-report.json",
    ),
    ("help", "print this list of subcommands"),
];

/// Dispatches to the subcommand named by the first argument.
fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        print_help();
        return ExitCode::from(2);
    };
    let result = match command.as_str() {
        "ci" => ci::run(rest),
        "tidy" => no_arguments("tidy", rest).and_then(|()| tidy::run()),
        "bench" => bench::run(rest),
        "help" | "--help" | "-h" => {
            print_help();
            Ok(())
        }
        other => Err(format!(
            "unknown subcommand `{other}` (run `cargo xtask help` for the list)"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the subcommands with their one-line help.
fn print_help() {
    println!("usage: cargo xtask <subcommand>\n\nsubcommands:");
    let width = COMMANDS
        .iter()
        .map(|(name, _)| name.len())
        .max()
        .unwrap_or(0);
    for (name, help) in COMMANDS {
        println!("  {name:<width$}  {help}");
    }
}

/// Fails if a subcommand that takes no arguments was given some.
fn no_arguments(command: &str, args: &[String]) -> Result<(), String> {
    match args.first() {
        None => Ok(()),
        Some(arg) => Err(format!("`{command}` takes no arguments (got `{arg}`)")),
    }
}

/// The workspace root: the parent of this crate's directory (xtask lives in `<root>/xtask`).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in <root>/xtask, so its manifest directory has a parent")
        .to_path_buf()
}

/// A `cargo` command with `args`, run in `root`, using the `CARGO` the toolchain set (else `cargo`).
pub(crate) fn cargo(root: &Path, args: &[&str]) -> Command {
    let program = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut command = Command::new(program);
    command.args(args).current_dir(root);
    command
}

/// Renders a command for display: explicitly set env vars, the program's file name, the arguments.
pub(crate) fn command_line(command: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            let value = quote(&value.to_string_lossy());
            parts.push(format!("{}={value}", key.to_string_lossy()));
        }
    }
    let program = command.get_program();
    let program = Path::new(program).file_name().unwrap_or(program);
    parts.push(program.to_string_lossy().into_owned());
    parts.extend(command.get_args().map(|arg| quote(&arg.to_string_lossy())));
    parts.join(" ")
}

/// Quotes a word for display when it is empty or contains whitespace.
fn quote(word: &str) -> String {
    if word.is_empty() || word.contains(char::is_whitespace) {
        format!("'{word}'")
    } else {
        word.to_owned()
    }
}

/// Echoes `$ <command line>`, runs the command with inherited stdio and fails unless it succeeds.
pub(crate) fn run_command(command: &mut Command) -> Result<(), String> {
    let line = command_line(command);
    println!("$ {line}");
    let status = command
        .status()
        .map_err(|error| format!("could not start `{line}`: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{line}` exited with {status}"))
    }
}

/// Whether `cargo <subcommand> --version` runs successfully (the cargo plugin is installed).
pub(crate) fn cargo_subcommand_available(root: &Path, subcommand: &str) -> bool {
    cargo(root, &[subcommand, "--version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Formats a wall time as seconds with one decimal, e.g. `12.3s`.
pub(crate) fn seconds(duration: Duration) -> String {
    format!("{:.1}s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_shows_env_program_name_and_quoted_args() {
        let mut command = Command::new("/opt/toolchain/bin/cargo");
        command
            .args(["doc", "--no-deps", "a b"])
            .env("RUSTDOCFLAGS", "-D warnings");
        assert_eq!(
            command_line(&command),
            "RUSTDOCFLAGS='-D warnings' cargo doc --no-deps 'a b'"
        );
    }

    #[test]
    fn workspace_root_holds_the_xtask_directory() {
        assert!(workspace_root().join("xtask").join("Cargo.toml").is_file());
    }

    #[test]
    fn seconds_has_one_decimal() {
        assert_eq!(seconds(Duration::from_millis(1240)), "1.2s");
        assert_eq!(seconds(Duration::from_secs(3)), "3.0s");
    }
}
