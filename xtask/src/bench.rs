//! `cargo xtask bench [--quick]`: runs the benches and merges their reports.
//!
//! The benches are told where to write by `WORKERKIT_BENCH_REPORT_DIR` (set to
//! `<root>/target/bench-report`, or `bench-report` under `CARGO_TARGET_DIR` when set; it is
//! emptied first) and to shorten their measurements by
//! `WORKERKIT_BENCH_QUICK=1` (only with `--quick`). Each bench writes one or more part files
//! `<anything>.json` there, each `{"schema":1,"scenarios":[{...},...]}`.
//!
//! Merging is textual, because xtask has no JSON library: the scenarios of a part are the text
//! between its first `"scenarios":[` and its final `]}`. **This assumes the benches write
//! compact JSON with `scenarios` as the last key of the top-level object**, which is what
//! `serde_json::to_string` produces for a struct declaring `schema` then `scenarios`. Every part
//! and the merged result are also read back with the small reader below, so a part that breaks
//! the assumption fails loudly instead of producing a broken report.
//!
//! The merged `target/bench-report.json` is printed as a table; the command fails when any
//! scenario has `"pass":false`.

use std::env;
use std::fs;
use std::path::Path;

use crate::{cargo, run_command};

/// The report schema version this merger understands.
const SCHEMA: &str = "1";

/// Where the part reports start within a part file.
const SCENARIOS_START: &str = "\"scenarios\":[";

/// Runs the benches, merges the parts, prints the table and fails on a missed target.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let quick = match args {
        [] => false,
        [flag] if flag == "--quick" => true,
        _ => return Err(format!("usage: cargo xtask bench [--quick] (got {args:?})")),
    };
    let root = crate::workspace_root();
    let target = env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), Into::into);
    let target = if target.is_absolute() {
        target
    } else {
        root.join(target)
    };
    let parts_dir = target.join("bench-report");
    let report_path = target.join("bench-report.json");

    if parts_dir.exists() {
        fs::remove_dir_all(&parts_dir)
            .map_err(|error| format!("cannot remove {}: {error}", parts_dir.display()))?;
    }
    fs::create_dir_all(&parts_dir)
        .map_err(|error| format!("cannot create {}: {error}", parts_dir.display()))?;

    let mut command = cargo(&root, &["bench", "--workspace"]);
    command.env("WORKERKIT_BENCH_REPORT_DIR", &parts_dir);
    if quick {
        command.env("WORKERKIT_BENCH_QUICK", "1");
    }
    run_command(&mut command).map_err(|error| format!("benches failed: {error}"))?;

    let parts = read_parts(&parts_dir)?;
    let merged = merge(&parts)?;
    fs::write(&report_path, &merged)
        .map_err(|error| format!("cannot write {}: {error}", report_path.display()))?;

    let rows = scenario_rows(&merged)?;
    print!("{}", render_table(&rows));
    println!(
        "wrote {} ({} scenarios from {} part files)",
        report_path.display(),
        rows.len(),
        parts.len()
    );
    let failed: Vec<&str> = rows
        .iter()
        .filter(|row| row.pass == Some(false))
        .map(|row| row.id.as_str())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} scenario(s) missed their target: {}",
            failed.len(),
            failed.join(", ")
        ))
    }
}

/// Reads every `*.json` part in `dir`, sorted by file name, as `(file name, text)`.
fn read_parts(dir: &Path) -> Result<Vec<(String, String)>, String> {
    let entries =
        fs::read_dir(dir).map_err(|error| format!("cannot list {}: {error}", dir.display()))?;
    let mut paths: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(format!(
            "the benches wrote no report parts: {} has no *.json files (each bench must write \
             {{\"schema\":1,\"scenarios\":[...]}} into $WORKERKIT_BENCH_REPORT_DIR)",
            dir.display()
        ));
    }
    paths
        .iter()
        .map(|path| {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            fs::read_to_string(path)
                .map(|text| (name.into_owned(), text))
                .map_err(|error| format!("cannot read {}: {error}", path.display()))
        })
        .collect()
}

/// Merges parts into one `{"schema":1,"scenarios":[...]}` document, scenarios in part order.
fn merge(parts: &[(String, String)]) -> Result<String, String> {
    let mut scenarios = Vec::new();
    for (name, text) in parts {
        let inner = scenarios_text(text).map_err(|error| format!("bench part {name}: {error}"))?;
        if !inner.is_empty() {
            scenarios.push(inner);
        }
    }
    let merged = format!(
        "{{\"schema\":{SCHEMA},\"scenarios\":[{}]}}",
        scenarios.join(",")
    );
    // Read the result back so a part that broke the textual assumption cannot go unnoticed.
    scenario_rows(&merged).map_err(|error| format!("merged bench report is invalid: {error}"))?;
    Ok(merged)
}

/// The text inside a part's `scenarios` array (see the module docs for the assumption).
fn scenarios_text(part: &str) -> Result<&str, String> {
    let document = Json::parse(part)?;
    if document.get("schema") != Some(&Json::Number(SCHEMA.to_owned())) {
        return Err(format!("expected \"schema\":{SCHEMA}"));
    }
    if !matches!(document.get("scenarios"), Some(Json::Array(_))) {
        return Err("expected a \"scenarios\" array".to_owned());
    }
    let part = part.trim();
    let start = part
        .find(SCENARIOS_START)
        .ok_or_else(|| format!("expected compact JSON containing `{SCENARIOS_START}`"))?
        + SCENARIOS_START.len();
    let end = part
        .strip_suffix("]}")
        .ok_or("expected compact JSON ending in `]}` with \"scenarios\" as the last key")?
        .len();
    part.get(start..end)
        .map(str::trim)
        .ok_or_else(|| "malformed scenarios array".to_owned())
}

/// One table row: the displayed fields of a scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    /// Scenario id.
    id: String,
    /// Measured value.
    value: String,
    /// Baseline value.
    baseline: String,
    /// Unit of value and baseline.
    unit: String,
    /// value / baseline.
    ratio: String,
    /// The target, rendered as `key=value` pairs.
    target: String,
    /// Whether the target was met, if the scenario says.
    pass: Option<bool>,
}

/// Reads the rows of a merged report.
fn scenario_rows(report: &str) -> Result<Vec<Row>, String> {
    let document = Json::parse(report)?;
    let Some(Json::Array(scenarios)) = document.get("scenarios") else {
        return Err("expected a \"scenarios\" array".to_owned());
    };
    scenarios
        .iter()
        .enumerate()
        .map(|(index, scenario)| {
            let Json::Object(_) = scenario else {
                return Err(format!("scenario #{index} is not an object"));
            };
            let field = |key: &str| scenario.get(key).map_or_else(|| "-".to_owned(), Json::cell);
            Ok(Row {
                id: field("id"),
                value: field("value"),
                baseline: field("baseline"),
                unit: field("unit"),
                ratio: field("ratio"),
                target: field("target"),
                pass: match scenario.get("pass") {
                    Some(Json::Bool(pass)) => Some(*pass),
                    _ => None,
                },
            })
        })
        .collect()
}

/// Renders rows as an aligned text table with a header line.
fn render_table(rows: &[Row]) -> String {
    let header = ["id", "value", "baseline", "unit", "ratio", "target", "pass"].map(str::to_owned);
    let mut lines = vec![header];
    for row in rows {
        let pass = match row.pass {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        lines.push([
            row.id.clone(),
            row.value.clone(),
            row.baseline.clone(),
            row.unit.clone(),
            row.ratio.clone(),
            row.target.clone(),
            pass.to_owned(),
        ]);
    }
    let mut widths = [0; 7];
    for line in &lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut table = String::new();
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        table.push_str(cells.join("  ").trim_end());
        table.push('\n');
    }
    table
}

/// Formats a JSON number for the table: integers as is, other values with three decimals.
fn format_number(text: &str) -> String {
    match text.parse::<f64>() {
        Ok(value) if value.fract() == 0.0 && value.abs() < 1e15 => format!("{value:.0}"),
        Ok(value) => format!("{value:.3}"),
        Err(_) => text.to_owned(),
    }
}

/// A JSON value, as far as bench reports need. Numbers keep their source text.
#[derive(Debug, Clone, PartialEq)]
enum Json {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, as written.
    Number(String),
    /// A string, unescaped.
    String(String),
    /// An array.
    Array(Vec<Self>),
    /// An object, keys in document order.
    Object(Vec<(String, Self)>),
}

impl Json {
    /// Parses a complete JSON document.
    fn parse(text: &str) -> Result<Self, String> {
        let mut reader = Reader { text, pos: 0 };
        let value = reader.value()?;
        reader.skip_whitespace();
        if reader.pos == text.len() {
            Ok(value)
        } else {
            Err(reader.error("trailing characters"))
        }
    }

    /// The value of `key` if this is an object that has it.
    fn get(&self, key: &str) -> Option<&Self> {
        match self {
            Self::Object(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Renders the value for a table cell; objects become `key=value` pairs.
    fn cell(&self) -> String {
        match self {
            Self::Null => "-".to_owned(),
            Self::Bool(value) => value.to_string(),
            Self::Number(text) => format_number(text),
            Self::String(text) => text.clone(),
            Self::Array(items) => items.iter().map(Self::cell).collect::<Vec<_>>().join(","),
            Self::Object(entries) => entries
                .iter()
                .map(|(key, value)| format!("{key}={}", value.cell()))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// A recursive-descent JSON reader over a string.
#[derive(Debug)]
struct Reader<'a> {
    /// The whole document.
    text: &'a str,
    /// Byte offset of the next unread character.
    pos: usize,
}

impl Reader<'_> {
    /// An error message pointing at the current position.
    fn error(&self, what: &str) -> String {
        format!("invalid JSON at byte {}: {what}", self.pos)
    }

    /// The next unread byte, if any.
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    /// Skips JSON whitespace.
    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// Consumes `byte` (after whitespace) or fails.
    fn expect(&mut self, byte: u8) -> Result<(), String> {
        self.skip_whitespace();
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected `{}`", char::from(byte))))
        }
    }

    /// Reads any value.
    fn value(&mut self) -> Result<Json, String> {
        self.skip_whitespace();
        match self.peek() {
            Some(b'{') => self.object(),
            Some(b'[') => self.array(),
            Some(b'"') => self.string().map(Json::String),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.error("expected a value")),
        }
    }

    /// Reads a fixed word such as `true`.
    fn literal(&mut self, word: &str, value: Json) -> Result<Json, String> {
        if self.text[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.error(&format!("expected `{word}`")))
        }
    }

    /// Reads a number, keeping its text (validated by parsing it as `f64`).
    fn number(&mut self) -> Result<Json, String> {
        let start = self.pos;
        while matches!(
            self.peek(),
            Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
        ) {
            self.pos += 1;
        }
        let text = &self.text[start..self.pos];
        match text.parse::<f64>() {
            Ok(_) => Ok(Json::Number(text.to_owned())),
            Err(_) => Err(self.error(&format!("bad number `{text}`"))),
        }
    }

    /// Reads a string, resolving escapes.
    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out = String::new();
        loop {
            let rest = &self.text[self.pos..];
            let Some(offset) = rest.find(['"', '\\']) else {
                return Err(self.error("unterminated string"));
            };
            out.push_str(&rest[..offset]);
            self.pos += offset + 1;
            if rest.as_bytes()[offset] == b'"' {
                return Ok(out);
            }
            let escape = self
                .peek()
                .ok_or_else(|| self.error("unterminated escape"))?;
            self.pos += 1;
            match escape {
                b'"' => out.push('"'),
                b'\\' => out.push('\\'),
                b'/' => out.push('/'),
                b'b' => out.push('\u{8}'),
                b'f' => out.push('\u{c}'),
                b'n' => out.push('\n'),
                b'r' => out.push('\r'),
                b't' => out.push('\t'),
                b'u' => {
                    let hex = self
                        .text
                        .get(self.pos..self.pos + 4)
                        .ok_or_else(|| self.error("short \\u escape"))?;
                    let code =
                        u32::from_str_radix(hex, 16).map_err(|_| self.error("bad \\u escape"))?;
                    self.pos += 4;
                    // Surrogate halves are not decoded; reports only need ASCII.
                    out.push(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER));
                }
                _ => return Err(self.error("unknown escape")),
            }
        }
    }

    /// Reads an array.
    fn array(&mut self) -> Result<Json, String> {
        self.expect(b'[')?;
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Json::Array(items));
        }
        loop {
            items.push(self.value()?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Json::Array(items));
                }
                _ => return Err(self.error("expected `,` or `]`")),
            }
        }
    }

    /// Reads an object.
    fn object(&mut self) -> Result<Json, String> {
        self.expect(b'{')?;
        let mut entries = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Json::Object(entries));
        }
        loop {
            self.skip_whitespace();
            let key = self.string()?;
            self.expect(b':')?;
            entries.push((key, self.value()?));
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Json::Object(entries));
                }
                _ => return Err(self.error("expected `,` or `}`")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PART_A: &str = r#"{"schema":1,"scenarios":[{"id":"start_stop","value":12.5,"baseline":10,"unit":"us","ratio":1.25,"target":{"max_ratio":1.5},"pass":true}]}"#;
    const PART_B: &str = r#"{"schema":1,"scenarios":[{"id":"drain \"100\"","value":3,"baseline":2,"unit":"ms","ratio":1.5,"target":{"max_ratio":1.2},"pass":false},{"id":"no_pass","value":1}]}"#;

    fn parts(texts: &[&str]) -> Vec<(String, String)> {
        texts
            .iter()
            .enumerate()
            .map(|(index, text)| (format!("{index}.json"), (*text).to_owned()))
            .collect()
    }

    #[test]
    fn reader_handles_nesting_escapes_and_whitespace() {
        let json = Json::parse(
            " { \"a\" : [1, -2.5e3, true, null, {}], \"b\": \"x\\\"y\\u0041\\n\", \"c\": {\"d\": false} } ",
        )
        .unwrap();
        assert_eq!(
            json.get("a"),
            Some(&Json::Array(vec![
                Json::Number("1".to_owned()),
                Json::Number("-2.5e3".to_owned()),
                Json::Bool(true),
                Json::Null,
                Json::Object(Vec::new()),
            ]))
        );
        assert_eq!(json.get("b"), Some(&Json::String("x\"yA\n".to_owned())));
        assert_eq!(
            json.get("c").and_then(|c| c.get("d")),
            Some(&Json::Bool(false))
        );
    }

    #[test]
    fn reader_rejects_malformed_documents() {
        for bad in [
            "",
            "{",
            "{\"a\":}",
            "[1,]",
            "{\"a\":1} x",
            "\"open",
            "tru",
            "1.2.3",
        ] {
            assert!(Json::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn scenarios_text_extracts_the_array_contents() {
        assert!(
            scenarios_text(PART_A)
                .unwrap()
                .starts_with("{\"id\":\"start_stop\"")
        );
        assert!(scenarios_text(PART_A).unwrap().ends_with("\"pass\":true}"));
        assert_eq!(
            scenarios_text("{\"schema\":1,\"scenarios\":[]}\n").unwrap(),
            ""
        );
    }

    #[test]
    fn scenarios_text_rejects_other_shapes() {
        assert!(scenarios_text("{\"schema\":2,\"scenarios\":[]}").is_err());
        assert!(scenarios_text("{\"scenarios\":[]}").is_err());
        // Valid JSON, but `scenarios` is not last: the textual extraction cannot be trusted.
        assert!(scenarios_text("{\"schema\":1,\"scenarios\":[],\"extra\":1}").is_err());
        // Pretty-printed output breaks the compact-JSON assumption.
        assert!(scenarios_text("{\"schema\": 1, \"scenarios\": []}").is_err());
    }

    #[test]
    fn merge_concatenates_scenarios_in_part_order() {
        let merged = merge(&parts(&[PART_A, "{\"schema\":1,\"scenarios\":[]}", PART_B])).unwrap();
        let rows = scenario_rows(&merged).unwrap();
        let ids: Vec<&str> = rows.iter().map(|row| row.id.as_str()).collect();
        assert_eq!(ids, ["start_stop", "drain \"100\"", "no_pass"]);
        assert!(merged.starts_with("{\"schema\":1,\"scenarios\":[{\"id\":\"start_stop\""));
    }

    #[test]
    fn rows_render_numbers_targets_and_pass() {
        let rows = scenario_rows(&merge(&parts(&[PART_A, PART_B])).unwrap()).unwrap();
        assert_eq!(
            rows[0],
            Row {
                id: "start_stop".to_owned(),
                value: "12.500".to_owned(),
                baseline: "10".to_owned(),
                unit: "us".to_owned(),
                ratio: "1.250".to_owned(),
                target: "max_ratio=1.500".to_owned(),
                pass: Some(true),
            }
        );
        assert_eq!(rows[1].pass, Some(false));
        assert_eq!(rows[2].pass, None);
        assert_eq!(rows[2].baseline, "-");

        let table = render_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("id "));
        assert!(lines[1].ends_with("yes"));
        assert!(lines[2].ends_with("NO"));
    }
}
