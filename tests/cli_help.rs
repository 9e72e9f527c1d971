//! The command line's surface, pinned: every command's `--help` (found by walking the
//! `Commands:` lists, so a new subcommand is found too) must equal its snapshot in
//! `tests/cli-help/`, and every subcommand, flag and argument in those texts must have
//! a row in `tests/cli-inventory.md` naming the binary-level test that covers it. A new
//! flag without a test, a renamed one, or a changed help text fails here.
//!
//! After an intended change: `PORTSHIFT_UPDATE_SNAPSHOTS=1 cargo test --test cli_help`
//! rewrites the snapshots (review the diff); missing inventory rows are printed, ready
//! to paste, with the test column still to fill in.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

const UPDATE: &str = "PORTSHIFT_UPDATE_SNAPSHOTS";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `portshift PATH --help` with an empty environment, so `[env: X=value]` shows no
/// value of the machine's and the text does not depend on the terminal.
fn help(path: &[String]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portshift"))
        .args(path)
        .arg("--help")
        .env_clear()
        .output()
        .expect("run portshift --help");
    assert!(
        out.status.success(),
        "portshift {} --help failed: {}",
        path.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The lines of a help section (`Commands:`, `Options:`, `Arguments:`): it ends at an
/// empty line (an option without a description leaves a line of spaces, not an empty one).
fn section<'a>(text: &'a str, title: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| *l != title)
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect()
}

fn subcommands(text: &str) -> Vec<String> {
    section(text, "Commands:")
        .into_iter()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// `--flag`s (not --help/--version) and positional `<ARG>`/`[ARG]`s of one help text.
fn items(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in section(text, "Options:") {
        let t = line.trim_start();
        let t = t
            .strip_prefix('-')
            .filter(|r| r.chars().nth(1) == Some(','))
            .map(|r| r[2..].trim_start())
            .unwrap_or(t);
        if let Some(flag) = t.strip_prefix("--") {
            let name: String = flag
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            if name != "help" && name != "version" {
                out.push(format!("--{name}"));
            }
        }
    }
    for line in section(text, "Arguments:") {
        let t = line.trim_start();
        if let Some(arg) = t.split_whitespace().next()
            && (arg.starts_with('<') || arg.starts_with('['))
        {
            out.push(arg.to_string());
        }
    }
    out
}

/// Every command path (`[]`, `["export"]`, `["schedule", "create"]`, …) with its help.
fn all_help() -> BTreeMap<Vec<String>, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![Vec::<String>::new()];
    while let Some(path) = todo.pop() {
        let text = help(&path);
        for c in subcommands(&text) {
            let mut p = path.clone();
            p.push(c);
            todo.push(p);
        }
        out.insert(path, text);
    }
    out
}

fn snapshot_name(path: &[String]) -> String {
    let mut name = String::from("portshift");
    for p in path {
        name.push('-');
        name.push_str(p);
    }
    name + ".txt"
}

#[test]
fn help_texts_match_their_snapshots() {
    let dir = repo().join("tests/cli-help");
    let update = std::env::var(UPDATE).is_ok_and(|v| v == "1");
    if update {
        std::fs::create_dir_all(&dir).unwrap();
    }
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    for (path, text) in all_help() {
        let name = snapshot_name(&path);
        let file = dir.join(&name);
        names.insert(name.clone());
        if update {
            std::fs::write(&file, &text).unwrap();
            continue;
        }
        match std::fs::read_to_string(&file) {
            Ok(snapshot) if snapshot == text => {}
            Ok(snapshot) => problems.push(format!(
                "tests/cli-help/{name} differs from `portshift {} --help`:\n{}",
                path.join(" "),
                first_difference(&snapshot, &text)
            )),
            Err(_) => problems.push(format!("tests/cli-help/{name} is missing")),
        }
    }
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        if !names.contains(&name) {
            if update {
                std::fs::remove_file(dir.join(&name)).unwrap();
            } else {
                problems.push(format!(
                    "tests/cli-help/{name} is the snapshot of a command that no longer exists"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n\nIf the change is intended: {UPDATE}=1 cargo test --test cli_help, then review the diff.",
        problems.join("\n\n")
    );
    println!("cli help: {} snapshots checked", names.len());
}

fn first_difference(old: &str, new: &str) -> String {
    let (old, new): (Vec<_>, Vec<_>) = (old.lines().collect(), new.lines().collect());
    for i in 0..old.len().max(new.len()) {
        let (o, n) = (old.get(i), new.get(i));
        if o != n {
            return format!(
                "  line {}:\n  - {}\n  + {}",
                i + 1,
                o.unwrap_or(&"(end)"),
                n.unwrap_or(&"(end)")
            );
        }
    }
    "  (the texts differ only in a final newline)".to_string()
}

/// One row of tests/cli-inventory.md.
struct Row {
    line: usize,
    tests: Vec<(String, String)>,
}

/// `| command | flag | tests | … |` rows; the command and the flag in backticks,
/// `(command)` for the subcommand itself, tests as `file.rs::function`, comma-separated.
fn inventory(text: &str) -> BTreeMap<(String, String), Row> {
    let mut rows = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 || !cells[1].starts_with('`') {
            continue;
        }
        let unquote = |s: &str| s.trim_matches('`').to_string();
        let tests = cells[3]
            .split(',')
            .map(|t| t.trim().trim_matches('`'))
            .filter(|t| !t.is_empty())
            .map(|t| match t.split_once("::") {
                Some((f, n)) => (f.to_string(), n.to_string()),
                None => (t.to_string(), String::new()),
            })
            .collect();
        let key = (unquote(cells[1]), unquote(cells[2]));
        assert!(
            rows.insert(key.clone(), Row { line: i + 1, tests })
                .is_none(),
            "tests/cli-inventory.md:{}: {key:?} twice",
            i + 1
        );
    }
    rows
}

/// Whether a test file runs the built binary (directly, or through the common
/// helpers that start `portshift worker` processes).
fn runs_the_binary(source: &str) -> bool {
    source.contains("CARGO_BIN_EXE_portshift")
        || source.contains("portshift_bin()")
        || source.contains("spawn_worker(")
        || source.contains("worker_command(")
}

#[test]
fn every_subcommand_and_flag_has_a_binary_level_test() {
    let text = std::fs::read_to_string(repo().join("tests/cli-inventory.md"))
        .expect("tests/cli-inventory.md");
    let rows = inventory(&text);
    let mut seen = BTreeSet::new();
    let mut missing = Vec::new();
    let mut problems = Vec::new();
    let mut sources: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut source = |file: &str| {
        sources
            .entry(file.to_string())
            .or_insert_with(|| std::fs::read_to_string(repo().join("tests").join(file)).ok())
            .clone()
    };
    for (path, help) in all_help() {
        if path.is_empty() {
            continue;
        }
        let command = path.join(" ");
        let mut keys = vec!["(command)".to_string()];
        keys.extend(items(&help));
        for item in keys {
            let key = (command.clone(), item.clone());
            seen.insert(key.clone());
            let Some(row) = rows.get(&key) else {
                missing.push(format!("| `{command}` | `{item}` | |"));
                continue;
            };
            if row.tests.is_empty() {
                problems.push(format!(
                    "tests/cli-inventory.md:{}: `{command} {item}` names no test",
                    row.line
                ));
            }
            for (file, function) in &row.tests {
                let at = format!("tests/cli-inventory.md:{}: {file}::{function}", row.line);
                let Some(src) = source(file) else {
                    problems.push(format!("{at}: tests/{file} does not exist"));
                    continue;
                };
                if function.is_empty() || !src.contains(&format!("fn {function}(")) {
                    problems.push(format!(
                        "{at}: no test function {function:?} in tests/{file}"
                    ));
                }
                if !runs_the_binary(&src) {
                    problems.push(format!(
                        "{at}: tests/{file} never runs the portshift binary"
                    ));
                }
                // The test file must at least spell the flag (or the subcommand's name).
                let word = if item == "(command)" {
                    format!("\"{}\"", path.last().unwrap())
                } else if item.starts_with("--") {
                    item.clone()
                } else {
                    String::new()
                };
                if !word.is_empty() && !src.contains(&word) {
                    problems.push(format!("{at}: tests/{file} never mentions {word}"));
                }
            }
        }
    }
    for (key, row) in &rows {
        if !seen.contains(key) {
            problems.push(format!(
                "tests/cli-inventory.md:{}: `{} {}` is not in any --help (renamed or removed?)",
                row.line, key.0, key.1
            ));
        }
    }
    assert!(
        missing.is_empty() && problems.is_empty(),
        "{}{}",
        if missing.is_empty() {
            String::new()
        } else {
            format!(
                "not in tests/cli-inventory.md (add each with the test that runs it):\n{}\n\n",
                missing.join("\n")
            )
        },
        problems.join("\n")
    );
    let tested: BTreeSet<&str> = rows.keys().map(|(c, _)| c.as_str()).collect();
    println!(
        "cli inventory: {} subcommands, {} flags and arguments, each with a test",
        tested.len(),
        rows.len() - tested.len()
    );
}

#[test]
fn the_help_parser_reads_sections_and_items() {
    let text = "About\n\nUsage: x\n\nCommands:\n  list  Lists\n          more\n  help  Print\n\nArguments:\n  <ID>  \n\nOptions:\n      --job <JOB>\n          \n      --all\n          Replay all\n  -h, --help  Print help\n";
    assert_eq!(subcommands(text), ["list"]);
    assert_eq!(items(text), ["--job", "--all", "<ID>"]);
}
