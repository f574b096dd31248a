//! Shared by the test binaries that check `--json` output.

use std::path::Path;

/// Validates `stdout` as one JSON document against the schema its `schema`
/// field names; returns it.
pub fn validated(stdout: &str) -> serde_json::Value {
    let document: serde_json::Value = serde_json::from_str(stdout)
        .unwrap_or_else(|error| panic!("stdout is one JSON document ({error}):\n{stdout}"));
    let id = document["schema"].as_str().expect("a `schema` id");
    let (_, file) = deploy_kit::output::SCHEMAS
        .iter()
        .find(|(known, _)| *known == id)
        .unwrap_or_else(|| panic!("`{id}` is not in deploy_kit::output::SCHEMAS"));
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/schemas")
        .join(file);
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|error| panic!("{} compiles: {error}", path.display()));
    let errors: Vec<String> = validator
        .iter_errors(&document)
        .map(|error| format!("{error} at {}", error.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{id}: {errors:#?}\n{document:#}");
    document
}
