//! `deploy-kit up`/`down` on the CLI-driven platforms (kubernetes, fly,
//! railway, azure-functions) against a **fake CLI**: a shell script put first
//! on `PATH` under the real program's name, which logs its argv and stdin
//! and answers from a table of canned replies. These tests pin the recorded
//! CLI contract (which commands run, in which order, what goes on stdin),
//! not the behaviour of a real cluster or cloud.

#![cfg(unix)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;

/// Logs `prog args...` (plus `<stdin:N>` when stdin had bytes, saved to
/// `log.stdin.N`), then answers with the first `glob|exit|stdout` line of
/// `$FAKE_CLI_ANSWERS` matching the logged line; default: exit 0, no output.
/// A stdout of `<FILE` answers that file's contents and `>FILE` saves stdin
/// to it (FILE beside the answers): a stateful object, such as a Secret
/// that `replace -f -` writes and `get -o json` reads back.
/// The file after `--src` (what `az ... config-zip` deploys) is copied to
/// `log.deployed.zip`, so tests compare what the CLI got with what was built.
const FAKE_CLI: &str = r#"#!/bin/sh
name=$(basename "$0")
line="$name"
for argument in "$@"; do line="$line $argument"; done
input=$(cat)
count=$(wc -l < "$FAKE_CLI_LOG" 2>/dev/null || echo 0)
count=$(echo $count)
if [ -n "$input" ]; then
  printf '%s' "$input" > "$FAKE_CLI_LOG.stdin.$count"
  line="$line <stdin:$count>"
fi
echo "$line" >> "$FAKE_CLI_LOG"
previous=
for argument in "$@"; do
  if [ "$previous" = "--src" ]; then cp "$argument" "$FAKE_CLI_LOG.deployed.zip"; fi
  previous=$argument
done
answers_dir=$(dirname "$FAKE_CLI_ANSWERS")
while IFS='|' read -r pattern code out; do
  case "$line" in
    $pattern)
      case "$out" in
        "<"*) cat "$answers_dir/${out#<}";;
        ">"*) printf '%s' "$input" > "$answers_dir/${out#>}";;
        "") ;;
        *) printf '%s\n' "$out";;
      esac
      exit "$code";;
  esac
done < "$FAKE_CLI_ANSWERS"
exit 0
"#;

struct Project {
    dir: PathBuf,
    bin: PathBuf,
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Project {
    /// A temp project with `config` and the fake `programs` on a private `PATH`.
    fn new(name: &str, config: &str, programs: &[&str]) -> Project {
        use std::os::unix::fs::PermissionsExt;
        let dir =
            std::env::temp_dir().join(format!("deploy-kit-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        // The project is a cargo package called kit-service (with the
        // platform features), so ART001 finds it with `cargo metadata`.
        let config = config.replacen("service: {", "service: {package: kit-service, ", 1);
        std::fs::write(dir.join("deploy-kit.yaml"), config).unwrap();
        std::fs::write(
            dir.join("Cargo.toml"),
            "[package]\nname = \"kit-service\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
             [features]\nlambda = []\ns3 = []\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::write(dir.join("src/main.rs"), "fn main() {}\n").unwrap();
        for program in programs {
            let path = bin.join(program);
            std::fs::write(&path, FAKE_CLI).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(dir.join("kit-service"), "not a real binary\n").unwrap();
        let project = Project { dir, bin };
        project.answers("");
        project
    }

    fn answers(&self, table: &str) {
        std::fs::write(self.dir.join("answers"), table).unwrap();
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("cli.log")
    }

    /// The calls logged so far (paths shown as `[dir]`, state ids as
    /// `[id]`), and clears the log.
    fn take_log(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        std::fs::write(self.log_path(), "").unwrap();
        let text = text.replace(&self.dir.display().to_string(), "[dir]");
        match self.state_id() {
            Some(id) => text.replace(&id, "[id]"),
            None => text,
        }
    }

    /// The `id` of the first state file under `.deploy-kit/`, if any.
    fn state_id(&self) -> Option<String> {
        walk(&self.dir.join(".deploy-kit"))
            .into_iter()
            .filter(|p| p.ends_with("state.json"))
            .find_map(|p| {
                let state: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
                state["id"].as_str().map(str::to_string)
            })
    }

    /// Every stdin the fake received, in order.
    fn stdins(&self) -> Vec<String> {
        let mut found: Vec<(usize, String)> = std::fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().to_string_lossy().into_owned();
                let number = name.strip_prefix("cli.log.stdin.")?.parse().ok()?;
                Some((number, std::fs::read_to_string(self.dir.join(&name)).ok()?))
            })
            .collect();
        found.sort();
        found.into_iter().map(|(_, text)| text).collect()
    }

    /// Runs `deploy-kit ARGS` with only the fake CLIs and the system tools on `PATH`.
    fn run(&self, arguments: &[&str]) -> (i32, String, String) {
        self.run_with_path(arguments, &format!("{}:/usr/bin:/bin", self.bin.display()))
    }

    fn run_with_path(&self, arguments: &[&str], path: &str) -> (i32, String, String) {
        let output = Command::cargo_bin("deploy-kit")
            .unwrap()
            .args(arguments)
            .current_dir(&self.dir)
            .env("PATH", path)
            .env("FAKE_CLI_LOG", self.log_path())
            .env("FAKE_CLI_ANSWERS", self.dir.join("answers"))
            .env("DEPLOY_KIT_TODAY", "2026-01-15")
            .env_remove("DEPLOY_KIT_CONFIG")
            .env_remove("DEPLOY_KIT_TARGET")
            .env_remove("DEPLOY_KIT_KIT_SERVICE")
            .output()
            .unwrap();
        let clean = |bytes: &[u8]| {
            String::from_utf8_lossy(bytes).replace(&self.dir.display().to_string(), "[dir]")
        };
        (
            output.status.code().unwrap_or(-1),
            clean(&output.stdout),
            clean(&output.stderr),
        )
    }

    fn state(&self, environment: &str, target: &str) -> Option<String> {
        std::fs::read_to_string(
            self.dir
                .join(".deploy-kit")
                .join(environment)
                .join(target)
                .join("state.json"),
        )
        .ok()
    }
}

/// The generated key out of what the fake received on stdin.
fn key_in(stdin: &str) -> String {
    let start = stdin.find("hex:").expect("a hex: key on stdin");
    let key: String = stdin[start..].chars().take(4 + 64).collect();
    assert!(
        key[4..].chars().all(|c| c.is_ascii_hexdigit()) && key.len() == 68,
        "{key}"
    );
    key
}

/// The key appears nowhere but on stdin: not in argv, output, state or files.
fn assert_never_leaked(project: &Project, key: &str, outputs: &[&str]) {
    let log = std::fs::read_to_string(project.log_path()).unwrap_or_default();
    assert!(!log.contains(key), "the key is in a CLI's argv");
    for output in outputs {
        assert!(!output.contains(key), "the key is in deploy-kit's output");
        assert!(
            !output.contains(&key[4..]),
            "the key's hex is in deploy-kit's output"
        );
    }
    for entry in walk(&project.dir.join(".deploy-kit")) {
        let bytes = std::fs::read(&entry).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(&key[4..]),
            "the key is in `{}`",
            entry.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

const KUBERNETES: &str = "version: 1
service: {name: vgi, environment: ci, image: \"vgi:1\"}
targets:
  cluster: {platform: kubernetes, instances: 2, namespace: vgi-ns}
signing_key: {source: secret, secret: \"k8s:vgi-signing-key\"}
";

#[test]
fn a_missing_cli_gives_exit_2_and_the_install_hint() {
    let project = Project::new("missing", KUBERNETES, &[]);
    // Only the empty fake bin directory: not even the system's kubectl.
    let only_fakes = project.bin.display().to_string();
    let (code, stdout, stderr) = project.run_with_path(&["up", "cluster"], &only_fakes);
    assert_eq!(code, 2);
    assert_eq!(stdout, "");
    insta::assert_snapshot!(stderr, @r"
    error: `kubectl` is not on `PATH`
    hint: install kubectl (https://kubernetes.io/docs/tasks/tools/) and put it on `PATH`
    ");
    let fly = Project::new(
        "missing-fly",
        "version: 1\ntargets:\n  app: {platform: fly, region: ams}\n",
        &[],
    );
    let (code, _, stderr) = fly.run_with_path(&["up", "app"], &fly.bin.display().to_string());
    assert_eq!(code, 2);
    insta::assert_snapshot!(stderr, @r"
    error: `fly` or `flyctl` is not on `PATH`
    hint: install flyctl with `curl -L https://fly.io/install.sh | sh` (https://fly.io/docs/flyctl/install/) and put it on `PATH`
    ");
}

#[test]
fn kubectl_without_a_current_context_says_how_to_pick_one() {
    let project = Project::new("no-context", KUBERNETES, &["kubectl"]);
    project.answers("kubectl config current-context*|1|\n");
    let (code, _, stderr) = project.run(&["up", "cluster"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("hint: pick one with `kubectl config use-context NAME` (list them with `kubectl config get-contexts`)"),
        "{stderr}"
    );
    assert_eq!(project.take_log(), "kubectl config current-context\n");
}

#[test]
fn kubernetes_up_is_idempotent_keeps_the_key_on_stdin_and_down_reverses_it() {
    let project = Project::new("kubernetes", KUBERNETES, &["kubectl"]);
    let first = "kubectl config current-context*|0|kind-ci
kubectl get namespace vgi-ns -o name*|1|
kubectl -n vgi-ns get secret vgi-signing-key*|1|
kubectl -n vgi-ns get deployment.apps vgi -o jsonpath*|1|
kubectl api-resources*|0|servicemonitors.monitoring.coreos.com
";
    project.answers(first);
    let (code, stdout, stderr) = project.run(&["up", "cluster"]);
    assert!(code == 0 || code == 3, "{code}\n{stderr}");
    insta::assert_snapshot!("kubernetes_first_up", project.take_log());
    let stdins = project.stdins();
    assert_eq!(
        stdins.len(),
        2,
        "namespace and Secret manifests: {stdins:?}"
    );
    assert!(stdins[0].contains("kind: Namespace"), "{}", stdins[0]);
    let secret: serde_json::Value = serde_json::from_str(&stdins[1]).unwrap();
    assert_eq!(
        (&secret["kind"], &secret["metadata"]["name"]),
        (&"Secret".into(), &"vgi-signing-key".into()),
        "{secret}"
    );
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "deploy-kit"
    );
    use base64::Engine as _;
    let data = secret["data"]["value"].as_str().expect("data.value");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap();
    let key = key_in(&String::from_utf8(decoded).unwrap());
    assert!(
        stderr.contains("secret/vgi-ns/vgi-signing-key: created with a new key"),
        "{stderr}"
    );
    assert!(
        stderr.contains("rollout deployment/vgi: rolled out"),
        "{stderr}"
    );
    let state = project.state("ci", "cluster").expect("state written");
    assert!(
        state.contains("\"deployment.apps\"") && state.contains("\"kind-ci\""),
        "{state}"
    );
    assert_never_leaked(&project, &key, &[&stdout, &stderr, data]);

    project.answers(
        "kubectl config current-context*|0|kind-ci
kubectl api-resources*|0|servicemonitors.monitoring.coreos.com
kubectl -n vgi-ns get deployment.apps vgi -o jsonpath*|0|{\"deploy-kit.dev/service\":\"vgi\",\"deploy-kit.dev/environment\":\"ci\",\"deploy-kit.dev/target\":\"cluster\"}
",
    );
    let (_, stdout, stderr) = project.run(&["up", "cluster"]);
    insta::assert_snapshot!("kubernetes_second_up", project.take_log());
    assert!(
        stderr.contains("no changes: the target matches the last `up`"),
        "{stderr}"
    );
    assert!(stderr.contains("exists, key kept"), "{stderr}");
    assert_never_leaked(&project, &key, &[&stdout, &stderr]);

    project.answers(
        "kubectl config current-context*|0|kind-ci
kubectl get namespace vgi-ns -o jsonpath*|0|deploy-kit
kubectl -n vgi-ns get secret vgi-signing-key -o jsonpath*|0|deploy-kit
kubectl -n vgi-ns get deployment.apps vgi -o jsonpath*|0|{\"deploy-kit.dev/service\":\"vgi\",\"deploy-kit.dev/environment\":\"ci\",\"deploy-kit.dev/target\":\"cluster\"}
",
    );
    let (code, _, stderr) = project.run(&["down", "cluster", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    insta::assert_snapshot!("kubernetes_down", project.take_log());
    assert!(project.state("ci", "cluster").is_none(), "state removed");
}

#[test]
fn kubernetes_down_refuses_another_context() {
    let project = Project::new("kubernetes-context", KUBERNETES, &["kubectl"]);
    project.answers(
        "kubectl config current-context*|0|kind-ci
kubectl get namespace vgi-ns -o name*|1|
kubectl -n vgi-ns get secret vgi-signing-key*|1|
kubectl -n vgi-ns get deployment.apps vgi -o jsonpath*|1|
",
    );
    project.run(&["up", "cluster"]);
    project.take_log();
    project.answers("kubectl config current-context*|0|production-cluster\n");
    let (code, _, stderr) = project.run(&["down", "cluster", "--yes"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("hint: switch with `kubectl config use-context kind-ci`"),
        "{stderr}"
    );
    assert_eq!(
        project.take_log(),
        "kubectl config current-context\n",
        "nothing deleted"
    );
}

/// Ownership on Kubernetes: the rendered objects carry the deployment's
/// labels (service, environment, target); `up` refuses a Deployment of the
/// same name labelled for another deployment, or unlabelled, unless
/// `--adopt`; `down` refuses to delete one whose labels are not its own.
#[test]
fn kubernetes_up_and_down_refuse_another_deployments_objects() {
    let project = Project::new("kubernetes-owner", KUBERNETES, &["kubectl"]);
    let theirs = "kubectl -n vgi-ns get deployment.apps vgi -o jsonpath*|0|{\"deploy-kit.dev/service\":\"vgi\",\"deploy-kit.dev/environment\":\"staging\",\"deploy-kit.dev/target\":\"cluster\"}\n";
    let base = "kubectl config current-context*|0|kind-ci
kubectl get namespace vgi-ns -o name*|1|
kubectl -n vgi-ns get secret vgi-signing-key*|1|
";
    project.answers(&format!("{base}{theirs}"));
    let (code, _, stderr) = project.run(&["up", "cluster"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("deployment.apps `vgi-ns/vgi` exists and belongs to deployment `vgi/staging/cluster`, not `vgi/ci/cluster`"),
        "{stderr}"
    );
    let log = project.take_log();
    assert!(
        !log.contains("create") && !log.contains("apply"),
        "nothing made: {log}"
    );

    // Unlabelled (made by hand): refused too, then taken over with --adopt.
    project.answers(&format!(
        "{base}kubectl -n vgi-ns get deployment.apps vgi -o jsonpath*|0|{{\"app\":\"vgi\"}}\n"
    ));
    let (code, _, stderr) = project.run(&["up", "cluster"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("deploy-kit did not make it"), "{stderr}");
    assert!(stderr.contains("`--adopt`"), "{stderr}");
    project.take_log();
    let (code, _, stderr) = project.run(&["up", "cluster", "--adopt"]);
    assert!(code == 0 || code == 3, "{code}\n{stderr}");
    assert!(stderr.contains("ownership: taken over"), "{stderr}");
    assert!(project.take_log().contains("kubectl apply -f"), "applied");

    // Relabelled by another deployment since: `down` deletes nothing.
    project.answers(&format!(
        "kubectl config current-context*|0|kind-ci\n{theirs}"
    ));
    let (code, _, stderr) = project.run(&["down", "cluster", "--yes"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("`down` refuses to delete deployment.apps `vgi-ns/vgi`"),
        "{stderr}"
    );
    assert!(!project.take_log().contains("delete"), "nothing deleted");
    assert!(project.state("ci", "cluster").is_some());
}

/// `down` without `--yes`: refused with the list where no terminal can
/// ask (CI, a pipe), asked on a terminal, where only `y` deletes.
/// A signing-key Secret the user made before `up` (`signing_key.secret:
/// k8s:NAME`, no deploy-kit label) is "exists, key kept" at `up`, and `down`
/// keeps it and says so.
#[test]
fn kubernetes_down_keeps_a_secret_up_did_not_make() {
    let project = Project::new("kubernetes-own-secret", KUBERNETES, &["kubectl"]);
    project.answers(
        "kubectl config current-context*|0|kind-ci
kubectl get namespace vgi-ns -o name*|0|namespace/vgi-ns
kubectl -n vgi-ns get secret vgi-signing-key*|0|secret/vgi-signing-key
kubectl -n vgi-ns get deployment.apps vgi -o jsonpath*|1|
kubectl api-resources*|0|servicemonitors.monitoring.coreos.com
",
    );
    let (code, _, stderr) = project.run(&["up", "cluster"]);
    assert!(code == 0 || code == 3, "{code}\n{stderr}");
    assert!(stderr.contains("exists, key kept"), "{stderr}");
    project.take_log();
    project.answers(
        "kubectl config current-context*|0|kind-ci
kubectl get namespace vgi-ns -o jsonpath*|0|
kubectl -n vgi-ns get secret vgi-signing-key -o jsonpath*|0|
kubectl -n vgi-ns get deployment.apps vgi -o jsonpath*|0|{\"deploy-kit.dev/service\":\"vgi\",\"deploy-kit.dev/environment\":\"ci\",\"deploy-kit.dev/target\":\"cluster\"}
",
    );
    let (code, _, stderr) = project.run(&["down", "cluster", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    let log = project.take_log();
    assert!(
        !log.contains("delete secret vgi-signing-key"),
        "down deleted the user's pre-existing signing-key Secret:\n{log}"
    );
    assert!(
        stderr.contains("secret/vgi-ns/vgi-signing-key: kept, it is yours"),
        "{stderr}"
    );
}

#[test]
fn down_asks_on_a_terminal_and_refuses_elsewhere_without_yes() {
    let project = Project::new("kubernetes-confirm", KUBERNETES, &["kubectl"]);
    project.answers(
        "kubectl config current-context*|0|kind-ci
kubectl get namespace vgi-ns -o name*|1|
kubectl -n vgi-ns get secret vgi-signing-key*|1|
kubectl -n vgi-ns get deployment.apps vgi -o jsonpath*|1|
",
    );
    let (code, _, stderr) = project.run(&["up", "cluster"]);
    assert_eq!(code, 0, "{stderr}");
    project.take_log();
    project.answers(
        "kubectl config current-context*|0|kind-ci
kubectl get namespace vgi-ns -o jsonpath*|0|deploy-kit
kubectl -n vgi-ns get deployment.apps vgi -o jsonpath*|0|{\"deploy-kit.dev/service\":\"vgi\",\"deploy-kit.dev/environment\":\"ci\",\"deploy-kit.dev/target\":\"cluster\"}
",
    );

    let (code, _, stderr) = project.run(&["down", "cluster"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("there is no terminal to confirm on"),
        "{stderr}"
    );
    assert!(stderr.contains("namespace/vgi-ns"), "{stderr}");
    assert!(
        stderr.contains("`deploy-kit down cluster --yes`"),
        "{stderr}"
    );
    assert_eq!(project.take_log(), "", "nothing ran");
    assert!(project.state("ci", "cluster").is_some());

    let on_a_terminal = |answer: &str| {
        let transcript = project.dir.join("typescript");
        let command = format!("{} down cluster", env!("CARGO_BIN_EXE_deploy-kit"));
        let mut child = std::process::Command::new("script")
            .current_dir(&project.dir)
            .args(["--quiet", "--return", "--flush", "--command", &command])
            .arg(&transcript)
            .env("PATH", format!("{}:/usr/bin:/bin", project.bin.display()))
            .env("FAKE_CLI_LOG", project.log_path())
            .env("FAKE_CLI_ANSWERS", project.dir.join("answers"))
            .env("DEPLOY_KIT_TODAY", "2026-01-15")
            .env_remove("DEPLOY_KIT_CONFIG")
            .env_remove("DEPLOY_KIT_TARGET")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("util-linux `script` runs (apt-get install bsdutils)");
        use std::io::Write;
        // Typed once the question is up (the pty echoes it back).
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(answer.as_bytes()).unwrap();
        drop(stdin);
        let status = child.wait().unwrap();
        let text = std::fs::read_to_string(&transcript).unwrap_or_default();
        (status.code().unwrap_or(-1), text)
    };
    let (code, text) = on_a_terminal("n\n");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("delete them? [y/N]"), "{text}");
    assert!(text.contains("cancelled: nothing was deleted"), "{text}");
    assert!(!project.take_log().contains("delete"), "nothing deleted");
    assert!(project.state("ci", "cluster").is_some());

    let (code, text) = on_a_terminal("y\n");
    assert_eq!(code, 0, "{text}");
    assert!(project.take_log().contains("kubectl delete"), "deleted");
    assert!(project.state("ci", "cluster").is_none(), "state removed");
}

const FLY: &str = "version: 1
service: {name: vgi, environment: ci, image: \"registry.fly.io/vgi:1\"}
targets:
  app: {platform: fly, region: ams, instances: 2}
limits: {request_timeout_seconds: 60, shutdown_grace_seconds: 3}
signing_key: {source: secret, secret: \"fly:vgi-signing-key\"}
";

#[test]
fn fly_up_creates_the_app_once_imports_the_key_on_stdin_and_down_destroys_it() {
    let project = Project::new("fly", FLY, &["fly"]);
    project.answers(
        "fly apps list --json*|0|[]
fly secrets list*|0|[]
",
    );
    let (code, stdout, stderr) = project.run(&["up", "app", "--image", "registry.fly.io/vgi:1"]);
    assert!(code == 0 || code == 3, "{code}\n{stderr}");
    insta::assert_snapshot!("fly_first_up", project.take_log());
    let stdins = project.stdins();
    assert_eq!(stdins.len(), 1, "{stdins:?}");
    assert!(
        stdins[0].starts_with("VGI_SIGNING_KEY=hex:"),
        "the import line"
    );
    let key = key_in(&stdins[0]);
    assert_never_leaked(&project, &key, &[&stdout, &stderr]);

    project.answers(
        "fly apps list --json*|0|[{\"ID\":\"vgi-ci\",\"Name\":\"vgi-ci\"}]
fly secrets list*|0|[{\"Name\":\"VGI_SIGNING_KEY\",\"Digest\":\"d\"}]
",
    );
    let (_, stdout, stderr) = project.run(&["up", "app", "--image", "registry.fly.io/vgi:1"]);
    insta::assert_snapshot!("fly_second_up", project.take_log());
    assert_never_leaked(&project, &key, &[&stdout, &stderr]);

    let (code, _, stderr) = project.run(&["down", "app", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    insta::assert_snapshot!("fly_down", project.take_log());
}

const FLY_ENVIRONMENTS: &str = "version: 1
service: {name: vgi, environment: production, image: \"registry.fly.io/vgi:1\"}
environments:
  production: {}
  staging:
    signing_key: {secret: \"fly:vgi-staging-signing-key\"}
targets:
  app: {platform: fly, region: ams, instances: 2}
limits: {request_timeout_seconds: 60, shutdown_grace_seconds: 3}
signing_key: {source: secret, secret: \"fly:vgi-signing-key\"}
";

/// The `--app` of each `fly deploy` in `log`.
fn deployed_apps(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.starts_with("fly deploy"))
        .filter_map(|l| l.split(" --app ").nth(1))
        .map(|rest| rest.split(' ').next().unwrap_or_default().to_string())
        .collect()
}

/// Two environments of one service on Fly get an app each
/// (`<service.name>-<environment>`), and `down` of one leaves the other's.
#[test]
fn fly_environments_get_distinct_apps() {
    let project = Project::new("fly-envs", FLY_ENVIRONMENTS, &["fly"]);
    project.answers("fly apps list --json*|0|[]\nfly secrets list*|0|[]\n");
    let (code, _, stderr) = project.run(&[
        "up",
        "app",
        "--env",
        "staging",
        "--image",
        "registry.fly.io/vgi:1",
    ]);
    assert!(code == 0 || code == 3, "{code}\n{stderr}");
    let staging_log = project.take_log();
    let (code, _, stderr) = project.run(&[
        "up",
        "app",
        "--env",
        "production",
        "--image",
        "registry.fly.io/vgi:1",
    ]);
    assert!(code == 0 || code == 3, "{code}\n{stderr}");
    let production_log = project.take_log();
    assert_eq!(
        deployed_apps(&staging_log),
        ["vgi-staging"],
        "{staging_log}"
    );
    assert_eq!(
        deployed_apps(&production_log),
        ["vgi-production"],
        "{production_log}"
    );
    let (code, _, stderr) = project.run(&["down", "app", "--env", "staging", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    let down_log = project.take_log();
    assert!(
        down_log.contains("fly apps destroy vgi-staging --yes"),
        "{down_log}"
    );
    assert!(
        !down_log.contains("vgi-production"),
        "`down --env staging` touched production's app:\n{down_log}"
    );
}

/// A state from before apps were named per environment records the app
/// `service.name`: `up`, `plan` and `down` keep using that app, so an
/// upgrade neither orphans the running app nor makes a second one.
#[test]
fn fly_keeps_the_app_an_existing_state_records() {
    let project = Project::new("fly-recorded-app", FLY, &["fly"]);
    project.answers("fly apps list --json*|0|[]\nfly secrets list*|0|[]\n");
    let (code, _, stderr) = project.run(&["up", "app", "--image", "registry.fly.io/vgi:1"]);
    assert!(code == 0 || code == 3, "{code}\n{stderr}");
    let path = project.dir.join(".deploy-kit/ci/app/state.json");
    let state = std::fs::read_to_string(&path).unwrap();
    assert!(state.contains("\"vgi-ci\""), "{state}");
    std::fs::write(&path, state.replace("\"vgi-ci", "\"vgi")).unwrap();
    project.answers(
        "fly apps list --json*|0|[{\"ID\":\"vgi\",\"Name\":\"vgi\"}]
fly secrets list*|0|[{\"Name\":\"VGI_SIGNING_KEY\",\"Digest\":\"d\"}]
",
    );
    project.take_log();
    let (code, stdout, stderr) = project.run(&["plan", "app"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !stdout.contains("fly-app/"),
        "the app is unchanged:\n{stdout}"
    );
    let (code, _, stderr) = project.run(&["up", "app", "--image", "registry.fly.io/vgi:2"]);
    assert!(code == 0 || code == 3, "{code}\n{stderr}");
    let log = project.take_log();
    assert_eq!(deployed_apps(&log), ["vgi"], "{log}");
    assert!(!log.contains("apps create"), "{log}");
    let (code, _, stderr) = project.run(&["down", "app", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    let log = project.take_log();
    assert!(log.contains("fly apps destroy vgi --yes"), "{log}");
}

/// An app whose signing key was set before `up` (adopted, not created):
/// `down` keeps the app and the key, and scales the machines to 0.
#[test]
fn fly_down_keeps_a_key_set_before_up() {
    let project = Project::new("fly-own-key", FLY, &["fly"]);
    project.answers(
        "fly apps list --json*|0|[{\"ID\":\"vgi-ci\",\"Name\":\"vgi-ci\"}]
fly secrets list*|0|[{\"Name\":\"VGI_SIGNING_KEY\",\"Digest\":\"d\"}]
",
    );
    let (code, _, stderr) = project.run(&["up", "app", "--image", "registry.fly.io/vgi:1"]);
    assert!(code == 0 || code == 3, "{code}\n{stderr}");
    assert!(stderr.contains("set, key kept"), "{stderr}");
    project.take_log();
    let (code, _, stderr) = project.run(&["down", "app", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    let log = project.take_log();
    assert!(!log.contains("secrets unset"), "{log}");
    assert!(!log.contains("apps destroy"), "{log}");
    assert!(
        log.contains("fly scale count 0 --app vgi-ci --yes"),
        "{log}"
    );
    assert!(
        stderr.contains("secret/vgi-ci/VGI_SIGNING_KEY: kept, it was set before `up`"),
        "{stderr}"
    );
}

/// Finding: an `up` whose deploy went through and whose next step failed
/// left the state naming the release before it as live, so `rollback app 2`
/// answered "already live" and a plain `rollback` skipped to release 1,
/// while the failed `up`'s image served.
#[test]
fn fly_rollback_after_an_up_that_failed_part_way_returns_to_the_last_good_release() {
    let project = Project::new("fly-half", FLY, &["fly"]);
    let ok = "fly apps list --json*|0|[{\"ID\":\"vgi-ci\",\"Name\":\"vgi-ci\"}]
fly secrets list*|0|[{\"Name\":\"VGI_SIGNING_KEY\",\"Digest\":\"d\"}]
";
    project.answers(ok);
    let images = [
        "registry.fly.io/vgi@sha256:1111111111111111111111111111111111111111111111111111111111111111",
        "registry.fly.io/vgi@sha256:2222222222222222222222222222222222222222222222222222222222222222",
        "registry.fly.io/vgi@sha256:3333333333333333333333333333333333333333333333333333333333333333",
    ];
    for image in &images[..2] {
        let (code, _, stderr) = project.run(&["up", "app", "--image", image]);
        assert!(code == 0 || code == 3, "{code}\n{stderr}");
    }
    // The third `up`: its deploy goes through (image 3 serves), the scale fails.
    project.answers(&format!("{ok}fly scale count*|1|\n"));
    project.take_log();
    let (code, _, stderr) = project.run(&["up", "app", "--image", images[2]]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        project
            .take_log()
            .lines()
            .any(|l| l.starts_with("fly deploy ") && l.ends_with(images[2])),
        "the deploy ran"
    );
    assert!(
        stderr.contains(
            "`deploy-kit rollback app` returns to release 2, the last one known to serve"
        ),
        "{stderr}"
    );
    project.answers(ok);
    let (code, _, stderr) = project.run(&["rollback", "app"]);
    assert!(code == 0 || code == 3, "{code}\n{stderr}");
    assert!(
        stderr.contains("rollback: target `app` to release 2"),
        "{stderr}"
    );
    let log = project.take_log();
    assert!(
        log.lines()
            .any(|l| l.starts_with("fly deploy ") && l.ends_with(images[1])),
        "release 2's image deployed again:\n{log}"
    );
    // Settled: the next rollback goes back past release 2 as usual.
    let (code, json, stderr) = project.run(&["releases", "app", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let listed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(listed["live"], 3);
    assert_eq!(listed["releases"][2]["returns_to"], 2);
}

/// Each `up` records its image as a release; `rollback` deploys the
/// previous image again (`fly deploy --image`) and records that.
#[test]
fn fly_rollback_deploys_the_previous_image_again() {
    let project = Project::new("fly-rollback", FLY, &["fly"]);
    project.answers(
        "fly apps list --json*|0|[{\"ID\":\"vgi-ci\",\"Name\":\"vgi-ci\"}]
fly secrets list*|0|[{\"Name\":\"VGI_SIGNING_KEY\",\"Digest\":\"d\"}]
",
    );
    let first = "registry.fly.io/vgi@sha256:1111111111111111111111111111111111111111111111111111111111111111";
    let second = "registry.fly.io/vgi@sha256:2222222222222222222222222222222222222222222222222222222222222222";
    for image in [first, second] {
        let (code, _, stderr) = project.run(&["up", "app", "--image", image]);
        assert!(code == 0 || code == 3, "{code}\n{stderr}");
    }
    project.take_log();
    let (code, json, stderr) = project.run(&["releases", "app", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let listed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(listed["live"], 2);
    assert_eq!(listed["releases"][0]["artifact"]["digest"], first);

    let (code, _, stderr) = project.run(&["rollback", "app"]);
    assert!(code == 0 || code == 3, "{code}\n{stderr}");
    assert!(
        stderr.contains("rollback: target `app` to release 1"),
        "{stderr}"
    );
    let log = project.take_log();
    assert!(
        log.lines()
            .any(|l| l.starts_with("fly deploy ") && l.ends_with(&format!("--image {first}"))),
        "{log}"
    );
    let (_, json, _) = project.run(&["releases", "app", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(listed["live"], 3);
    assert_eq!(listed["releases"][2]["returns_to"], 1);
    assert_eq!(listed["releases"][2]["artifact"]["digest"], first);
}

/// Railway has no rollback yet: a typed refusal, nothing run.
#[test]
fn rollback_where_it_is_not_supported_says_so() {
    let project = Project::new("railway-rollback", RAILWAY, &["railway"]);
    project.answers(
        "railway variables --service vgi --json*|0|{\"RAILWAY_ENVIRONMENT\":\"production\"}\n",
    );
    for _ in 0..2 {
        let (code, _, stderr) = project.run(&["up", "web"]);
        assert!(code == 0 || code == 3, "{code}\n{stderr}");
    }
    project.take_log();
    let (code, _, stderr) = project.run(&["rollback", "web", "1"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("error: rollback is not supported on railway yet"),
        "{stderr}"
    );
    assert!(stderr.contains("hint: nothing was changed"), "{stderr}");
    assert_eq!(project.take_log(), "", "no CLI ran");
}

const RAILWAY: &str = "version: 1
service: {name: vgi, environment: ci}
targets:
  web: {platform: railway, instances: 2}
signing_key: {source: secret, secret: \"railway:vgi-signing-key\"}
";

#[test]
fn railway_up_sets_the_key_from_stdin_once_and_down_keeps_the_service() {
    let project = Project::new("railway", RAILWAY, &["railway"]);
    project.answers(
        "railway variables --service vgi --json*|0|{\"RAILWAY_ENVIRONMENT\":\"production\"}\n",
    );
    let (code, stdout, stderr) = project.run(&["up", "web"]);
    assert!(code == 0 || code == 3, "{code}\n{stderr}");
    insta::assert_snapshot!("railway_first_up", project.take_log());
    let stdins = project.stdins();
    assert_eq!(stdins.len(), 1, "{stdins:?}");
    let key = key_in(&stdins[0]);
    assert_never_leaked(&project, &key, &[&stdout, &stderr]);

    // The listing carries values; the engine reads only the names.
    project.answers(&format!(
        "railway variables --service vgi --json*|0|{{\"VGI_SIGNING_KEY\":\"{key}\"}}\n"
    ));
    let (_, stdout, stderr) = project.run(&["up", "web"]);
    assert!(!project.take_log().contains("--set-from-stdin"), "key kept");
    assert_never_leaked(&project, &key, &[&stdout, &stderr]);

    let (code, _, stderr) = project.run(&["down", "web", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    insta::assert_snapshot!("railway_down", project.take_log());
    assert!(
        stderr.contains("kept: the signing key `VGI_SIGNING_KEY` stays"),
        "{stderr}"
    );
}

const AZURE: &str = "version: 1
service: {name: vgi, environment: ci}
targets:
  func: {platform: azure-functions, region: westeurope, instances: 2}
limits: {max_request_bytes: 30000000, max_response_bytes: 30000000, request_timeout_seconds: 230}
storage: {provider: s3-compatible, bucket: vgi-data, prefix: vgi-rpc/, endpoint: \"https://storage.example.com\", expiry_days: 1, abort_multipart_days: 1, credential: static-keys}
signing_key: {source: secret, secret: \"azure:vgi-signing-key\"}
";

/// A real x86_64 glibc executable (C, built with `cc`) at `path`: what
/// `deploy-kit build` checks and packages as the service binary.
fn c_binary(path: &Path) {
    let source = path.with_extension("c");
    std::fs::write(&source, "int main(void) { return 0; }\n").unwrap();
    let cc = std::process::Command::new("cc")
        .args([
            "-O1",
            "-o",
            path.to_str().unwrap(),
            source.to_str().unwrap(),
        ])
        .output()
        .expect("cc runs");
    assert!(cc.status.success(), "{cc:?}");
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the fake `az` was handed by `config-zip --src` (taken: the next call starts empty).
fn deployed_zip(project: &Project) -> Vec<u8> {
    let path = project.dir.join("cli.log.deployed.zip");
    let bytes = std::fs::read(&path).expect("`az functionapp deployment source config-zip` ran");
    std::fs::remove_file(&path).unwrap();
    bytes
}

const STORAGE_ACCOUNT_ID: &str =
    "/subscriptions/s/resourceGroups/vgi-func/providers/Microsoft.Storage/storageAccounts/vgifunc";

#[test]
fn azure_up_creates_each_resource_once_with_the_key_on_stdin() {
    let project = Project::new("azure", AZURE, &["az"]);
    c_binary(&project.dir.join("kit-service"));
    let missing = format!(
        "az group show*|3|
az storage account show*--query id*|0|{STORAGE_ACCOUNT_ID}
az storage account show*|3|
az keyvault show --name vgi-func --resource-group vgi-func --output none|3|
az keyvault secret show*|3|
az functionapp show*|3|
az functionapp identity show*|0|00000000-0000-0000-0000-000000000001
az keyvault show*--query id*|0|/subscriptions/s/resourceGroups/vgi-func/providers/Microsoft.KeyVault/vaults/vgi-func
"
    );
    project.answers(&missing);
    let (code, stdout, stderr) = project.run(&["up", "func", "--kit-service", "kit-service"]);
    assert!(code == 0 || code == 3, "{code}\n{stderr}");
    let log = project.take_log();
    insta::assert_snapshot!("azure_first_up", log);
    // The function's identity may use the account's blobs (it signs user
    // delegation SAS URLs), and the service is told where they are: no key.
    assert!(
        log.contains(&format!("az role assignment create --assignee-object-id 00000000-0000-0000-0000-000000000001 --assignee-principal-type ServicePrincipal --role Storage Blob Data Contributor --scope {STORAGE_ACCOUNT_ID} --output none")),
        "{log}"
    );
    for setting in [
        " KIT_STORAGE=azure ",
        " AZURE_STORAGE_ACCOUNT=vgifunc ",
        " KIT_STORAGE_BUCKET=vgi-data ",
        " KIT_STORAGE_PREFIX=vgi-rpc/ ",
    ] {
        assert!(log.contains(setting), "{setting} in {log}");
    }
    assert!(!log.contains("AZURE_STORAGE_KEY"), "{log}");
    assert!(!log.contains("KIT_STORAGE_ENDPOINT"), "{log}");
    // `up` ran `deploy-kit build`, and `az` deployed exactly the zip it made.
    assert!(stderr.contains("build: package `"), "{stderr}");
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(project.dir.join(".deploy-kit/ci/func/build.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record["kind"], "azure-functions-zip");
    let built = record["package"]["sha256"].as_str().unwrap().to_string();
    assert_eq!(sha256_hex(&deployed_zip(&project)), built);
    let key = key_in(&project.stdins()[0]);
    assert_never_leaked(&project, &key, &[&stdout, &stderr]);
    let policy = std::fs::read_to_string(
        project
            .dir
            .join(".deploy-kit/ci/func/azure/lifecycle-policy.json"),
    )
    .unwrap();
    assert!(policy.contains("\"vgi-data/vgi-rpc/\""), "{policy}");

    // The group carries this state's tag (what `group create` was given).
    let id = project.state_id().unwrap();
    let tagged = format!(
        "az group show*--query tags*|0|{{\"managed-by\":\"deploy-kit\",\"deploy-kit-deployment\":\"vgi/ci/func@{id}\"}}\n"
    );
    project.answers(&format!(
        "{tagged}az functionapp identity show*|0|00000000-0000-0000-0000-000000000001
az storage account show*--query id*|0|{STORAGE_ACCOUNT_ID}
"
    ));
    let (_, stdout, stderr) = project.run(&["up", "func", "--kit-service", "kit-service"]);
    let log = project.take_log();
    // The same binary rebuilt: the same bytes deployed.
    assert_eq!(sha256_hex(&deployed_zip(&project)), built);
    assert!(
        [
            "group create",
            "account create",
            "keyvault create",
            "secret set",
            "functionapp create"
        ]
        .iter()
        .all(|step| !log.contains(step)),
        "{log}"
    );
    assert_never_leaked(&project, &key, &[&stdout, &stderr]);

    // Tagged for another state (another checkout): `down` deletes nothing.
    project.answers(
        "az group show*--query tags*|0|{\"deploy-kit-deployment\":\"vgi/ci/func@ffffffffffffffff\"}\n",
    );
    let (code, _, stderr) = project.run(&["down", "func", "--yes"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("`down` refuses to delete resource-group `vgi-func`"),
        "{stderr}"
    );
    assert!(!project.take_log().contains("delete"), "nothing deleted");

    project.answers(&tagged);
    let (code, _, stderr) = project.run(&["down", "func", "--yes"]);
    assert_eq!(code, 0, "{stderr}");
    insta::assert_snapshot!("azure_down", project.take_log());
    assert!(
        stderr.contains("deploy-kit down func --delete-data"),
        "{stderr}"
    );
}

#[test]
fn azure_up_with_package_deploys_that_zip_and_builds_nothing() {
    let project = Project::new("azure-package", AZURE, &["az"]);
    let zip = deploy_kit::engine::zip::write(&[deploy_kit::engine::zip::ZipEntry {
        name: "host.json",
        contents: b"{}",
        mode: 0o644,
    }])
    .unwrap();
    std::fs::write(project.dir.join("given.zip"), &zip).unwrap();
    project.answers(&format!(
        "az group show*|3|
az functionapp identity show*|0|00000000-0000-0000-0000-000000000001
az storage account show*--query id*|0|{STORAGE_ACCOUNT_ID}
"
    ));
    let (code, _, stderr) = project.run(&["up", "func", "--package", "given.zip"]);
    assert!(code == 0 || code == 3, "{code}\n{stderr}");
    assert_eq!(deployed_zip(&project), zip);
    assert!(!stderr.contains("build:"), "{stderr}");
    assert!(!project.dir.join(".deploy-kit/ci/func/build.json").exists());

    // A package that is not there: an error before anything runs.
    let (code, _, stderr) = project.run(&["up", "func", "--package", "missing.zip"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("the package `missing.zip` does not exist"),
        "{stderr}"
    );
}

/// The cluster's signing-key Secret as the fake holds it: the JSON deploy-kit
/// last sent to `create`/`replace`.
fn cluster_secret(project: &Project) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(project.dir.join("secret.json")).unwrap())
        .unwrap()
}

/// A decoded key of the Secret's data.
fn secret_key(secret: &serde_json::Value, key: &str) -> Option<String> {
    use base64::Engine as _;
    let encoded = secret["data"][key].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    Some(String::from_utf8(bytes).unwrap())
}

/// The calls of a rotation run other than the Secret reads.
fn changes(log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| !line.starts_with("kubectl -n vgi-ns get secret vgi-signing-key -o json"))
        .map(|line| match line.split_once(" <stdin:") {
            Some((call, _)) => format!("{call} <stdin>"),
            None => line.to_string(),
        })
        .collect()
}

/// Regression: `secrets rotate` on Kubernetes used local key files and
/// printed `kubectl create secret` commands with other Secret keys than the
/// Deployment mounts, no namespace and a guessed Secret name. It must change
/// the Secret `up` created (keeping the key `up` generated verifying) and
/// restart the Deployment `up` applied.
#[test]
fn kubernetes_secrets_rotate_changes_the_cluster_secret_and_restarts_the_deployment() {
    let project = Project::new("kubernetes-rotate", KUBERNETES, &["kubectl"]);
    project.answers(
        "kubectl config current-context*|0|kind-ci
kubectl get namespace vgi-ns -o name*|0|namespace/vgi-ns
kubectl -n vgi-ns get secret vgi-signing-key -o name*|1|
kubectl -n vgi-ns get deployment.apps vgi -o jsonpath*|1|
kubectl api-resources*|0|servicemonitors.monitoring.coreos.com
kubectl create -f -*|0|>secret.json
",
    );
    let (code, _, stderr) = project.run(&["up", "cluster"]);
    assert!(code == 0 || code == 3, "{code}\n{stderr}");
    let created = cluster_secret(&project);
    let old = secret_key(&created, "value").expect("up created the key");
    assert_eq!(secret_key(&created, "previous"), None);
    project.take_log();
    let cluster = "kubectl -n vgi-ns get secret vgi-signing-key -o json*|0|<secret.json
kubectl -n vgi-ns replace -f -*|0|>secret.json
";
    project.answers(&format!(
        "kubectl config current-context*|0|production-cluster\n{cluster}"
    ));
    let (code, _, stderr) = project.run(&["secrets", "rotate", "--target", "cluster"]);
    assert_eq!(code, 2, "another cluster's Secret is not rotated: {stderr}");
    assert!(
        stderr.contains("hint: switch with `kubectl config use-context kind-ci`"),
        "{stderr}"
    );
    assert_eq!(project.take_log(), "kubectl config current-context\n");
    project.answers(&format!(
        "kubectl config current-context*|0|kind-ci\n{cluster}"
    ));
    let roll = [
        "kubectl -n vgi-ns rollout restart deployment/vgi",
        "kubectl -n vgi-ns rollout status deployment/vgi --timeout=300s",
    ];
    let mut outputs = Vec::new();
    let mut rotate = |phase: &str, extra: &[&str]| {
        let mut arguments = vec!["secrets", "rotate", "--target", "cluster", "--phase", phase];
        arguments.extend(extra);
        let (code, stdout, stderr) = project.run(&arguments);
        assert_eq!(code, 0, "{phase}\n{stdout}\n{stderr}");
        let mut expected = vec![
            "kubectl config current-context".to_string(),
            "kubectl -n vgi-ns replace -f - <stdin>".to_string(),
        ];
        expected.extend(roll.iter().map(|call| call.to_string()));
        assert_eq!(changes(&project.take_log()), expected, "{phase}");
        let secret = cluster_secret(&project);
        assert_eq!(
            (
                &secret["kind"],
                &secret["metadata"]["namespace"],
                &secret["metadata"]["name"],
                &secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            ),
            (
                &"Secret".into(),
                &"vgi-ns".into(),
                &"vgi-signing-key".into(),
                &"deploy-kit".into()
            ),
            "{phase}: {secret}"
        );
        outputs.push(stdout);
        outputs.push(stderr);
        secret
    };

    let staged = rotate("stage", &[]);
    assert_eq!(
        secret_key(&staged, "value").as_ref(),
        Some(&old),
        "old key still signs"
    );
    let new = secret_key(&staged, "previous").expect("the staged key verifies");
    assert!(
        new.starts_with("hex:") && new.len() == 68 && new != old,
        "{}",
        new.len()
    );
    let keys: Vec<&String> = staged["data"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["previous", "value"]);
    assert!(
        staged["metadata"]["annotations"]["deploy-kit.dev/signing-key-pending"].is_string(),
        "{staged}"
    );

    let promoted = rotate("promote", &[]);
    assert_eq!(
        secret_key(&promoted, "value").as_ref(),
        Some(&new),
        "new key signs"
    );
    assert_eq!(
        secret_key(&promoted, "previous").as_ref(),
        Some(&old),
        "the key `up` made still verifies"
    );
    assert!(promoted["metadata"]["annotations"]["deploy-kit.dev/signing-key-pending"].is_null());

    let retired = rotate("retire", &["--force"]);
    assert_eq!(secret_key(&retired, "value").as_ref(), Some(&new));
    assert_eq!(secret_key(&retired, "previous"), None, "{retired}");

    let (code, status, _) = project.run(&["secrets", "status", "--target", "cluster"]);
    assert_eq!(code, 0, "{status}");
    assert!(
        status.contains("store: Secret `vgi-signing-key` in namespace `vgi-ns`")
            && status.contains("phase: idle"),
        "{status}"
    );
    outputs.push(status);
    let outputs: Vec<&str> = outputs.iter().map(String::as_str).collect();
    assert_never_leaked(&project, &old, &outputs);
    assert_never_leaked(&project, &new, &outputs);
}
