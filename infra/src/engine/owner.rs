//! Who owns a cloud resource. Every resource an engine makes carries the
//! deployment's tag ([`TAG_KEY`] = `<service>/<environment>/<target>@<id>`,
//! the id made once per state file); `up` refuses to take over a resource
//! it did not make unless `--adopt`, and `down` refuses to delete one whose
//! tag is not this deployment's, before anything changes. A state file
//! from another checkout or a name collision with someone else's resource
//! is then an error, not a deletion.

use std::collections::BTreeSet;

use crate::CommandError;
use crate::engine::State;

/// The tag (AWS) every resource a deployment makes carries.
pub const TAG_KEY: &str = "deploy-kit:deployment";
/// The tag saying deploy-kit made it, for people reading the console.
pub const MANAGED_BY: (&str, &str) = ("managed-by", "deploy-kit");

/// The deployment an engine works for, and what it may take over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The value of [`TAG_KEY`] on everything this deployment makes.
    pub tag: String,
    /// The state's id alone: what clouds whose labels cannot hold the whole
    /// tag (GCP: lower-case letters, digits, `-`, `_`) compare.
    pub id: String,
    /// `up --adopt`: take over existing resources whatever their tag.
    pub adopt: bool,
    /// `(kind, name)` of every resource the state records: made by this
    /// deployment, perhaps before deploy-kit tagged resources.
    pub recorded: BTreeSet<(String, String)>,
}

/// What `up` does with a resource it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// It carries this deployment's tag.
    Ours,
    /// Tag it as this deployment's: recorded but untagged, or `--adopt`.
    Take,
}

/// A resource that belongs to someone else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OwnershipError {
    /// `up` found a resource another deployment made.
    #[error("{kind} `{name}` exists and belongs to deployment `{owner}`, not `{ours}`")]
    Taken {
        kind: String,
        name: String,
        owner: String,
        ours: String,
    },
    /// `up` found a resource deploy-kit did not make.
    #[error("{kind} `{name}` exists and deploy-kit did not make it (no deploy-kit ownership tag)")]
    Unmarked { kind: String, name: String },
    /// `down` was asked to delete a resource that is not this deployment's.
    #[error(
        "`down` refuses to delete {kind} `{name}`: its deploy-kit ownership tag is {found}, not `{ours}`"
    )]
    NotOurs {
        kind: String,
        name: String,
        found: String,
        ours: String,
    },
    /// The credentials are for another account than the one the state's
    /// resources are in.
    #[error(
        "the state's resources are in account `{recorded}`, and the credentials are for account `{current}`"
    )]
    OtherAccount { recorded: String, current: String },
}

impl From<OwnershipError> for CommandError {
    fn from(error: OwnershipError) -> CommandError {
        let hint = match &error {
            OwnershipError::Taken { .. } | OwnershipError::Unmarked { .. } => {
                "choose another name in deploy-kit.yaml, or pass `--adopt` to take it over (it is then deleted by `down`)"
            }
            OwnershipError::NotOurs { .. } => {
                "this state file did not make it (another checkout, or a name collision): nothing was deleted; delete it by hand if it is yours, or run `deploy-kit up` first when an older deploy-kit made it untagged"
            }
            OwnershipError::OtherAccount { .. } => {
                "use the credentials (profile) of the account the state was made in: nothing was deleted"
            }
        };
        CommandError::new(error.to_string(), hint, 2)
    }
}

impl Owner {
    /// The owner for `state` of `service`; `adopt` from `up --adopt`.
    pub fn new(service: &str, state: &State, adopt: bool) -> Owner {
        Owner {
            tag: format!(
                "{service}/{}/{}@{}",
                state.environment, state.target, state.id
            ),
            id: state.id.clone(),
            adopt,
            recorded: state
                .resources
                .iter()
                .map(|r| (r.kind.clone(), r.name.clone()))
                .collect(),
        }
    }

    /// This owner with `tag` as what a cloud's label holds (the id on GCP,
    /// the service/environment/target labels on Kubernetes).
    pub fn compared_by(&self, tag: String) -> Owner {
        Owner {
            tag,
            ..self.clone()
        }
    }

    /// The tags a new resource gets.
    pub fn tags(&self) -> [(&'static str, String); 2] {
        [
            (TAG_KEY, self.tag.clone()),
            (MANAGED_BY.0, MANAGED_BY.1.to_string()),
        ]
    }

    /// What `up` may do with an existing `kind` `name` whose tag is `found`.
    pub fn claim(
        &self,
        kind: &str,
        name: &str,
        found: Option<&str>,
    ) -> Result<Claim, OwnershipError> {
        let recorded = self
            .recorded
            .contains(&(kind.to_string(), name.to_string()));
        match found {
            Some(tag) if tag == self.tag => Ok(Claim::Ours),
            _ if self.adopt => Ok(Claim::Take),
            None if recorded => Ok(Claim::Take),
            Some(owner) => Err(OwnershipError::Taken {
                kind: kind.into(),
                name: name.into(),
                owner: owner.into(),
                ours: self.tag.clone(),
            }),
            None => Err(OwnershipError::Unmarked {
                kind: kind.into(),
                name: name.into(),
            }),
        }
    }

    /// Whether `down` may delete `kind` `name` whose tag is `found`.
    pub fn may_delete(
        &self,
        kind: &str,
        name: &str,
        found: Option<&str>,
    ) -> Result<(), OwnershipError> {
        match found {
            Some(tag) if tag == self.tag => Ok(()),
            other => Err(OwnershipError::NotOurs {
                kind: kind.into(),
                name: name.into(),
                found: other.map_or_else(|| "missing".to_string(), |t| format!("`{t}`")),
                ours: self.tag.clone(),
            }),
        }
    }
}

/// A new state id: 8 random bytes in hex.
pub fn new_state_id() -> String {
    let mut bytes = [0u8; 8];
    // The id only tells deployments apart; a clock-based fallback is
    // enough when the random source fails.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes = (nanos as u64).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Resource;

    fn owner(adopt: bool) -> Owner {
        let mut state = State::new("aws", "prod", "lambda");
        state.id = "0011223344556677".into();
        state.resources.push(Resource::new("role", "svc-role"));
        Owner::new("svc", &state, adopt)
    }

    #[test]
    fn the_tag_names_the_deployment_and_its_state() {
        assert_eq!(owner(false).tag, "svc/prod/lambda@0011223344556677");
    }

    #[test]
    fn up_takes_only_its_own_resources_unless_adopting() {
        let ours = owner(false);
        let tag = ours.tag.clone();
        assert_eq!(ours.claim("bucket", "b", Some(&tag)), Ok(Claim::Ours));
        // Recorded in the state but made before tags: tagged now.
        assert_eq!(ours.claim("role", "svc-role", None), Ok(Claim::Take));
        let taken = ours
            .claim("bucket", "b", Some("other/prod/lambda@99"))
            .unwrap_err();
        assert!(
            taken
                .to_string()
                .contains("belongs to deployment `other/prod/lambda@99`"),
            "{taken}"
        );
        let unmarked = ours.claim("bucket", "b", None).unwrap_err();
        assert_eq!(
            unmarked,
            OwnershipError::Unmarked {
                kind: "bucket".into(),
                name: "b".into()
            }
        );
        let error = CommandError::from(unmarked);
        assert!(error.hint.contains("--adopt"), "{}", error.hint);
        assert_eq!(error.exit_code, 2);
        let adopting = owner(true);
        assert_eq!(adopting.claim("bucket", "b", None), Ok(Claim::Take));
        assert_eq!(
            adopting.claim("bucket", "b", Some("other@1")),
            Ok(Claim::Take)
        );
    }

    #[test]
    fn down_deletes_only_what_carries_its_tag() {
        let ours = owner(false);
        assert_eq!(
            ours.may_delete("bucket", "b", Some(&ours.tag.clone())),
            Ok(())
        );
        let error = ours.may_delete("role", "svc-role", None).unwrap_err();
        assert!(error.to_string().contains("tag is missing"), "{error}");
        let error = ours.may_delete("role", "r", Some("x/y/z@1")).unwrap_err();
        assert!(error.to_string().contains("is `x/y/z@1`"), "{error}");
        assert!(
            CommandError::from(error)
                .hint
                .contains("nothing was deleted")
        );
    }

    #[test]
    fn state_ids_differ() {
        let (a, b) = (new_state_id(), new_state_id());
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
    }
}
