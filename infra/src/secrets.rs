//! `deploy-kit secrets rotate` and `secrets status`: replace the stream-token
//! signing key without failing an open stream.
//!
//! A rotation is three steps, each followed by a roll of the replicas (see
//! `docs/secrets.md`): `stage` (a new key verifies, the old one still
//! signs), `promote` (the new key signs, the old one still verifies) and
//! `retire` (the old key goes, once `token_ttl_seconds` has passed since the
//! promote roll). [`rotation`] is the state machine, [`store`] the places keys
//! live, [`replicas`] the rolls; [`kubernetes`] and `aws` drive those
//! platforms' stores and rolls, other platforms get printed commands. The rotation state in
//! `.deploy-kit/<environment>/<target>/rotation.json` holds fingerprints and
//! times, never a key value, and nothing here prints one.

#[cfg(feature = "aws")]
pub mod aws;
pub mod kubernetes;
pub mod replicas;
pub mod rotation;
pub mod store;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kit_checks::platform::Platform;

use crate::CommandError;
use crate::config::DEFAULT_CONFIG_FILE;
use crate::deployment::Deployment;
use replicas::{PrintedRoll, ReplicaSet, RollOutcome};
use rotation::{Phase, ROTATION_FILE, Requested, RotationState, Step, utc};
use store::{FileKeyStore, KeyStore, Secret};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: SecretsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum SecretsCommand {
    /// Rotate the signing key: stage, promote, retire, rolling the replicas after each.
    Rotate(RotateArgs),
    /// Show the rotation's phase, key fingerprints and when retiring is allowed.
    Status(TargetArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// Target (a name under `targets:`); `local` is `deploy-kit up local`.
    #[arg(long, env = "DEPLOY_KIT_TARGET")]
    pub target: Option<String>,
    /// Config file.
    #[arg(long, env = "DEPLOY_KIT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PhaseArg {
    Stage,
    Promote,
    Retire,
    /// As far as is safe now.
    Auto,
}

#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The step to take.
    #[arg(long, value_enum, default_value = "auto")]
    pub phase: PhaseArg,
    /// Retire before the token lifetime has passed (fails streams opened before the promote).
    #[arg(long)]
    pub force: bool,
    /// Print the `deploy-kit.secrets-rotate/v1` document (steps taken, key
    /// fingerprints, phase) on stdout; the progress lines go to stderr.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> ExitCode {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let env = |name: &str| std::env::var(name).ok();
    let mut stdout = std::io::stdout();
    let result = match args.command {
        SecretsCommand::Rotate(args) => resolve(&args.target, &cwd, &env).and_then(|mut target| {
            let requested = match args.phase {
                PhaseArg::Stage => Requested::One(Step::Stage),
                PhaseArg::Promote => Requested::One(Step::Promote),
                PhaseArg::Retire => Requested::One(Step::Retire),
                PhaseArg::Auto => Requested::Auto,
            };
            crate::output::set_json(args.json);
            if !args.json {
                return target
                    .rotate(requested, args.force, &rotation::now, &mut stdout)
                    .map(drop);
            }
            let steps = target.rotate(
                requested,
                args.force,
                &rotation::now,
                &mut std::io::stderr(),
            )?;
            let rotation = RotationState::load(&target.state_path)?;
            crate::output::document(&serde_json::json!({
                "schema": crate::output::SECRETS_ROTATE,
                "target": target.name,
                "steps": steps.iter().map(|step| step.name()).collect::<Vec<_>>(),
                "rotation": rotation,
            }));
            Ok(())
        }),
        SecretsCommand::Status(args) => resolve(&args, &cwd, &env)
            .and_then(|target| target.status(rotation::now(), &mut stdout)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => error.report(),
    }
}

/// One target's key store, replicas and rotation state.
pub struct RotationTarget {
    pub name: String,
    pub store: Box<dyn KeyStore>,
    pub replicas: Box<dyn ReplicaSet>,
    /// `rotation.json`.
    pub state_path: PathBuf,
    pub token_ttl_seconds: u64,
    /// The command that continues this rotation, for hints.
    pub command: String,
}

/// Picks the store and the roll for a target from `deploy-kit.yaml` (or
/// `up local`'s files when there is no config and the target is `local`).
pub fn resolve(
    args: &TargetArgs,
    cwd: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RotationTarget, CommandError> {
    let has_config = args.config.is_some() || cwd.join(DEFAULT_CONFIG_FILE).exists();
    let wants_local = args.target.as_deref().is_none_or(|t| t == "local");
    if !has_config && wants_local {
        let dir = cwd.join(crate::up_local::STATE_DIR);
        return Ok(local_target(&dir, 3600, "local"));
    }
    let deployment = Deployment::load(args.config.as_deref(), args.target.as_deref(), cwd)?;
    let ttl = deployment.config.signing_key.token_ttl_seconds;
    let name = deployment.target_name.clone();
    if name == "local" {
        return Ok(local_target(
            &cwd.join(crate::up_local::STATE_DIR),
            ttl,
            &name,
        ));
    }
    let command = format!("deploy-kit secrets rotate --target {name}");
    let state_path = deployment.output_dir.join(ROTATION_FILE);
    let platform = deployment.target.platform;
    if crate::engine::aws::handles(platform) {
        return aws_target(&deployment, state_path, command, env);
    }
    if platform == Platform::Kubernetes {
        use crate::engine::cli::kubernetes as engine;
        let plan = engine::rotation_plan(&deployment)?;
        let cli = crate::engine::cli::cli_for(&deployment)?;
        // The keys are the cluster's: never rotate another cluster's Secret.
        let recorded = crate::engine::State::load(&deployment.state_path())?
            .as_ref()
            .and_then(engine::recorded_context);
        engine::same_context(
            recorded.as_deref(),
            &engine::current_context(&cli)?,
            &command,
        )?;
        return Ok(RotationTarget {
            store: Box::new(kubernetes::KubernetesSecretStore::new(cli.clone(), &plan)),
            replicas: Box::new(kubernetes::KubernetesReplicas::new(cli, &plan)),
            name,
            state_path,
            token_ttl_seconds: ttl,
            command,
        });
    }
    let dir = deployment.output_dir.clone();
    Ok(RotationTarget {
        store: Box::new(FileKeyStore::new(&dir)),
        replicas: Box::new(printed_roll(platform, &dir)),
        name,
        state_path,
        token_ttl_seconds: ttl,
        command,
    })
}

fn local_target(dir: &Path, ttl: u64, name: &str) -> RotationTarget {
    RotationTarget {
        name: name.to_string(),
        store: Box::new(FileKeyStore::new(dir)),
        replicas: Box::new(PrintedRoll {
            what: "the `deploy-kit up local` service".to_string(),
            commands: vec![
                "stop `deploy-kit up local` (Ctrl-C; it drains) and run it again: it reads the key files at start".to_string(),
            ],
        }),
        state_path: dir.join(ROTATION_FILE),
        token_ttl_seconds: ttl,
        command: if name == "local" {
            "deploy-kit secrets rotate --target local".to_string()
        } else {
            format!("deploy-kit secrets rotate --target {name}")
        },
    }
}

/// The exact commands that roll a platform deploy-kit does not drive
/// (Kubernetes and AWS Lambda are driven: [`kubernetes`], `aws`).
pub fn printed_roll(platform: Platform, dir: &Path) -> PrintedRoll {
    let commands = match platform {
        Platform::Compose => vec![format!(
            "for each replica in turn: `docker compose up -d --no-deps --force-recreate <replica>` and wait until it is healthy; mount `{}` and point `VGI_SIGNING_KEY_FILE` / `VGI_SIGNING_KEY_PREVIOUS_FILE` at the files",
            dir.display()
        )],
        Platform::Fly => vec![
            format!(
                "fly secrets set VGI_SIGNING_KEY=\"$(cat {dir}/signing-key)\" VGI_SIGNING_KEY_PREVIOUS=\"$(cat {dir}/signing-key.pending {dir}/signing-key.previous 2>/dev/null | paste -sd,)\"",
                dir = dir.display()
            ),
            "fly deploy --strategy rolling".to_string(),
        ],
        other => vec![format!(
            "set `VGI_SIGNING_KEY` (from `{dir}/signing-key`) and `VGI_SIGNING_KEY_PREVIOUS` (from the `.pending`/`.previous` files, comma-separated) on the {} service and redeploy it",
            other.name(),
            dir = dir.display()
        )],
    };
    PrintedRoll {
        what: format!("the {} replicas", platform.name()),
        commands,
    }
}

#[cfg(feature = "aws")]
fn aws_target(
    deployment: &Deployment,
    state_path: PathBuf,
    command: String,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RotationTarget, CommandError> {
    let settings = crate::engine::aws::AwsSettings::resolve(
        &deployment.config,
        &deployment.target_name,
        &deployment.target,
        env,
    )?;
    let clients = std::sync::Arc::new(aws::Clients::new(&settings.region)?);
    Ok(RotationTarget {
        name: deployment.target_name.clone(),
        store: Box::new(aws::SecretsManagerStore::new(
            clients.clone(),
            &settings.secret_name,
        )),
        replicas: Box::new(aws::LambdaReplicas::new(clients, &settings.function_name)),
        state_path,
        token_ttl_seconds: deployment.config.signing_key.token_ttl_seconds,
        command,
    })
}

#[cfg(not(feature = "aws"))]
fn aws_target(
    deployment: &Deployment,
    _state_path: PathBuf,
    _command: String,
    _env: &dyn Fn(&str) -> Option<String>,
) -> Result<RotationTarget, CommandError> {
    Err(CommandError::new(
        format!(
            "target `{}` runs on AWS, and this deploy-kit was built without the `aws` feature",
            deployment.target_name
        ),
        "rebuild with `cargo install --path infra --features aws` (or `cargo build --release -p deploy-kit --features aws`)",
        2,
    ))
}

impl RotationTarget {
    /// Runs the requested step (or, for `auto`, every step that is safe now).
    /// An unfinished roll from an earlier run is finished first.
    pub fn rotate(
        &mut self,
        requested: Requested,
        force: bool,
        now: &dyn Fn() -> u64,
        out: &mut dyn Write,
    ) -> Result<Vec<Step>, CommandError> {
        self.replicas.preflight()?;
        let mut state = self.reconcile(out)?;
        if !state.rolled {
            self.roll(&mut state, now, out)?;
        }
        let mut done = Vec::new();
        match requested {
            Requested::One(step) => {
                if let Some(error) = rotation::refusal(&state, step, now(), force, &self.command) {
                    return Err(error);
                }
                self.step(&mut state, step, now, out)?;
                done.push(step);
            }
            Requested::Auto => {
                while let Some(step) = rotation::next_auto_step(&state, now(), &done) {
                    let manual = self.step(&mut state, step, now, out)?;
                    done.push(step);
                    if manual {
                        break;
                    }
                }
                if done.is_empty() {
                    line(
                        out,
                        &format!(
                            "nothing to do now: the rotation is `{}`",
                            state.phase.name()
                        ),
                    );
                }
            }
        }
        self.next_hint(&state, now(), out);
        Ok(done)
    }

    /// The state file, checked against the store: the store wins, and a
    /// disagreement means a run died before its roll finished.
    fn reconcile(&mut self, out: &mut dyn Write) -> Result<RotationState, CommandError> {
        let keys = self.store.read()?;
        let mut state = RotationState::load(&self.state_path)?
            .unwrap_or_else(|| RotationState::new(self.token_ttl_seconds));
        let primary = Some(keys.primary.fingerprint());
        let pending = keys.pending.as_ref().map(Secret::fingerprint);
        let previous = keys.previous.as_ref().map(Secret::fingerprint);
        let fresh = state.primary.is_none();
        if state.phase != keys.phase()
            || state.primary != primary
            || state.pending != pending
            || state.previous != previous
        {
            if !fresh || keys.phase() != Phase::Idle {
                line(
                    out,
                    &format!(
                        "note: {} is `{}` but the rotation state said `{}`; rolling the replicas again to be sure",
                        self.store.describe(),
                        keys.phase().name(),
                        state.phase.name()
                    ),
                );
                state.rolled = false;
            }
            state.phase = keys.phase();
            state.primary = primary;
            state.pending = pending;
            state.previous = previous;
            state.save(&self.state_path)?;
        }
        Ok(state)
    }

    /// Changes the store for `step`, saves, rolls. True when the roll is manual.
    fn step(
        &mut self,
        state: &mut RotationState,
        step: Step,
        now: &dyn Fn() -> u64,
        out: &mut dyn Write,
    ) -> Result<bool, CommandError> {
        let before = state.primary.clone().unwrap_or_default();
        match step {
            Step::Stage => {
                let new = Secret::generate()?;
                self.store.stage(&new)?;
                line(
                    out,
                    &format!(
                        "stage: new key {} in {}; replicas will verify with it and still sign with {before}",
                        new.fingerprint(),
                        self.store.describe()
                    ),
                );
                state.staged_at = Some(now());
                state.promoted_at = None;
                state.retired_at = None;
            }
            Step::Promote => {
                self.store.promote()?;
                line(
                    out,
                    &format!(
                        "promote: {} signs from now on; {before} still verifies",
                        state.pending.clone().unwrap_or_default()
                    ),
                );
                state.promoted_at = None;
                state.token_ttl_seconds = self.token_ttl_seconds;
            }
            Step::Retire => {
                self.store.retire()?;
                line(
                    out,
                    &format!(
                        "retire: {} no longer verifies",
                        state.previous.clone().unwrap_or_default()
                    ),
                );
                state.retired_at = Some(now());
            }
        }
        let keys = self.store.read()?;
        state.phase = keys.phase();
        state.primary = Some(keys.primary.fingerprint());
        state.pending = keys.pending.as_ref().map(Secret::fingerprint);
        state.previous = keys.previous.as_ref().map(Secret::fingerprint);
        state.rolled = false;
        state.save(&self.state_path)?;
        self.roll(state, now, out)
    }

    /// Rolls the replicas onto the store's keys and records it.
    fn roll(
        &mut self,
        state: &mut RotationState,
        now: &dyn Fn() -> u64,
        out: &mut dyn Write,
    ) -> Result<bool, CommandError> {
        let keys = self.store.read()?;
        let replica_keys = self.store.replica_keys(&keys);
        let outcome = {
            let mut progress = |text: &str| line(&mut *out, text);
            self.replicas.roll(&replica_keys, &mut progress)
        };
        let outcome = outcome.map_err(|error| {
            CommandError::new(
                format!(
                    "roll of {} failed: {}",
                    self.replicas.describe(),
                    error.message
                ),
                format!(
                    "{}; then run `{}` again: it finishes the roll first",
                    error.hint, self.command
                ),
                error.exit_code,
            )
        })?;
        let manual = match outcome {
            RollOutcome::Rolled => {
                line(
                    out,
                    &format!(
                        "roll: {} sign with {} and verify with {}",
                        self.replicas.describe(),
                        replica_keys.primary_fingerprint,
                        if replica_keys.verify_fingerprints.is_empty() {
                            "no other key".to_string()
                        } else {
                            replica_keys.verify_fingerprints.join(", ")
                        }
                    ),
                );
                false
            }
            RollOutcome::Manual(commands) => {
                line(
                    out,
                    &format!(
                        "roll: deploy-kit cannot restart {}; run:",
                        self.replicas.describe()
                    ),
                );
                for command in commands {
                    line(out, &format!("  {command}"));
                }
                true
            }
        };
        state.rolled = true;
        if state.phase == Phase::Promoted && state.promoted_at.is_none() {
            state.promoted_at = Some(now());
        }
        state.save(&self.state_path)?;
        Ok(manual)
    }

    fn next_hint(&self, state: &RotationState, now: u64, out: &mut dyn Write) {
        let command = &self.command;
        let text = match state.phase {
            Phase::Idle => format!("rotation `idle`; start the next one with `{command}`"),
            Phase::Staged => {
                format!("next: `{command} --phase promote` once every replica runs the staged key")
            }
            Phase::Promoted => match state.retire_allowed_at() {
                Some(at) if at > now => format!(
                    "next: `{command} --phase retire` after {} ({} s from now)",
                    utc(at),
                    at - now
                ),
                Some(_) => format!("next: `{command} --phase retire` (allowed now)"),
                None => format!(
                    "next: tokens never expire, so only `{command} --phase retire --force` retires the old key"
                ),
            },
        };
        line(out, &text);
    }

    /// `secrets status`: phase, fingerprints, times, never values.
    pub fn status(&self, now: u64, out: &mut dyn Write) -> Result<(), CommandError> {
        let keys = self.store.read()?;
        let state = RotationState::load(&self.state_path)?;
        line(out, &format!("target: {}", self.name));
        line(out, &format!("store: {}", self.store.describe()));
        line(out, &format!("replicas: {}", self.replicas.describe()));
        line(out, &format!("phase: {}", keys.phase().name()));
        line(out, &format!("primary: {}", keys.primary.fingerprint()));
        if let Some(pending) = &keys.pending {
            line(
                out,
                &format!("pending: {} (verifies only)", pending.fingerprint()),
            );
        }
        if let Some(previous) = &keys.previous {
            line(
                out,
                &format!("previous: {} (verifies only)", previous.fingerprint()),
            );
        }
        line(
            out,
            &format!("token_ttl_seconds: {}", self.token_ttl_seconds),
        );
        match &state {
            Some(state) => {
                if !state.rolled || state.phase != keys.phase() {
                    line(
                        out,
                        &format!("rolled: no; run `{}` to finish the roll", self.command),
                    );
                }
                for (label, at) in [
                    ("staged_at", state.staged_at),
                    ("promoted_at", state.promoted_at),
                    ("retired_at", state.retired_at),
                ] {
                    if let Some(at) = at {
                        line(out, &format!("{label}: {}", utc(at)));
                    }
                }
                if state.phase == Phase::Promoted {
                    match state.retire_allowed_at() {
                        Some(at) if at > now => line(
                            out,
                            &format!(
                                "retire allowed after: {} ({} s from now)",
                                utc(at),
                                at - now
                            ),
                        ),
                        Some(at) => line(out, &format!("retire allowed after: {} (now)", utc(at))),
                        None => line(
                            out,
                            "retire allowed after: never (tokens never expire; `--force`)",
                        ),
                    }
                }
                self.next_hint(state, now, out);
            }
            None => line(
                out,
                &format!("no rotation yet; start one with `{}`", self.command),
            ),
        }
        Ok(())
    }
}

fn line(out: &mut dyn Write, text: &str) {
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}
