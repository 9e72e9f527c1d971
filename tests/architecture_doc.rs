//! Keeps docs/architecture.md true: every NATS subject, stream, consumer, table and
//! source path it names in `code font` must exist in the code, and every table the
//! migrations create must be named there. A rename without the page fails here.

use std::collections::BTreeSet;
use std::path::Path;

use pipeline::JobId;
use pipeline::topology::{self, Stage};

const DOC: &str = "docs/architecture.md";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `code span` of the page, in order.
fn code_spans(text: &str) -> Vec<String> {
    let mut spans = Vec::new();
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let mut parts = line.split('`');
        parts.next();
        while let (Some(inside), Some(_)) = (parts.next(), parts.next()) {
            spans.push(inside.to_string());
        }
    }
    spans
}

/// A repository path the page names (`pipeline/src/store.rs`, `schemas/`).
fn looks_like_path(span: &str) -> bool {
    (span.ends_with(".rs") || span.ends_with('/') || span.starts_with("schemas/"))
        && !span.contains(' ')
        && !span.starts_with('/')
}

/// The first-column names of the table rows in the page's "The job store" section.
fn store_section_tables(text: &str) -> Vec<String> {
    let section = text
        .split("\n## ")
        .find(|s| s.starts_with("The job store"))
        .expect("the page has a \"## The job store\" section");
    section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split('`').next())
        .map(str::to_string)
        .collect()
}

/// The tables the migrations leave behind: created, minus dropped, with renames applied.
fn migration_tables() -> BTreeSet<String> {
    let mut files: Vec<_> = std::fs::read_dir(root().join("pipeline/migrations"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    let mut tables = BTreeSet::new();
    for file in files {
        let sql = std::fs::read_to_string(&file).unwrap().to_lowercase();
        let words: Vec<&str> = sql
            .split(|c: char| c.is_whitespace() || c == '(' || c == ';')
            .filter(|w| !w.is_empty())
            .collect();
        for (i, w) in words.iter().enumerate() {
            let next_name = |from: usize| -> Option<String> {
                words[from..]
                    .iter()
                    .find(|w| !matches!(**w, "if" | "not" | "exists"))
                    .map(|w| w.to_string())
            };
            if *w == "table" && i > 0 {
                match words[i - 1] {
                    "create" => {
                        if let Some(name) = next_name(i + 1) {
                            tables.insert(name);
                        }
                    }
                    "drop" => {
                        if let Some(name) = next_name(i + 1) {
                            tables.remove(&name);
                        }
                    }
                    "alter" => {
                        // ALTER TABLE a RENAME TO b
                        if let (Some(a), Some("rename"), Some("to"), Some(b)) = (
                            words.get(i + 1),
                            words.get(i + 2).copied(),
                            words.get(i + 3).copied(),
                            words.get(i + 4),
                        ) {
                            tables.remove(*a);
                            tables.insert(b.to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    tables
}

/// The subjects the code makes, written with the page's placeholders.
fn code_subjects() -> BTreeSet<String> {
    let job = JobId::new();
    let generic = |s: String| s.replace(job.as_str(), "<job>");
    let mut subjects: BTreeSet<String> = Stage::ALL
        .iter()
        .map(|st| generic(st.subject(&job)))
        .collect();
    subjects.insert(generic(topology::hash_subject(&job)));
    subjects.insert(generic(topology::upload_subject(&job)));
    // The dead-letter subject with the stage as a placeholder, as the page writes it.
    let dlq = generic(Stage::Fetch.dlq_subject(&job)).replace(".fetch.", ".<stage>.");
    subjects.insert(dlq);
    subjects
}

#[test]
fn architecture_page_names_only_what_exists() {
    let text = std::fs::read_to_string(root().join(DOC)).unwrap();
    let spans = code_spans(&text);
    let job = JobId::new();
    let subjects = code_subjects();
    let streams = [
        topology::WORK_STREAM,
        topology::RECORD_STREAM,
        topology::DLQ_STREAM,
    ];
    let consumers: BTreeSet<String> = Stage::ALL
        .iter()
        .map(|st| st.consumer_name(&job).replace(job.as_str(), "<job>"))
        .collect();
    let tables = migration_tables();
    assert!(
        tables.len() >= 10,
        "the migration parser found too few tables: {tables:?}"
    );

    let mut problems = Vec::new();
    let mut named_tables = BTreeSet::new();
    for span in &spans {
        if span.starts_with("portshift.") && span.contains('<') {
            if !subjects.contains(span) {
                problems.push(format!(
                    "subject `{span}` is not one the code publishes to ({subjects:?})"
                ));
            }
        } else if span.starts_with("PORTSHIFT_")
            && span.chars().all(|c| c.is_ascii_uppercase() || c == '_')
            && !span.ends_with("_URL")
        {
            if !streams.contains(&span.as_str()) {
                problems.push(format!("stream `{span}` does not exist ({streams:?})"));
            }
        } else if span.ends_with("-<job>") {
            if !consumers.contains(span) {
                problems.push(format!("consumer `{span}` is not a consumer name"));
            }
        } else if looks_like_path(span) && !root().join(span).exists() {
            problems.push(format!("path `{span}` does not exist"));
        }
    }
    for table in store_section_tables(&text) {
        if !tables.contains(&table) {
            problems.push(format!(
                "table `{table}` is not created by pipeline/migrations"
            ));
        }
        named_tables.insert(table);
    }
    for stream in streams {
        if !spans.iter().any(|s| s == stream) {
            problems.push(format!(
                "stream `{stream}` exists but the page does not name it"
            ));
        }
    }
    for subject in &subjects {
        if !spans.contains(subject) {
            problems.push(format!(
                "subject `{subject}` exists but the page does not name it"
            ));
        }
    }
    for table in tables.difference(&named_tables) {
        problems.push(format!(
            "table `{table}` exists in pipeline/migrations but the page does not name it"
        ));
    }
    assert!(
        problems.is_empty(),
        "{DOC} has drifted from the code; update the page:\n- {}",
        problems.join("\n- ")
    );
}

#[test]
fn the_drift_check_can_fail() {
    // A page naming a stream, subject and table that do not exist is caught by the
    // same rules (guards against a parser that silently matches nothing).
    let spans = code_spans("a `PORTSHIFT_NOPE` b `portshift.nope.<job>` c\n```\n`x`\n```\n");
    assert_eq!(spans, vec!["PORTSHIFT_NOPE", "portshift.nope.<job>"]);
    assert!(!code_subjects().contains("portshift.nope.<job>"));
    assert!(!migration_tables().contains("nope"));
    let page = "\n## The job store\n| `jobs` | x |\n| `nope` | y |\n## Next\n| `other` | z |\n";
    assert_eq!(store_section_tables(page), vec!["jobs", "nope"]);
    assert!(migration_tables().contains("jobs"));
}
