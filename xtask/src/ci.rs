//! `cargo xtask ci`: every check CI runs, in order, stopping at the first failure.
//!
//! The steps are: formatting, clippy, tests (nextest when installed, else `cargo test`, then
//! always the doctests, which nextest does not run), rustdoc with warnings denied, every example
//! that ends by itself, `tidy`, and `cargo deny` when installed. Each step prints its wall time;
//! a failure names the step. The last line of a successful run is exactly `verification passed`.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{cargo, cargo_subcommand_available, command_line, run_command, seconds};

/// How long one example may run (after it has been built) before it is killed and `ci` fails.
const EXAMPLE_TIMEOUT: Duration = Duration::from_secs(120);

/// How often a running example is polled for exit.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Environment variable `.ci/run` sets to its start time (Unix seconds) so the total includes setup.
const STARTED_AT_VAR: &str = "CI_RUN_STARTED_AT";

/// Runs all CI steps; `args` must be empty.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    crate::no_arguments("ci", args)?;
    let started = Instant::now();
    let root = crate::workspace_root();
    let mut timings = Vec::new();

    step(&mut timings, "fmt", || {
        run_command(&mut cargo(&root, &["fmt", "--all", "--", "--check"]))
    })?;
    step(&mut timings, "clippy", || {
        run_command(&mut cargo(
            &root,
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--",
                "-D",
                "warnings",
            ],
        ))
    })?;
    step(&mut timings, "test", || tests(&root))?;
    step(&mut timings, "doc", || {
        let mut command = cargo(
            &root,
            &["doc", "--workspace", "--no-deps", "--all-features"],
        );
        command.env("RUSTDOCFLAGS", "-D warnings");
        run_command(&mut command)
    })?;
    step(&mut timings, "examples", || examples(&root))?;
    step(&mut timings, "tidy", crate::tidy::run)?;
    step(&mut timings, "deny", || deny(&root))?;

    let summary: Vec<String> = timings
        .iter()
        .map(|(name, duration)| format!("{name} {}", seconds(*duration)))
        .collect();
    println!("step times: {}", summary.join(", "));
    println!("total elapsed: {}", seconds(total_elapsed(started)));
    println!("verification passed");
    Ok(())
}

/// Runs one named step, printing its banner and wall time; an error names the step.
fn step(
    timings: &mut Vec<(&'static str, Duration)>,
    name: &'static str,
    body: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    println!("==> {name}");
    let start = Instant::now();
    let result = body();
    let elapsed = start.elapsed();
    timings.push((name, elapsed));
    match result {
        Ok(()) => {
            println!("==> {name}: ok ({})", seconds(elapsed));
            Ok(())
        }
        Err(error) => {
            println!("==> {name}: FAILED ({})", seconds(elapsed));
            Err(format!("ci step `{name}` failed: {error}"))
        }
    }
}

/// Time since `.ci/run` started (when it says so), else since this process started.
fn total_elapsed(started: Instant) -> Duration {
    let from_script = env::var(STARTED_AT_VAR)
        .ok()
        .and_then(|value| value.trim().parse::<u64>().ok())
        .and_then(|start| {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
            now.checked_sub(Duration::from_secs(start))
        });
    from_script.unwrap_or_else(|| started.elapsed())
}

/// Runs the tests with nextest when installed (else `cargo test`), then always the doctests.
fn tests(root: &Path) -> Result<(), String> {
    if cargo_subcommand_available(root, "nextest") {
        let mut command = cargo(
            root,
            &[
                "nextest",
                "run",
                "--workspace",
                "--all-features",
                "--no-fail-fast",
            ],
        );
        // Keeps CI logs readable; understood by old and new nextest versions alike.
        command.env("NEXTEST_HIDE_PROGRESS_BAR", "1");
        run_command(&mut command)?;
    } else {
        println!("note: cargo-nextest is not installed; running the tests with cargo test");
        run_command(&mut cargo(root, &["test", "--workspace", "--all-features"]))?;
    }
    run_command(&mut cargo(
        root,
        &["test", "--workspace", "--all-features", "--doc"],
    ))
}

/// Runs `cargo deny check bans licenses sources` when installed, else prints how to install it.
fn deny(root: &Path) -> Result<(), String> {
    if cargo_subcommand_available(root, "deny") {
        run_command(&mut cargo(
            root,
            &["deny", "check", "bans", "licenses", "sources"],
        ))
    } else {
        println!(
            "note: cargo-deny is not installed; skipping cargo deny check \
             (install with: cargo install --locked cargo-deny)"
        );
        Ok(())
    }
}

/// Builds every runnable example, then runs each with a timeout.
fn examples(root: &Path) -> Result<(), String> {
    let examples = discover_examples(root)?;
    if examples.is_empty() {
        println!("no runnable examples found under examples/");
        return Ok(());
    }
    // Build first, without a timeout, so the timeout measures the example, not the compiler.
    let mut build = cargo(root, &["build", "--quiet"]);
    for name in &examples {
        build.args(["-p", name]);
    }
    run_command(&mut build)?;
    for name in &examples {
        let mut command = cargo(root, &["run", "--quiet", "-p", name]);
        let elapsed = run_with_timeout(&mut command, EXAMPLE_TIMEOUT)
            .map_err(|error| format!("example {name}: {error}"))?;
        println!("example {name}: ok ({})", seconds(elapsed));
    }
    Ok(())
}

/// Package names of `examples/*` that have `src/main.rs` and are not opted out of CI, by directory.
fn discover_examples(root: &Path) -> Result<Vec<String>, String> {
    let examples_dir = root.join("examples");
    if !examples_dir.is_dir() {
        return Ok(Vec::new());
    }
    let entries = fs::read_dir(&examples_dir)
        .map_err(|error| format!("cannot list {}: {error}", examples_dir.display()))?;
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.join("Cargo.toml").is_file())
        .collect();
    dirs.sort();

    let mut examples = Vec::new();
    for dir in dirs {
        let display = dir.strip_prefix(root).unwrap_or(&dir).display().to_string();
        if !dir.join("src").join("main.rs").is_file() {
            println!("skipping {display}: no src/main.rs");
            continue;
        }
        let manifest_path = dir.join("Cargo.toml");
        let manifest = fs::read_to_string(&manifest_path)
            .map_err(|error| format!("cannot read {}: {error}", manifest_path.display()))?;
        if ci_run_disabled(&manifest) {
            println!("skipping {display}: ci-run = false");
            continue;
        }
        let name = package_name(&manifest)
            .ok_or_else(|| format!("{display}/Cargo.toml has no `name = \"…\"` in [package]"))?;
        examples.push(name);
    }
    Ok(examples)
}

/// Iterates a TOML text as `(section, trimmed line)` pairs, skipping blanks, comments and headers.
fn toml_lines(manifest: &str) -> impl Iterator<Item = (String, &str)> {
    let mut section = String::new();
    manifest.lines().filter_map(move |line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            None
        } else if let Some(header) = line.strip_prefix('[') {
            section = header.trim_end_matches(']').trim().to_owned();
            None
        } else {
            Some((section.clone(), line))
        }
    })
}

/// Splits a `key = value` line into its trimmed key and value.
fn key_value(line: &str) -> Option<(&str, &str)> {
    let (key, value) = line.split_once('=')?;
    Some((key.trim(), value.trim()))
}

/// The `name = "…"` of the `[package]` section of a manifest (plain text parsing).
fn package_name(manifest: &str) -> Option<String> {
    toml_lines(manifest)
        .filter(|(section, _)| section == "package")
        .filter_map(|(_, line)| key_value(line))
        .find(|(key, _)| *key == "name")
        .and_then(|(_, value)| value.strip_prefix('"')?.split('"').next())
        .map(str::to_owned)
}

/// Whether a manifest says `ci-run = false` under `[package.metadata.xtask]`.
fn ci_run_disabled(manifest: &str) -> bool {
    toml_lines(manifest)
        .filter(|(section, _)| section == "package.metadata.xtask")
        .filter_map(|(_, line)| key_value(line))
        .any(|(key, value)| key == "ci-run" && value == "false")
}

/// Runs a command with inherited stdio, killing it and failing if it outlives `timeout`.
///
/// `cargo run` replaces itself with the program on Unix (it `exec`s), so killing the child
/// kills the example itself, not just cargo.
fn run_with_timeout(command: &mut Command, timeout: Duration) -> Result<Duration, String> {
    let line = command_line(command);
    println!("$ {line}");
    let start = Instant::now();
    let mut child = command
        .spawn()
        .map_err(|error| format!("could not start `{line}`: {error}"))?;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(start.elapsed()),
            Ok(Some(status)) => return Err(format!("`{line}` exited with {status}")),
            Ok(None) => {}
            Err(error) => return Err(format!("could not wait for `{line}`: {error}")),
        }
        if start.elapsed() >= timeout {
            // Best effort: the child may have exited between `try_wait` and `kill`.
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "`{line}` did not finish within {} and was killed",
                seconds(timeout)
            ));
        }
        // Polling a child process (std has no wait-with-timeout); this is not test synchronisation.
        #[allow(clippy::disallowed_methods)]
        thread::sleep(POLL_INTERVAL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
# An example.
[package]
name = "hello-worker"   # trailing comment
version.workspace = true

[dependencies]
name = "not-this-one"

[package.metadata.xtask]
ci-run = false

[lints]
workspace = true
"#;

    #[test]
    fn package_name_reads_the_package_section_only() {
        assert_eq!(package_name(MANIFEST).as_deref(), Some("hello-worker"));
        assert_eq!(package_name("[dependencies]\nname = \"x\"\n"), None);
        assert_eq!(
            package_name("[package]\nname=\"tight\"\n").as_deref(),
            Some("tight")
        );
    }

    #[test]
    fn ci_run_false_is_only_honoured_under_metadata_xtask() {
        assert!(ci_run_disabled(MANIFEST));
        assert!(!ci_run_disabled(
            "[package]\nname = \"a\"\nci-run = false\n"
        ));
        assert!(!ci_run_disabled(
            "[package.metadata.xtask]\nci-run = true\n"
        ));
    }

    #[cfg(unix)]
    #[test]
    fn run_with_timeout_reports_success_failure_and_timeout() {
        let mut ok = Command::new("true");
        assert!(run_with_timeout(&mut ok, Duration::from_secs(10)).is_ok());

        let mut fails = Command::new("false");
        let error = run_with_timeout(&mut fails, Duration::from_secs(10)).unwrap_err();
        assert!(error.contains("exited with"), "{error}");

        let mut hangs = Command::new("sleep");
        hangs.arg("30");
        let error = run_with_timeout(&mut hangs, Duration::from_millis(200)).unwrap_err();
        assert!(error.contains("did not finish within"), "{error}");
    }
}
