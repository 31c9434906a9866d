//! The compiled journey: the immutable, executable form of one journey version, as the runtime walks it.
//!
//! It owns the model: [`Journey`] and its [`Node`]s (indexed by [`NodeIx`]), the [`ActionKind`]s with their
//! checked parameters, action [`Target`]s, [`WaitSpec`], [`ListenFor`] and [`AccountEvent`], and the
//! validation [`Problem`]. A [`Journey`] is only ever built by [`compile_journey`] (in `journey/compile.rs`,
//! which owns every publish-time rule), so holding one means the document was valid. It never validates and
//! never executes: executing a journey is `account`'s and `runtime`'s work. Compiled journeys are immutable
//! and shared by every worker thread (`Send + Sync`, checked below).
//!
//! ```
//! use caravan_operators::journey::compile_journey;
//! let doc = caravan_schemas::definition::read_document(r#"
//! kind: journey
//! tenant: acme
//! id: hello
//! version: 1
//! audience: target
//! start: mail
//! nodes:
//!   mail: {action: {send_email: {asset: welcome}}}
//! "#).unwrap();
//! let journey = compile_journey(&doc).unwrap();
//! assert_eq!(journey.node_name(journey.start), "mail");
//! ```

use crate::condition::{Condition, Fact};
use caravan_schemas::Id;
use caravan_schemas::definition::Reentry;
use caravan_schemas::time::Timestamp;
use serde_json::Value;
use std::fmt;

mod compile;

pub use compile::compile_journey;
pub(crate) use compile::valid_journey_id;

/// Index of a node in [`Journey::nodes`].
pub type NodeIx = usize;

/// One validation problem: where it is and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The node, when the problem is inside one.
    pub node: Option<String>,
    /// The path inside the document, e.g. `nodes.size.split_accounts[0].when`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.node {
            Some(n) => write!(f, "node `{n}` at {}: {}", self.path, self.message),
            None => write!(f, "at {}: {}", self.path, self.message),
        }
    }
}

/// An action kind with its checked parameters.
#[derive(Clone, Debug, PartialEq)]
pub enum ActionKind {
    /// Email an asset to each targeted person.
    SendEmail,
    /// Text an asset to each targeted person.
    SendSms,
    /// Set one attribute of each targeted person.
    SetPersonAttribute {
        /// The attribute.
        field: String,
        /// Its new value (`null` removes it).
        value: Value,
    },
    /// Add to a numeric attribute of each targeted person (missing or non-numeric starts from 0).
    ChangePersonScore {
        /// The attribute.
        field: String,
        /// How much to add.
        by: serde_json::Number,
    },
    /// Put each targeted person on a list.
    AddToList {
        /// The list.
        list: String,
    },
    /// Take each targeted person off a list.
    RemoveFromList {
        /// The list.
        list: String,
    },
    /// Set one account attribute.
    SetAccountAttribute {
        /// The attribute.
        field: String,
        /// Its new value (`null` removes it).
        value: Value,
    },
    /// Alert someone about the account.
    SendAlert,
    /// Put the account on a list.
    AddAccountToList {
        /// The list.
        list: String,
    },
    /// Take the account off a list.
    RemoveAccountFromList {
        /// The list.
        list: String,
    },
    /// Move the account's buying group of a solution to a stage.
    SetBuyingGroupStage {
        /// The solution interest.
        solution: String,
        /// The stage.
        stage: String,
    },
    /// Re-evaluate the account's buying group of a solution now.
    ReassessBuyingGroup {
        /// The solution interest.
        solution: String,
    },
}

impl ActionKind {
    /// The action type as written in action records.
    pub fn type_name(&self) -> &'static str {
        match self {
            ActionKind::SendEmail => "send_email",
            ActionKind::SendSms => "send_sms",
            ActionKind::SetPersonAttribute { .. } => "set_person_attribute",
            ActionKind::ChangePersonScore { .. } => "change_person_score",
            ActionKind::AddToList { .. } => "add_to_list",
            ActionKind::RemoveFromList { .. } => "remove_from_list",
            ActionKind::SetAccountAttribute { .. } => "set_account_attribute",
            ActionKind::SendAlert => "send_alert",
            ActionKind::AddAccountToList { .. } => "add_account_to_list",
            ActionKind::RemoveAccountFromList { .. } => "remove_account_from_list",
            ActionKind::SetBuyingGroupStage { .. } => "set_buying_group_stage",
            ActionKind::ReassessBuyingGroup { .. } => "reassess_buying_group",
        }
    }

    /// Whether the action goes to people (one record per targeted person) rather than to the account.
    pub fn is_person_action(&self) -> bool {
        matches!(
            self,
            ActionKind::SendEmail
                | ActionKind::SendSms
                | ActionKind::SetPersonAttribute { .. }
                | ActionKind::ChangePersonScore { .. }
                | ActionKind::AddToList { .. }
                | ActionKind::RemoveFromList { .. }
        )
    }
}

/// Which people of the account a person action goes to.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// Every person (of the account, or of the `split_people` path the action is on).
    All,
    /// The people holding a role in the account's buying group of a solution.
    Role {
        /// The role.
        role: String,
        /// The solution interest.
        solution: String,
    },
    /// The people for whom a person condition holds.
    Where(Condition),
}

/// When a `wait` ends.
#[derive(Clone, Debug, PartialEq)]
pub enum WaitSpec {
    /// A duration after the cause that brought the account to the node.
    For(i64),
    /// An instant.
    Until(Timestamp),
}

/// The account events a `listen` can wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountEvent {
    /// The account left an audience (`audience_id`).
    AudienceExited,
    /// One of its opportunities changed (`opportunity_id`, `op`, `after`).
    OpportunityChanged,
    /// A buying group changed stage (`solution`, `stage`, `previous_stage`).
    BuyingGroupStageChanged,
}

impl AccountEvent {
    fn parse(name: &str) -> Option<AccountEvent> {
        match name {
            "audience.exited" => Some(AccountEvent::AudienceExited),
            "opportunity.changed" => Some(AccountEvent::OpportunityChanged),
            "buying_group.stage_changed" => Some(AccountEvent::BuyingGroupStageChanged),
            _ => None,
        }
    }
}

/// What a `listen` waits for.
#[derive(Clone, Debug, PartialEq)]
pub enum ListenFor {
    /// An activity of this kind by any person of the account.
    Activity(String),
    /// An account event.
    Account(AccountEvent),
}

/// One executable node.
#[derive(Clone, Debug)]
pub enum Node {
    /// Run an action, then go on.
    Action {
        /// What to do.
        kind: ActionKind,
        /// The parameters as written (without `to`), for the action record.
        params: Value,
        /// Who gets a person action.
        to: Target,
        /// Next node; `None` exits.
        next: Option<NodeIx>,
    },
    /// The account takes the first path whose condition holds.
    SplitAccounts {
        /// Ordered paths.
        paths: Vec<(Condition, NodeIx)>,
        /// Where the rest go; `None` exits.
        otherwise: Option<NodeIx>,
    },
    /// Each person takes the first path whose condition holds; the account waits at the merge.
    SplitPeople {
        /// Ordered paths: a person condition and the path's first node (the merge for an empty path).
        paths: Vec<(Condition, NodeIx)>,
        /// Where the rest go; `None`: they wait at the merge.
        otherwise: Option<NodeIx>,
        /// The `merge` every path ends in.
        merge: NodeIx,
    },
    /// Where the paths of a `split_people` meet; the account goes on once every path arrived.
    Merge {
        /// Next node.
        next: Option<NodeIx>,
    },
    /// Wait for an activity of any person of the account, or an account event.
    Listen {
        /// What to wait for.
        what: ListenFor,
        /// Optional condition over `event`.
        condition: Option<Condition>,
        /// How long to wait; `None` waits forever.
        timeout: Option<i64>,
        /// On the event.
        next: Option<NodeIx>,
        /// On timeout.
        on_timeout: Option<NodeIx>,
    },
    /// Wait, then go on.
    Wait {
        /// How long.
        spec: WaitSpec,
        /// Next node.
        next: Option<NodeIx>,
    },
    /// Leave the journey.
    Exit,
}

impl Node {
    /// The conditions of the node, for what they read.
    fn conditions(&self) -> Vec<&Condition> {
        match self {
            Node::Action { to: Target::Where(c), .. } => vec![c],
            Node::SplitAccounts { paths, .. } | Node::SplitPeople { paths, .. } => {
                paths.iter().map(|(c, _)| c).collect()
            }
            Node::Listen { condition: Some(c), .. } => vec![c],
            _ => Vec::new(),
        }
    }
}

/// A validated, compiled journey version: immutable once built.
#[derive(Clone, Debug)]
pub struct Journey {
    /// The owning tenant.
    pub tenant: String,
    /// The journey id.
    pub id: String,
    /// The version.
    pub version: u32,
    /// Entry audience.
    pub audience: String,
    /// Re-entry rule.
    pub reentry: Reentry,
    /// End instances on audience exit.
    pub exit_on_audience_exit: bool,
    /// The first node.
    pub start: NodeIx,
    /// Nodes, by index.
    pub nodes: Vec<Node>,
    names: Vec<String>,
    /// The document as published, to tell identical re-publications apart.
    pub document: Value,
}

impl Journey {
    /// The id of a node.
    pub fn node_name(&self, ix: NodeIx) -> &str {
        &self.names[ix]
    }

    /// The index of a node id.
    pub fn node_index(&self, name: &str) -> Option<NodeIx> {
        self.names.iter().position(|n| n == name)
    }

    /// Every `activity(kind, window)` its conditions read: the activity history the engine must keep.
    pub fn activity_windows(&self) -> Vec<(Id, i64)> {
        let mut out: Vec<(Id, i64)> = Vec::new();
        for node in &self.nodes {
            for c in node.conditions() {
                for f in c.facts() {
                    if let Fact::Activity(kind, window) = f {
                        out.push((kind.clone(), *window));
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// Compiled journeys are shared by every worker thread.
const _: () = {
    const fn shared_between_threads<T: Send + Sync>() {}
    shared_between_threads::<Journey>();
};

/// The reference journey of the benchmark, for tests. The crate's folder is read when the test runs (cargo
/// sets it): a test binary built in another checkout that shares the target folder must not read that one.
#[cfg(test)]
pub(crate) fn reference_journey_path() -> std::path::PathBuf {
    std::path::PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned()),
    )
    .join("../benches/b2b-journey-v1/journey.yaml")
}
