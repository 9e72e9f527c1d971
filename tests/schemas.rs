//! Schemas are contracts: `schemas/` must equal what the Rust types generate. After an
//! intended change, regenerate with `cargo run -- schemas` and commit the diff.

#[test]
fn committed_schemas_match_the_rust_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_portshift"))
        .args(["schemas", out.path().to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut generated: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    generated.sort();
    assert!(generated.len() >= 7, "{generated:?}");
    for name in generated {
        let fresh = std::fs::read_to_string(out.path().join(&name)).unwrap();
        let committed = std::fs::read_to_string(dir.join(&name)).unwrap_or_else(|_| {
            panic!(
                "schemas/{} is missing: run `cargo run -- schemas`",
                name.to_string_lossy()
            )
        });
        assert_eq!(
            committed,
            fresh,
            "schemas/{} drifted from the Rust types: run `cargo run -- schemas` and review the diff",
            name.to_string_lossy()
        );
    }
}
