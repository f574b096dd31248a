//! `deploy-kit new NAME`: a new crate for the user's own vgi-rpc service, the
//! start of the user's journey (`new` -> `cargo test` -> `up local` ->
//! `render`/`up aws`).
//!
//! The crate is the canonical example of the SDK: typed methods declared once
//! with `#[kit_service::service]`, `main` as one call to
//! `kit_service::host::main`, a test that calls the methods over the real wire
//! through `kit_service::testing`, and a `deploy-kit.yaml` whose `service:`
//! names the package and binary, so every renderer and engine builds *this*
//! crate. Files come from `templates/new/` (embedded, strict undefined).
//!
//! It never touches an existing non-empty directory: the directory is checked
//! before anything is written, and a crate name cargo would refuse is
//! rejected before the directory is created.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;

use crate::render::{environment, render_template};

/// The scaffold's files, by their path under `templates/new/`, with the path
/// each is written to inside the new crate.
const FILES: &[(&str, &str)] = &[
    ("new/Cargo.toml.j2", "Cargo.toml"),
    ("new/main.rs.j2", "src/main.rs"),
    ("new/deploy-kit.yaml.j2", "deploy-kit.yaml"),
    ("new/gitignore.j2", ".gitignore"),
    ("new/README.md.j2", "README.md"),
];

/// The templates [`FILES`] names, embedded at build time.
const TEMPLATES: &[(&str, &str)] = &[
    (
        "new/Cargo.toml.j2",
        include_str!("../../templates/new/Cargo.toml.j2"),
    ),
    (
        "new/main.rs.j2",
        include_str!("../../templates/new/main.rs.j2"),
    ),
    (
        "new/deploy-kit.yaml.j2",
        include_str!("../../templates/new/deploy-kit.yaml.j2"),
    ),
    (
        "new/gitignore.j2",
        include_str!("../../templates/new/gitignore.j2"),
    ),
    (
        "new/README.md.j2",
        include_str!("../../templates/new/README.md.j2"),
    ),
];

/// Names cargo refuses as package names (keywords and reserved names).
const RESERVED_NAMES: &[&str] = &[
    "abstract",
    "alignof",
    "as",
    "async",
    "await",
    "become",
    "box",
    "break",
    "const",
    "continue",
    "crate",
    "do",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "final",
    "fn",
    "for",
    "gen",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "macro",
    "match",
    "mod",
    "move",
    "mut",
    "offsetof",
    "override",
    "priv",
    "proc",
    "pub",
    "pure",
    "ref",
    "return",
    "self",
    "sizeof",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "try",
    "type",
    "typeof",
    "unsafe",
    "unsized",
    "use",
    "virtual",
    "where",
    "while",
    "yield",
    "test",
    "std",
    "core",
    "alloc",
    "proc_macro",
    "proc-macro",
    "build",
    "deps",
    "examples",
    "incremental",
    "kit-service",
    "kit_service",
    "deploy-kit",
    "kit-checks",
    "kit-service-macros",
];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The crate's name: a cargo package name (letters, digits, `-`, `_`).
    pub name: String,
    /// Directory to create; default `./NAME`.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// A deploy-kit checkout to depend on by path (builds offline, with the
    /// checkout's Cargo.lock).
    #[arg(
        long,
        value_name = "PATH",
        env = "DEPLOY_KIT_KIT_PATH",
        conflicts_with = "kit_version"
    )]
    pub kit_path: Option<PathBuf>,
    /// Version requirement for `kit-service` from the registry; default this
    /// deploy-kit's version.
    #[arg(long, value_name = "REQ")]
    pub kit_version: Option<String>,
}

/// Why `deploy-kit new` refused or failed; each carries its exit code and hint.
#[derive(Debug, thiserror::Error)]
pub enum NewError {
    #[error("`{name}` is not a valid crate name: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("`{0}` exists and is not empty; nothing in it was changed")]
    NotEmpty(PathBuf),
    #[error("`{0}` exists and is not a directory")]
    NotADirectory(PathBuf),
    #[error(
        "`{0}` is not a deploy-kit checkout (no `service/Cargo.toml` of package `kit-service`)"
    )]
    NotAKit(PathBuf),
    #[error("failed to write `{path}`: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to render `templates/{template}`: {message}")]
    Template { template: String, message: String },
}

impl NewError {
    /// The `hint:` line: the command that fixes it.
    pub fn hint(&self) -> String {
        match self {
            NewError::InvalidName { .. } => {
                "use lower-case letters, digits and `-`, starting with a letter, e.g. `deploy-kit new acme-rpc`"
                    .to_string()
            }
            NewError::NotEmpty(path) | NewError::NotADirectory(path) => format!(
                "pick another name or directory: deploy-kit new NAME --dir {}-2",
                path.display()
            ),
            NewError::NotAKit(_) => {
                "pass the root of a deploy-kit checkout (the directory with `service/` and `infra/`), or drop `--kit-path` to use the published kit-service"
                    .to_string()
            }
            NewError::Write { .. } => "check that the parent directory is writable".to_string(),
            NewError::Template { .. } => "report this as a bug in deploy-kit".to_string(),
        }
    }

    /// 2 for usage errors (bad name, occupied directory), 1 for failures.
    pub fn exit_code(&self) -> u8 {
        match self {
            NewError::Write { .. } | NewError::Template { .. } => 1,
            _ => 2,
        }
    }
}

/// Where `kit-service` comes from in the new crate's `Cargo.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KitSource {
    /// A checkout on disk (its root; the dependency is `<root>/service`).
    Path(PathBuf),
    /// A version requirement from the registry.
    Version(String),
}

/// What the scaffold templates see.
#[derive(Debug, Serialize)]
struct NewSettings {
    /// The package (and binary) name, e.g. `acme-rpc`.
    name: String,
    /// The name as a Rust identifier, e.g. `acme_rpc`.
    ident: String,
    /// The service trait, e.g. `AcmeRpc`.
    trait_name: String,
    /// The protocol name, e.g. `acme_rpc.AcmeRpc.v1`.
    protocol: String,
    /// `kit-service = ...` right-hand side in Cargo.toml.
    kit_dependency: String,
    /// The kit's version, for the README.
    kit_version: String,
}

/// Checks `name` the way cargo does for `cargo new`.
pub fn validate_name(name: &str) -> Result<(), NewError> {
    let invalid = |reason: &str| NewError::InvalidName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    let Some(first) = name.chars().next() else {
        return Err(invalid("it is empty"));
    };
    if name.len() > 64 {
        return Err(invalid("it is longer than 64 characters"));
    }
    if !first.is_ascii_alphabetic() {
        return Err(invalid("it must start with an ASCII letter"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(invalid(&format!(
            "`{bad}` is not allowed (only ASCII letters, digits, `-` and `_`)"
        )));
    }
    if RESERVED_NAMES.contains(&name) || RESERVED_NAMES.contains(&name.replace('-', "_").as_str()) {
        return Err(invalid("it is a Rust keyword or a reserved name"));
    }
    Ok(())
}

/// `acme-rpc` -> `AcmeRpc`.
fn camel_case(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            let first = chars.next().map(|c| c.to_ascii_uppercase());
            first.into_iter().chain(chars).collect::<String>()
        })
        .collect()
}

fn settings(name: &str, kit: &KitSource) -> NewSettings {
    let ident = name.replace('-', "_");
    let trait_name = camel_case(name);
    let kit_dependency = match kit {
        KitSource::Path(root) => format!(
            "{{ path = {} }}",
            toml_string(&root.join("service").display().to_string())
        ),
        KitSource::Version(requirement) => toml_string(requirement),
    };
    NewSettings {
        name: name.to_string(),
        protocol: format!("{ident}.{trait_name}.v1"),
        ident,
        trait_name,
        kit_dependency,
        kit_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// A TOML basic string (quotes and backslashes escaped).
fn toml_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control() => quoted.push_str(&format!("\\u{:04X}", c as u32)),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// The files of a new crate named `name`, as (relative path, contents).
pub fn scaffold(name: &str, kit: &KitSource) -> Result<Vec<(PathBuf, String)>, NewError> {
    validate_name(name)?;
    let environment = environment(TEMPLATES);
    let context = minijinja::Value::from(minijinja::value::Serde(settings(name, kit)));
    FILES
        .iter()
        .map(|(template, path)| {
            render_template(&environment, template, context.clone())
                .map(|text| (PathBuf::from(path), text))
                .map_err(|error| NewError::Template {
                    template: template.to_string(),
                    message: error.message,
                })
        })
        .collect()
}

/// Checks that `root` is a deploy-kit checkout and returns it absolute.
pub fn kit_root(root: &Path) -> Result<PathBuf, NewError> {
    let not_a_kit = || NewError::NotAKit(root.to_path_buf());
    let manifest =
        std::fs::read_to_string(root.join("service/Cargo.toml")).map_err(|_| not_a_kit())?;
    if !manifest
        .lines()
        .any(|line| line.trim().replace(' ', "") == "name=\"kit-service\"")
    {
        return Err(not_a_kit());
    }
    std::path::absolute(root).map_err(|_| not_a_kit())
}

/// Refuses a path that exists and is not an empty directory.
fn check_target(dir: &Path) -> Result<(), NewError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                Err(NewError::NotEmpty(dir.to_path_buf()))
            } else {
                Ok(())
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) if dir.exists() && !dir.is_dir() => Err(NewError::NotADirectory(dir.to_path_buf())),
        Err(source) => Err(NewError::Write {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Creates the crate in `dir`; returns the files written.
pub fn create(name: &str, dir: &Path, kit: &KitSource) -> Result<Vec<PathBuf>, NewError> {
    validate_name(name)?;
    check_target(dir)?;
    let files = scaffold(name, kit)?;
    let write_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| NewError::Write { path, source }
    };
    let mut written = Vec::new();
    for (relative, contents) in &files {
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(write_error(parent))?;
        }
        std::fs::write(&path, contents).map_err(write_error(&path))?;
        written.push(path);
    }
    // The checkout's lock file pins the versions it was tested with, so the
    // new crate resolves offline to crates already in the cargo cache.
    if let KitSource::Path(root) = kit {
        let lock = root.join("Cargo.lock");
        if lock.is_file() {
            let target = dir.join("Cargo.lock");
            std::fs::copy(&lock, &target).map_err(write_error(&target))?;
            written.push(target);
        }
    }
    Ok(written)
}

pub fn run(args: Args) -> ExitCode {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    let result = (|| {
        validate_name(&args.name)?;
        let kit = match &args.kit_path {
            Some(path) => KitSource::Path(kit_root(path)?),
            None => KitSource::Version(
                args.kit_version
                    .clone()
                    .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string()),
            ),
        };
        create(&args.name, &dir, &kit)
    })();
    match result {
        Ok(written) => {
            for path in &written {
                eprintln!("  created {}", path.display());
            }
            eprintln!(
                "created `{}` in {}\nnext:\n  cd {}\n  cargo test\n  deploy-kit up local",
                args.name,
                dir.display(),
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            eprintln!("hint: {}", error.hint());
            ExitCode::from(error.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_name(name: &str, expect_ok: bool) {
        assert_eq!(validate_name(name).is_ok(), expect_ok, "{name}");
    }

    #[test]
    fn crate_names_follow_cargo() {
        check_name("acme-rpc", true);
        check_name("acme_rpc2", true);
        check_name("", false);
        check_name("9lives", false);
        check_name("acme rpc", false);
        check_name("acme/rpc", false);
        check_name("fn", false);
        check_name("test", false);
        check_name("kit-service", false);
        check_name(&"a".repeat(65), false);
    }

    #[test]
    fn names_become_identifiers() {
        let settings = settings("acme-rpc", &KitSource::Version("0.1".into()));
        assert_eq!(settings.ident, "acme_rpc");
        assert_eq!(settings.trait_name, "AcmeRpc");
        assert_eq!(settings.protocol, "acme_rpc.AcmeRpc.v1");
        assert_eq!(settings.kit_dependency, "\"0.1\"");
    }

    #[test]
    fn path_dependencies_are_quoted() {
        let settings = settings("a", &KitSource::Path(PathBuf::from("/x/\"y\"")));
        assert_eq!(
            settings.kit_dependency,
            "{ path = \"/x/\\\"y\\\"/service\" }"
        );
    }

    #[test]
    fn a_non_empty_directory_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keep.txt"), "mine").unwrap();
        let error = create("acme", dir.path(), &KitSource::Version("0.1".into())).unwrap_err();
        assert!(matches!(error, NewError::NotEmpty(_)), "{error}");
        let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(entries.len(), 1);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("keep.txt")).unwrap(),
            "mine"
        );
    }

    #[test]
    fn the_generated_config_parses() {
        let files = scaffold("acme-rpc", &KitSource::Version("0.1".into())).unwrap();
        let (_, config) = files
            .iter()
            .find(|(path, _)| path == Path::new("deploy-kit.yaml"))
            .unwrap();
        let parsed = crate::config::DeployConfig::parse(config, Path::new("deploy-kit.yaml"))
            .expect("the scaffold's deploy-kit.yaml parses");
        assert_eq!(parsed.service.name, "acme-rpc");
        assert!(parsed.targets.contains_key("local"));
    }
}
