//! `cargo xtask tidy`: repository rules that the compiler and clippy do not check.
//!
//! 1. `workerkit-core` stays transport- and exporter-agnostic: its normal dependency tree (all
//!    features) contains no web stack (`axum`, `tower*`), no `tracing-subscriber` and no
//!    `opentelemetry*` crate.
//! 2. No `.rs` file under `crates/`, `examples/` or `xtask/` contains an unfinished-code macro,
//!    a debug-print macro or an ignored test (see [`FORBIDDEN_TEXT`]).
//! 3. Every manifest under `crates/*`, `examples/*` and `xtask` opts into the workspace lints
//!    with `[lints]` followed by `workspace = true`.
//! 4. Every library crate `crates/*/src/lib.rs` has `#![deny(missing_docs)]`.
//!
//! [`check`] collects every problem instead of stopping at the first; the `tidy_passes` test
//! runs it so `cargo test` enforces the rules too.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::{cargo, command_line};

/// The crate whose dependency tree is checked.
const CORE_CRATE: &str = "workerkit-core";

/// Crates `workerkit-core` must not depend on, by exact name.
const FORBIDDEN_CORE_DEPS: &[&str] = &[
    "axum",
    "tower",
    "tower-http",
    "tower-layer",
    "tower-service",
    "tracing-subscriber",
];

/// Crate-name prefix `workerkit-core` must not depend on.
const FORBIDDEN_CORE_DEP_PREFIX: &str = "opentelemetry";

/// Text that must not appear in source files. Built from pieces so this file does not match.
const FORBIDDEN_TEXT: &[&str] = &[
    concat!("to", "do!("),
    concat!("unimpl", "emented!("),
    concat!("#[ig", "nore]"),
    concat!("#[ig", "nore ="),
    concat!("db", "g!("),
];

/// The attribute every library crate root must contain.
const DENY_MISSING_DOCS: &str = "#![deny(missing_docs)]";

/// Checks the rules and prints the outcome; fails listing every problem.
pub(crate) fn run() -> Result<(), String> {
    let problems = check(&crate::workspace_root());
    if problems.is_empty() {
        println!("tidy: ok");
        Ok(())
    } else {
        Err(format!(
            "tidy found {} problem(s):\n  - {}",
            problems.len(),
            problems.join("\n  - ")
        ))
    }
}

/// Checks every rule against the workspace at `root`, returning all problems found.
pub(crate) fn check(root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(problem) = check_core_dependencies(root) {
        problems.push(problem);
    }
    problems.extend(check_forbidden_text(root));
    problems.extend(check_workspace_lints(root));
    problems.extend(check_missing_docs(root));
    problems
}

/// Rule 1: runs `cargo tree` on the core crate and rejects forbidden dependencies.
fn check_core_dependencies(root: &Path) -> Result<(), String> {
    let core_dir = root.join("crates").join(CORE_CRATE);
    if !core_dir.join("Cargo.toml").is_file() {
        return Err(format!(
            "dependency rule: crates/{CORE_CRATE}/Cargo.toml does not exist, so its dependency \
             tree cannot be checked"
        ));
    }
    let mut command = cargo(
        root,
        &[
            "tree",
            "-p",
            CORE_CRATE,
            "-e",
            "normal",
            "--prefix",
            "none",
            "--all-features",
        ],
    );
    let line = command_line(&command);
    println!("$ {line}");
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("dependency rule: could not start `{line}`: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "dependency rule: `{line}` exited with {}:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        ));
    }
    let forbidden = forbidden_dependencies(&String::from_utf8_lossy(&output.stdout));
    if forbidden.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "dependency rule: {CORE_CRATE} must stay transport- and exporter-agnostic, but its \
             normal dependencies include: {}",
            forbidden.join(", ")
        ))
    }
}

/// The forbidden crates (`name version`, deduplicated, in order) in `cargo tree --prefix none` output.
fn forbidden_dependencies(tree: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for line in tree.lines() {
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else { continue };
        let is_forbidden =
            FORBIDDEN_CORE_DEPS.contains(&name) || name.starts_with(FORBIDDEN_CORE_DEP_PREFIX);
        if !is_forbidden {
            continue;
        }
        let entry = match words.next() {
            Some(version) => format!("{name} {version}"),
            None => name.to_owned(),
        };
        if !found.contains(&entry) {
            found.push(entry);
        }
    }
    found
}

/// Rule 2: scans `.rs` files under `crates/`, `examples/` and `xtask/` for forbidden text.
fn check_forbidden_text(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    for dir in ["crates", "examples", "xtask"] {
        collect_rust_files(&root.join(dir), &mut files);
    }
    files.sort();
    let mut problems = Vec::new();
    for file in files {
        let display = relative(root, &file);
        match fs::read_to_string(&file) {
            Ok(text) => {
                for (line, needle) in forbidden_text(&text) {
                    problems.push(format!("{display}:{line}: contains `{needle}`"));
                }
            }
            Err(error) => problems.push(format!("{display}: cannot read: {error}")),
        }
    }
    problems
}

/// Appends every `.rs` file under `dir` to `files`, skipping `target` and hidden directories.
fn collect_rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                collect_rust_files(&path, files);
            }
        } else if name.ends_with(".rs") {
            files.push(path);
        }
    }
}

/// The (1-based line, needle) pairs of forbidden text in a source file.
fn forbidden_text(text: &str) -> Vec<(usize, &'static str)> {
    let mut found = Vec::new();
    for (index, line) in text.lines().enumerate() {
        for needle in FORBIDDEN_TEXT {
            if line.contains(needle) {
                found.push((index + 1, *needle));
            }
        }
    }
    found
}

/// Rule 3: every member manifest opts into the workspace lints.
fn check_workspace_lints(root: &Path) -> Vec<String> {
    let mut manifests = member_dirs(root, "crates");
    manifests.extend(member_dirs(root, "examples"));
    manifests.push(root.join("xtask"));
    let mut problems = Vec::new();
    for dir in manifests {
        let manifest = dir.join("Cargo.toml");
        let display = relative(root, &manifest);
        match fs::read_to_string(&manifest) {
            Ok(text) if has_workspace_lints(&text) => {}
            Ok(_) => problems.push(format!(
                "{display}: missing `[lints]` followed by `workspace = true`"
            )),
            Err(error) => problems.push(format!("{display}: cannot read: {error}")),
        }
    }
    problems
}

/// The sorted subdirectories of `root/parent` that contain a `Cargo.toml`.
fn member_dirs(root: &Path, parent: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(root.join(parent)) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.join("Cargo.toml").is_file())
        .collect();
    dirs.sort();
    dirs
}

/// Whether a manifest has a `[lints]` table whose first entry is `workspace = true`.
fn has_workspace_lints(manifest: &str) -> bool {
    let mut lines = manifest
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .skip_while(|line| *line != "[lints]");
    if lines.next().is_none() {
        return false;
    }
    lines.next().is_some_and(|line| {
        let line = line.split('#').next().unwrap_or_default();
        line.split_whitespace().collect::<String>() == "workspace=true"
    })
}

/// Rule 4: every library crate root under `crates/` denies missing docs.
fn check_missing_docs(root: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    for dir in member_dirs(root, "crates") {
        let lib = dir.join("src").join("lib.rs");
        if !lib.is_file() {
            continue;
        }
        let display = relative(root, &lib);
        match fs::read_to_string(&lib) {
            Ok(text) if text.contains(DENY_MISSING_DOCS) => {}
            Ok(_) => problems.push(format!("{display}: missing `{DENY_MISSING_DOCS}`")),
            Err(error) => problems.push(format!("{display}: cannot read: {error}")),
        }
    }
    problems
}

/// `path` relative to `root` for messages (unchanged if it is not under `root`).
fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tidy_passes() {
        let problems = check(&crate::workspace_root());
        assert!(
            problems.is_empty(),
            "tidy found {} problem(s):\n  - {}",
            problems.len(),
            problems.join("\n  - ")
        );
    }

    #[test]
    fn clean_tree_has_no_forbidden_dependencies() {
        let tree = "workerkit-core v0.1.0 (/repo/crates/workerkit-core)\n\
                    serde v1.0.229\n\
                    tokio v1.54.1\n\
                    tokio-util v0.7.20\n\
                    towers-of-hanoi v1.0.0\n\
                    tracing v0.1.41\n";
        assert_eq!(forbidden_dependencies(tree), Vec::<String>::new());
    }

    #[test]
    fn forbidden_dependencies_are_reported_once_each() {
        let tree = "workerkit-core v0.1.0 (/repo/crates/workerkit-core)\n\
                    axum v0.8.4\n\
                    tower v0.5.2\n\
                    tower v0.5.2 (*)\n\
                    tower-layer v0.3.3\n\
                    tracing-subscriber v0.3.19\n\
                    opentelemetry_sdk v0.30.0\n\
                    opentelemetry v0.30.0\n\
                    serde v1.0.229\n";
        assert_eq!(
            forbidden_dependencies(tree),
            [
                "axum v0.8.4",
                "tower v0.5.2",
                "tower-layer v0.3.3",
                "tracing-subscriber v0.3.19",
                "opentelemetry_sdk v0.30.0",
                "opentelemetry v0.30.0",
            ]
        );
    }

    #[test]
    fn forbidden_text_reports_line_numbers() {
        let source = format!(
            "fn main() {{\n    {}\"x\");\n}}\n{}\nfn t() {{}}\n",
            concat!("db", "g!("),
            concat!("#[ig", "nore]"),
        );
        assert_eq!(
            forbidden_text(&source),
            [(2, concat!("db", "g!(")), (4, concat!("#[ig", "nore]"))]
        );
        assert!(forbidden_text("fn main() { println!(\"debug\"); }\n").is_empty());
    }

    #[test]
    fn workspace_lints_must_follow_the_lints_header() {
        assert!(has_workspace_lints(
            "[package]\nname = \"a\"\n\n[lints]\n# inherit\nworkspace = true\n"
        ));
        assert!(has_workspace_lints("[lints]\nworkspace=true # yes\n"));
        assert!(!has_workspace_lints("[package]\nname = \"a\"\n"));
        assert!(!has_workspace_lints(
            "[lints]\n[dependencies]\nworkspace = true\n"
        ));
        assert!(!has_workspace_lints("[lints]\nworkspace = false\n"));
        assert!(!has_workspace_lints(
            "[lints.rust]\nunsafe_code = \"forbid\"\n"
        ));
    }
}
