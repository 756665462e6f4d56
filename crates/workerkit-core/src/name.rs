//! Name validation for runtimes, workers and commands.
//!
//! The grammar is the Go original's, plus a length limit:
//!
//! - an **identifier** (runtime name, worker local name, each command segment) is non-empty, has at
//!   most [`MAX_IDENTIFIER_LEN`] bytes, and uses only `a-z`, `0-9`, `-` and `_`;
//! - a **qualified worker name** is `runtime/worker`, two identifiers;
//! - a **command name** is one or more identifiers joined by single `/`, at most
//!   [`MAX_COMMAND_NAME_LEN`] bytes in all (`queue/drain`, `snapshots/prune_old`).
//!
//! Validation never panics; a bad name is a [`NameError`] that says which rule it broke.

use std::fmt;

/// The longest identifier accepted, in bytes (a DNS label's length, so names fit Kubernetes
/// labels and metric attributes).
pub const MAX_IDENTIFIER_LEN: usize = 63;

/// The longest command name accepted, in bytes, across all its segments.
pub const MAX_COMMAND_NAME_LEN: usize = 255;

/// What a name names; part of a [`NameError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NameKind {
    /// A runtime name.
    Runtime,
    /// A worker's local name, or a qualified `runtime/worker` name.
    Worker,
    /// A command name.
    Command,
}

impl NameKind {
    /// The lowercase noun used in messages (`runtime`, `worker`, `command`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Runtime => "runtime",
            Self::Worker => "worker",
            Self::Command => "command",
        }
    }
}

/// Which rule a name broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NameProblem {
    /// The name is empty.
    Empty,
    /// The name is longer than the limit for its kind.
    TooLong {
        /// The limit, in bytes.
        max: usize,
    },
    /// The name starts or ends with whitespace.
    SurroundingWhitespace,
    /// The name contains whitespace inside.
    InnerWhitespace,
    /// The name contains uppercase, non-ASCII or punctuation other than `-` and `_`.
    InvalidCharacter,
    /// The name contains `/` where it must be flat.
    Slash,
    /// A qualified worker name is not of the form `runtime/worker`.
    NotQualified,
    /// A command name has an empty segment (leading, trailing or doubled `/`).
    EmptySegment,
}

impl fmt::Display for NameProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("must not be empty"),
            Self::TooLong { max } => write!(f, "must be at most {max} bytes long"),
            Self::SurroundingWhitespace => {
                f.write_str("must not contain leading or trailing whitespace")
            }
            Self::InnerWhitespace => f.write_str("must not contain whitespace"),
            Self::InvalidCharacter => {
                f.write_str("must use lowercase ASCII letters, digits, '-' or '_' only")
            }
            Self::Slash => f.write_str("must be flat and must not contain '/'"),
            Self::NotQualified => f.write_str("must have the form runtime/worker"),
            Self::EmptySegment => {
                f.write_str("must not have leading, trailing or repeated '/' separators")
            }
        }
    }
}

/// A name that broke the naming rules.
///
/// The offending name is kept, truncated to a bounded length, so that the error can be shown to the
/// caller who supplied it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {} name {:?}: {problem}", kind.as_str(), name)]
pub struct NameError {
    kind: NameKind,
    name: String,
    problem: NameProblem,
}

impl NameError {
    fn new(kind: NameKind, name: &str, problem: NameProblem) -> Self {
        // Keep error values small even when someone sends a megabyte of name.
        let mut end = name.len().min(MAX_COMMAND_NAME_LEN + 1);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            kind,
            name: name[..end].to_owned(),
            problem,
        }
    }

    /// What the name was for.
    #[must_use]
    pub fn kind(&self) -> NameKind {
        self.kind
    }

    /// The rejected name (truncated if it was very long).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which rule the name broke.
    #[must_use]
    pub fn problem(&self) -> NameProblem {
        self.problem
    }

    /// The stable error code: `invalid_name`.
    #[must_use]
    pub fn code(&self) -> &'static str {
        "invalid_name"
    }
}

fn check_identifier(s: &str) -> Result<(), NameProblem> {
    if s.is_empty() {
        return Err(NameProblem::Empty);
    }
    if s.trim() != s {
        return Err(NameProblem::SurroundingWhitespace);
    }
    // Character rules first (they explain more than "too long" does for garbage input).
    for c in s.chars() {
        match c {
            'a'..='z' | '0'..='9' | '-' | '_' => {}
            '/' => return Err(NameProblem::Slash),
            c if c.is_whitespace() => return Err(NameProblem::InnerWhitespace),
            _ => return Err(NameProblem::InvalidCharacter),
        }
    }
    if s.len() > MAX_IDENTIFIER_LEN {
        return Err(NameProblem::TooLong {
            max: MAX_IDENTIFIER_LEN,
        });
    }
    Ok(())
}

/// Checks a runtime name.
///
/// # Errors
///
/// A [`NameError`] naming the rule the name broke.
///
/// ```
/// use workerkit_core::name::validate_runtime_name;
/// assert!(validate_runtime_name("billing-workers").is_ok());
/// assert!(validate_runtime_name("Billing").is_err());
/// ```
pub fn validate_runtime_name(name: &str) -> Result<(), NameError> {
    check_identifier(name).map_err(|p| NameError::new(NameKind::Runtime, name, p))
}

/// Checks a worker's local name (no `/`).
///
/// # Errors
///
/// A [`NameError`] naming the rule the name broke.
pub fn validate_worker_local_name(name: &str) -> Result<(), NameError> {
    check_identifier(name).map_err(|p| NameError::new(NameKind::Worker, name, p))
}

/// Checks a qualified worker name, `runtime/worker`.
///
/// # Errors
///
/// A [`NameError`] naming the rule the name broke.
pub fn validate_qualified_worker_name(name: &str) -> Result<(), NameError> {
    let err = |p| NameError::new(NameKind::Worker, name, p);
    if name.is_empty() {
        return Err(err(NameProblem::Empty));
    }
    let Some((runtime, worker)) = name.split_once('/') else {
        return Err(err(NameProblem::NotQualified));
    };
    if worker.contains('/') {
        return Err(err(NameProblem::NotQualified));
    }
    check_identifier(runtime).map_err(err)?;
    check_identifier(worker).map_err(err)
}

/// Checks a worker name: qualified if it contains `/`, local otherwise.
///
/// # Errors
///
/// A [`NameError`] naming the rule the name broke.
pub fn validate_worker_name(name: &str) -> Result<(), NameError> {
    if name.contains('/') {
        validate_qualified_worker_name(name)
    } else {
        validate_worker_local_name(name)
    }
}

/// Checks a command name: identifier segments joined by single `/`.
///
/// # Errors
///
/// A [`NameError`] naming the rule the name broke.
///
/// ```
/// use workerkit_core::name::validate_command_name;
/// assert!(validate_command_name("queue/drain").is_ok());
/// assert!(validate_command_name("queue//drain").is_err());
/// ```
pub fn validate_command_name(name: &str) -> Result<(), NameError> {
    let err = |p| NameError::new(NameKind::Command, name, p);
    if name.is_empty() {
        return Err(err(NameProblem::Empty));
    }
    if name.trim() != name {
        return Err(err(NameProblem::SurroundingWhitespace));
    }
    for segment in name.split('/') {
        if segment.is_empty() {
            return Err(err(NameProblem::EmptySegment));
        }
        match check_identifier(segment) {
            Ok(()) | Err(NameProblem::TooLong { .. }) => {}
            Err(p) => return Err(err(p)),
        }
    }
    if name.len() > MAX_COMMAND_NAME_LEN {
        return Err(err(NameProblem::TooLong {
            max: MAX_COMMAND_NAME_LEN,
        }));
    }
    Ok(())
}

/// A fast, non-cryptographic hasher for the runtime's name lookups (workers by name, commands
/// by name), which run on every dispatch. SipHash's flooding resistance buys nothing there: the
/// keys are names the application registered, and a caller-supplied name is only looked up,
/// never inserted. The multiply-rotate scheme of rustc's `FxHasher`, eight bytes at a time.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct NameHasher(u64);

/// Whether two names are equal, compared a word at a time in place: names are short, and the
/// call to `memcmp` that comparing two `str`s makes costs more than the comparison (dispatch
/// compares the requested worker and command names with the registered ones).
#[inline]
pub(crate) fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let (mut words_a, mut words_b) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut words_a).zip(&mut words_b) {
        if x.iter().zip(y).fold(0, |acc, (x, y)| acc | (x ^ y)) != 0 {
            return false;
        }
    }
    let (rest_a, rest_b) = (words_a.remainder(), words_b.remainder());
    rest_a
        .iter()
        .zip(rest_b)
        .fold(0, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Builds [`NameHasher`]s.
pub(crate) type NameHash = std::hash::BuildHasherDefault<NameHasher>;

impl NameHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl std::hash::Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            // The little-endian word of the rest, zero-padded, built in a register: bytes
            // copied into a stack buffer and read back as a word stall the load (no store
            // forwarding from narrower stores), which was most of a short name's hashing.
            let word = rest
                .iter()
                .rev()
                .fold(0_u64, |word, &byte| (word << 8) | u64::from(byte));
            self.add(word);
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_rest_hashes_as_its_zero_padded_little_endian_word() {
        use std::hash::Hasher as _;
        for name in [
            "",
            "w",
            "noop",
            "seven77",
            "worker-1",
            "worker-12",
            "fifteen-bytes-x",
        ] {
            let mut hasher = NameHasher::default();
            hasher.write(name.as_bytes());
            let mut expected = NameHasher::default();
            for chunk in name.as_bytes().chunks(8) {
                let mut word = [0; 8];
                word[..chunk.len()].copy_from_slice(chunk);
                expected.add(u64::from_le_bytes(word));
            }
            assert_eq!(hasher.finish(), expected.finish(), "{name:?}");
        }
    }

    #[test]
    fn same_name_agrees_with_str_equality() {
        let names = [
            "",
            "w",
            "x",
            "noop",
            "nooq",
            "worker-7",
            "worker-8",
            "worker-78",
            "worker-79",
            "a-long-command-name",
            "a-long-command-namf",
            "b-long-command-name",
        ];
        for a in names {
            for b in names {
                assert_eq!(same_name(a, b), a == b, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn go_valid_runtime_names() {
        for name in ["runtime", "runtime-1", "runtime_1", "a0-b_1", "-", "_", "0"] {
            assert!(validate_runtime_name(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn go_invalid_runtime_names_say_why() {
        let cases = [
            ("", NameProblem::Empty),
            ("Runtime", NameProblem::InvalidCharacter),
            ("runtime.name", NameProblem::InvalidCharacter),
            ("runtime name", NameProblem::InnerWhitespace),
            (" runtime", NameProblem::SurroundingWhitespace),
            ("runtime ", NameProblem::SurroundingWhitespace),
            ("runtime/worker", NameProblem::Slash),
            ("runtimé", NameProblem::InvalidCharacter),
        ];
        for (name, problem) in cases {
            let err = validate_runtime_name(name).unwrap_err();
            assert_eq!(err.problem(), problem, "{name:?}");
            assert_eq!(err.kind(), NameKind::Runtime);
        }
    }

    #[test]
    fn length_limit_is_enforced_at_the_boundary() {
        let ok = "a".repeat(MAX_IDENTIFIER_LEN);
        let long = "a".repeat(MAX_IDENTIFIER_LEN + 1);
        assert!(validate_worker_local_name(&ok).is_ok());
        assert_eq!(
            validate_worker_local_name(&long).unwrap_err().problem(),
            NameProblem::TooLong {
                max: MAX_IDENTIFIER_LEN
            }
        );
    }

    #[test]
    fn qualified_worker_names() {
        assert!(validate_qualified_worker_name("rt/worker").is_ok());
        assert!(validate_worker_name("rt/worker").is_ok());
        assert!(validate_worker_name("worker").is_ok());
        for bad in ["rt", "rt/", "/w", "rt/w/x", "RT/w", "rt/W"] {
            assert!(validate_qualified_worker_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn go_command_names() {
        for ok in [
            "command",
            "queue/drain",
            "snapshots/prune_old",
            "search/reindex-1",
        ] {
            assert!(validate_command_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "Command",
            "/command",
            "command/",
            "queue//drain",
            "queue/Drain",
            "queue/drain now",
            "queue/drain.now",
            " queue/drain",
        ] {
            assert!(validate_command_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn huge_names_are_truncated_in_the_error() {
        let huge = "é".repeat(10_000);
        let err = validate_worker_local_name(&huge).unwrap_err();
        assert!(err.name().len() <= MAX_COMMAND_NAME_LEN + 1);
        assert!(err.to_string().starts_with("invalid worker name"));
    }
}
