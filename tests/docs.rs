//! The docs runner: every shell example in README.md and docs/*.md (fenced ```sh,
//! ```bash, ```shell or ```console) is executed against the local servers, so a changed
//! flag, a removed command or output that no longer matches fails the suite. The
//! conventions (placeholders as environment variables, the skip marker, output
//! matching) are documented in docs/docs-runner.md; keep the two in step.
//!
//! A Rust integration test rather than a script: `cargo test` (and so CI) runs it with
//! the rest, it finds the built binary through `CARGO_BIN_EXE_portshift`, and it starts
//! the Chorus simulator and the Google token endpoint in-process with the test helpers.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The marker, on the line directly above a fence, for an example that cannot run here.
const SKIP: &str = "<!-- docs-runner: skip:";
/// How long one example may take.
const EXAMPLE_TIMEOUT: Duration = Duration::from_secs(240);

#[derive(Debug)]
struct Example {
    file: String,
    /// 1-based line of the opening fence.
    line: usize,
    lang: String,
    body: String,
    skip: Option<String>,
}

/// The documentation files the runner reads: README.md and docs/*.md, in name order.
fn doc_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

fn is_shell(lang: &str) -> bool {
    matches!(lang, "sh" | "bash" | "shell" | "console")
}

/// The fenced shell blocks of one Markdown file, with their skip markers. A malformed
/// marker, or a marker not directly above a fence, is an error: a typo must not make
/// an example silently run or silently not run.
fn examples(file: &str, text: &str) -> Result<Vec<Example>, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim_start();
        if t.starts_with("<!--") && t.contains("docs-runner") {
            let ok = t.starts_with(SKIP)
                && t.trim_end().ends_with("-->")
                && t[SKIP.len()..t.trim_end().len() - 3].trim().len() > 2;
            if !ok {
                return Err(format!(
                    "{file}:{}: malformed marker {t:?}; write `<!-- docs-runner: skip: <why> -->`",
                    i + 1
                ));
            }
            let next = lines.get(i + 1).map(|l| l.trim_start()).unwrap_or("");
            if !next.starts_with("```") {
                return Err(format!(
                    "{file}:{}: the skip marker must be directly above a fence",
                    i + 1
                ));
            }
        }
        if let Some(info) = t.strip_prefix("```") {
            let indent = lines[i].len() - t.len();
            let lang = info.split_whitespace().next().unwrap_or("").to_string();
            let start = i;
            let mut body = String::new();
            i += 1;
            while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                // Blocks inside list items are indented; the indentation is not code.
                let l = lines[i];
                let cut = l.len() - l.trim_start().len();
                body.push_str(&l[cut.min(indent)..]);
                body.push('\n');
                i += 1;
            }
            if i == lines.len() {
                return Err(format!("{file}:{}: unclosed fence", start + 1));
            }
            if is_shell(&lang) {
                let skip = start
                    .checked_sub(1)
                    .map(|p| lines[p].trim())
                    .and_then(|l| l.strip_prefix(SKIP))
                    .map(|r| r.trim_end_matches("-->").trim().to_string());
                out.push(Example {
                    file: file.to_string(),
                    line: start + 1,
                    lang,
                    body,
                    skip,
                });
            }
        }
        i += 1;
    }
    Ok(out)
}

/// A ```console block: `$ command` lines (a trailing `\` continues the command) each
/// followed by the output expected from it.
fn console_steps(body: &str) -> Vec<(String, Vec<String>)> {
    let mut steps: Vec<(String, Vec<String>)> = Vec::new();
    let mut continuing = false;
    for line in body.lines() {
        if continuing {
            let (cmd, _) = steps.last_mut().unwrap();
            cmd.push('\n');
            cmd.push_str(line);
            continuing = line.ends_with('\\');
        } else if let Some(cmd) = line.strip_prefix("$ ") {
            steps.push((cmd.to_string(), Vec::new()));
            continuing = cmd.ends_with('\\');
        } else if let Some((_, expected)) = steps.last_mut() {
            expected.push(line.to_string());
        }
    }
    steps
}

/// Does `actual` match `expected`? A line `...` stands for any number of lines; `[..]`
/// inside a line for any text on that line (trycmd's conventions).
fn output_matches(expected: &[String], actual: &[&str]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((e, rest)) if e.trim() == "..." => {
            (0..=actual.len()).any(|n| output_matches(rest, &actual[n..]))
        }
        Some((e, rest)) => actual
            .split_first()
            .is_some_and(|(a, arest)| line_matches(e, a) && output_matches(rest, arest)),
    }
}

fn line_matches(expected: &str, actual: &str) -> bool {
    let parts: Vec<&str> = expected.trim_end().split("[..]").collect();
    let actual = actual.trim_end();
    if parts.len() == 1 {
        return parts[0] == actual;
    }
    let Some(mut rest) = actual.strip_prefix(parts[0]) else {
        return false;
    };
    for (n, p) in parts[1..].iter().enumerate() {
        if n == parts.len() - 2 {
            return rest.ends_with(p);
        }
        match rest.find(p) {
            Some(at) => rest = &rest[at + p.len()..],
            None => return false,
        }
    }
    true
}

/// Runs one shell script in `dir` with `env`; (exit code, stdout, stderr), or an error
/// when it ran out of time (its whole process group is killed).
fn run_shell(
    script: &str,
    dir: &Path,
    env: &BTreeMap<String, String>,
) -> Result<(i32, String, String), String> {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .current_dir(dir)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("could not start bash: {e}"))?;
    let pid = child.id() as i32;
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut o = String::new();
        let mut e = String::new();
        let t = std::thread::spawn(move || {
            let mut e2 = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut e2);
            e2
        });
        let _ = std::io::Read::read_to_string(&mut out, &mut o);
        e.push_str(&t.join().unwrap_or_default());
        let _ = tx.send(());
        (o, e)
    });
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            // Wait for the pipes (a background process may still hold them: bounded).
            let _ = rx.recv_timeout(Duration::from_secs(10));
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let (o, e) = reader.join().unwrap_or_default();
            return Ok((status.code().unwrap_or(-1), o, e));
        }
        if started.elapsed() > EXAMPLE_TIMEOUT {
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = child.wait();
            let (o, e) = reader.join().unwrap_or_default();
            return Err(format!(
                "did not finish in {} s\nstdout:\n{o}\nstderr:\n{e}",
                EXAMPLE_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// For an example that is skipped: every `portshift <subcommand> ... --flag` in it must
/// still name a subcommand and flags that `--help` lists, so a renamed flag fails even
/// where the example cannot run.
fn check_skipped_commands(ex: &Example, bin: &Path) -> Result<usize, String> {
    let mut checked = 0;
    let text = ex.body.replace("\\\n", " ");
    for line in text.lines() {
        let line = line
            .trim_start_matches("$ ")
            .split(" #")
            .next()
            .unwrap_or("");
        let words: Vec<&str> = line.split_whitespace().collect();
        // The command word: the first word that is not a `NAME=value` assignment.
        let Some(at) = words.iter().position(|w| {
            !w.split_once('=').is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c == '_' || c.is_ascii_alphanumeric())
            })
        }) else {
            continue;
        };
        if words[at] != "portshift" {
            continue;
        }
        let args = &words[at + 1..];
        // The subcommand path: leading words that are not flags or placeholders.
        let mut path: Vec<&str> = Vec::new();
        for w in args {
            if w.starts_with('-') || !w.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
                break;
            }
            let mut probe = path.clone();
            probe.push(w);
            let ok = Command::new(bin)
                .args(&probe)
                .arg("--help")
                .output()
                .map_err(|e| e.to_string())?
                .status
                .success();
            if !ok {
                break;
            }
            path = probe;
        }
        let help = Command::new(bin)
            .args(&path)
            .arg("--help")
            .output()
            .map_err(|e| e.to_string())?;
        let help = String::from_utf8_lossy(&help.stdout).to_string();
        for w in args.iter().filter(|w| w.starts_with("--")) {
            let flag = w.split('=').next().unwrap_or(w);
            if !help.contains(&format!("{flag} ")) && !help.contains(&format!("{flag}\n")) {
                return Err(format!(
                    "{}:{}: `portshift {}` has no flag {flag} (see its --help)",
                    ex.file,
                    ex.line,
                    path.join(" ")
                ));
            }
        }
        checked += 1;
    }
    Ok(checked)
}

/// The environment every example runs with: the placeholders of docs/docs-runner.md.
struct Env {
    vars: BTreeMap<String, String>,
    _keep: Vec<Box<dyn std::any::Any>>,
}

async fn environment(tmp: &Path) -> Env {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_portshift"));
    let mut sim_config = Harness::sim_config(6, 1501);
    sim_config.sizes.min = 8 * 1024;
    sim_config.sizes.max = 64 * 1024;
    let sim = start_sim(sim_config).await;
    let s3 = s3_client().await;
    let bucket = fresh_bucket(&s3).await;
    let key = common::cloud::service_account_json(&common::cloud::token_server().await);
    let key_path = tmp.join("service-account.json");
    std::fs::write(&key_path, key).unwrap();
    let bq_dataset = format!("docs{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);

    let mut vars = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        vars.insert(k.to_string(), v);
    };
    set(
        "PATH",
        format!(
            "{}:{}",
            bin.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    set("CHORUS_API_TOKEN", TOKEN.to_string());
    set("PORTSHIFT_CHORUS_URL", sim.api_url.to_string());
    set("BUCKET", bucket);
    set("S3_ENDPOINT", env_or_fail("PORTSHIFT_TEST_S3_ENDPOINT"));
    set(
        "AWS_ACCESS_KEY_ID",
        env_or_fail("PORTSHIFT_TEST_S3_ACCESS_KEY"),
    );
    set(
        "AWS_SECRET_ACCESS_KEY",
        env_or_fail("PORTSHIFT_TEST_S3_SECRET_KEY"),
    );
    set("AWS_REGION", "us-east-1".into());
    set(
        "GOOGLE_APPLICATION_CREDENTIALS",
        key_path.display().to_string(),
    );
    set("BQ_ENDPOINT", env_or_fail("PORTSHIFT_TEST_BQ_ENDPOINT"));
    set(
        "BQ_TABLE",
        format!(
            "{}.{bq_dataset}.recordings",
            env_or_fail("PORTSHIFT_TEST_BQ_PROJECT")
        ),
    );
    set(
        "PORTSHIFT_WEBHOOK_SECRET",
        "docs-runner-webhook-secret".into(),
    );
    for k in ["PORTSHIFT_NATS_SERVER_BIN", "HOME", "LANG", "TMPDIR"] {
        if let Ok(v) = std::env::var(k) {
            set(k, v);
        }
    }
    Env {
        vars,
        _keep: vec![Box::new(sim) as Box<dyn std::any::Any>],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shell_example_in_the_docs_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_portshift"));
    let tmp = tempfile::tempdir().unwrap();
    let env = environment(tmp.path()).await;

    let mut all = Vec::new();
    let mut errors = Vec::new();
    for path in doc_files(root) {
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        match examples(&rel, &std::fs::read_to_string(&path).unwrap()) {
            Ok(found) => all.extend(found),
            Err(e) => errors.push(e),
        }
    }

    let (mut ran, mut skipped, mut checked_commands) = (0, Vec::new(), 0);
    // Examples of one file share a working folder and data folder, in document order,
    // so a later example may use what an earlier one made.
    let mut dirs: BTreeMap<String, PathBuf> = BTreeMap::new();
    for ex in &all {
        let at = format!("{}:{}", ex.file, ex.line);
        if let Some(reason) = &ex.skip {
            skipped.push(format!("{at}: {reason}"));
            match check_skipped_commands(ex, &bin) {
                Ok(n) => checked_commands += n,
                Err(e) => errors.push(e),
            }
            continue;
        }
        let dir = dirs
            .entry(ex.file.clone())
            .or_insert_with(|| {
                let d = tmp.path().join(ex.file.replace('/', "_"));
                std::fs::create_dir_all(d.join("state")).unwrap();
                d
            })
            .clone();
        let mut vars = env.vars.clone();
        vars.insert("HOME".into(), dir.display().to_string());
        vars.insert(
            "PORTSHIFT_DATA_DIR".into(),
            dir.join("state").display().to_string(),
        );
        ran += 1;
        let started = Instant::now();
        let result = if ex.lang == "console" {
            let mut r = Ok(());
            for (cmd, expected) in console_steps(&ex.body) {
                match run_shell(&cmd, &dir, &vars) {
                    Ok((0, out, _)) => {
                        let actual: Vec<&str> = out.lines().collect();
                        let expected: Vec<String> = expected
                            .into_iter()
                            .rev()
                            .skip_while(|l| l.trim().is_empty())
                            .collect::<Vec<_>>()
                            .into_iter()
                            .rev()
                            .collect();
                        if !output_matches(&expected, &actual) {
                            r = Err(format!(
                                "`{cmd}`: output does not match\nexpected:\n{}\nactual:\n{out}",
                                expected.join("\n")
                            ));
                            break;
                        }
                    }
                    Ok((code, out, err)) => {
                        r = Err(format!(
                            "`{cmd}` exited with {code}\nstdout:\n{out}\nstderr:\n{err}"
                        ));
                        break;
                    }
                    Err(e) => {
                        r = Err(format!("`{cmd}` {e}"));
                        break;
                    }
                }
            }
            r
        } else {
            match run_shell(&ex.body, &dir, &vars) {
                Ok((0, _, _)) => Ok(()),
                Ok((code, out, err)) => Err(format!(
                    "exited with {code}\nstdout:\n{out}\nstderr:\n{err}"
                )),
                Err(e) => Err(e),
            }
        };
        let mut stderr = std::io::stderr();
        let _ = writeln!(
            stderr,
            "docs runner: {at}: {} in {:.1} s",
            if result.is_ok() { "ok" } else { "FAILED" },
            started.elapsed().as_secs_f64()
        );
        if let Err(e) = result {
            errors.push(format!("{at}:\n{}\n{e}", ex.body));
        }
    }

    // Written straight to stderr so the counts show even when the test passes.
    let mut report = format!(
        "docs runner: {ran} examples run, {} skipped ({checked_commands} portshift command lines in skipped examples checked against --help)\n",
        skipped.len()
    );
    for s in &skipped {
        report.push_str(&format!("  skipped {s}\n"));
    }
    let _ = std::io::stderr().write_all(report.as_bytes());
    assert!(ran > 0, "no runnable example found");
    assert!(
        errors.is_empty(),
        "{} docs example(s) failed:\n\n{}",
        errors.len(),
        errors.join("\n\n")
    );
}

#[test]
fn the_runner_reads_markers_fences_and_output_patterns() {
    let md = "text\n<!-- docs-runner: skip: needs AWS -->\n```sh\naws s3 ls\n```\n\n1. step\n   ```console\n   $ echo hi \\\n     there\n   hi there\n   ```\n```json\n{}\n```\n";
    let ex = examples("x.md", md).unwrap();
    assert_eq!(ex.len(), 2);
    assert_eq!(ex[0].skip.as_deref(), Some("needs AWS"));
    assert_eq!(ex[1].skip, None);
    assert_eq!(ex[1].lang, "console");
    let steps = console_steps(&ex[1].body);
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].1, ["hi there"]);
    // A marker that is not directly above a fence, or is malformed, is an error.
    assert!(examples("x.md", "<!-- docs-runner: skip: why -->\n\n```sh\nx\n```\n").is_err());
    assert!(examples("x.md", "<!-- docs-runner: skipp: why -->\n```sh\nx\n```\n").is_err());
    assert!(examples("x.md", "```sh\nx\n").is_err());
    // Prose that mentions the runner is not a marker.
    assert!(
        examples("x.md", "see docs/docs-runner.md\n")
            .unwrap()
            .is_empty()
    );
    // Output patterns.
    let exp = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert!(output_matches(
        &exp(&["a [..] c", "..."]),
        &["a b c", "d", "e"]
    ));
    assert!(output_matches(&exp(&["...", "z"]), &["x", "y", "z"]));
    assert!(!output_matches(&exp(&["a [..] c"]), &["a b d"]));
    assert!(!output_matches(&exp(&["a"]), &["a", "b"]));
    assert!(line_matches(
        "[..] files, [..] s: ok",
        "12 files, 3 MiB in 0.1 s: ok"
    ));
    // Skipped examples: a portshift command line's flags are checked against --help.
    let bin = Path::new(env!("CARGO_BIN_EXE_portshift"));
    let skipped = |body: &str| Example {
        file: "x.md".into(),
        line: 1,
        lang: "sh".into(),
        body: body.into(),
        skip: Some("why".into()),
    };
    let ok = "CHORUS_API_TOKEN=... portshift replay --job <job> --all --run\ncargo test -p portshift --test docs\n";
    assert_eq!(check_skipped_commands(&skipped(ok), bin), Ok(1));
    let renamed = "portshift export --from 2024-01-01 --destination s3://b/p\n";
    let e = check_skipped_commands(&skipped(renamed), bin).unwrap_err();
    assert!(e.contains("--destination"), "{e}");
}
