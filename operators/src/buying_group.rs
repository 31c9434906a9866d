//! Buying groups (SPEC §3.3): template validation and compilation, and the groups of one account.
//!
//! It owns the template rules (roles in order, one per person; completeness over required roles; engagement
//! as the weighted count of members' activities inside the window; stages advancing to the furthest one that
//! holds, never back except by `set_buying_group_stage`) and their evaluation on [`AccountState`]. Only the
//! stage is stored (`GroupRecord`) with each person's role (`PersonRecord::roles`); members, completeness and
//! engagement are derived whenever they are read, from the people present now and their activity history at
//! the time of the cause, so activities age out of the window lazily and exactly. It is pure, and it never
//! emits change events: buying group data stays internal (SPEC §1).

use crate::account::{AccountState, Definitions};
use crate::condition::{Condition, Fact, Scope, Var};
use crate::journey::AccountEvent;
use crate::journey::Problem;
use crate::runtime::{AccountEventValue, Env};
use caravan_schemas::Id;
use caravan_schemas::definition::TemplateDoc;
use caravan_schemas::input::is_activity_kind;
use caravan_schemas::state::GroupRecord;
use caravan_schemas::time::{Timestamp, parse_duration};
use serde_json::{Map, Value, json};

/// One role of a template.
#[derive(Clone, Debug)]
pub struct Role {
    /// The role's name.
    pub name: Id,
    /// Who holds it.
    pub when: Condition,
    /// Counted by completeness.
    pub required: bool,
}

/// One stage of a template.
#[derive(Clone, Debug)]
pub struct Stage {
    /// The stage's name.
    pub name: Id,
    /// When it holds; `None` always holds.
    pub when: Option<Condition>,
}

/// A validated, compiled buying group template version.
#[derive(Clone, Debug)]
pub struct Template {
    /// The owning tenant.
    pub tenant: String,
    /// The template id.
    pub id: String,
    /// The version.
    pub version: u32,
    /// The solution interest.
    pub solution: Id,
    /// Roles in order.
    pub roles: Vec<Role>,
    /// Engagement window, nanoseconds.
    pub window: i64,
    /// Whether a role condition reads more than the person (the account, opportunities, activity counts):
    /// then an account change or an activity re-assigns roles.
    pub roles_read_account: bool,
    /// Whether a role condition counts activities.
    pub roles_read_activity: bool,
    /// Whether a stage condition reads more than the group (the account, opportunities, activity counts).
    pub stages_read_account: bool,
    /// Whether a stage condition reads the group's `members` (a costly part of its value).
    pub stages_read_members: bool,
    /// Weight per activity kind.
    pub weights: Vec<(Id, f64)>,
    /// Stages in order; the first is the initial one.
    pub stages: Vec<Stage>,
    /// The document as published.
    pub document: Value,
}

/// The problems of a template's list of roles or stages by name: empty list, empty or repeated names.
fn name_problems(names: &[&str], list: &str, what: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if names.is_empty() {
        out.push((list.to_owned(), format!("a template needs at least one {what}")));
    }
    for (i, name) in names.iter().enumerate() {
        if name.is_empty() {
            out.push((format!("{list}[{i}].{what}"), "must be a non-empty name".to_owned()));
        }
        if names[..i].contains(name) {
            out.push((format!("{list}[{i}].{what}"), format!("{what} `{name}` is listed twice")));
        }
    }
    out
}

/// Validates and compiles a template document.
///
/// # Errors
/// Every problem found, each with its path.
pub fn compile_template(doc: &Value) -> Result<Template, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut add = |path: String, message: String| problems.push(Problem { node: None, path, message });
    let td: TemplateDoc = match serde_json::from_value(doc.clone()) {
        Ok(t) => t,
        Err(e) => {
            add("$".into(), format!("not a buying group template: {e}"));
            return Err(problems);
        }
    };
    if td.kind != "buying_group_template" {
        add("kind".into(), format!("expected `buying_group_template`, found `{}`", td.kind));
    }
    if !crate::journey::valid_journey_id(&td.id) {
        add("id".into(), format!("`{}` does not match [a-z0-9][a-z0-9-]{{0,63}}", td.id));
    }
    if td.version == 0 {
        add("version".into(), "must be 1 or more".into());
    }
    if td.tenant.is_empty() || td.tenant.chars().any(char::is_control) {
        add("tenant".into(), "must be a non-empty id without control characters".into());
    }
    if td.solution_interest.is_empty() || td.solution_interest.chars().any(char::is_control) {
        add("solution_interest".into(), "must be a non-empty name without control characters".into());
    }
    let mut roles = Vec::new();
    let role_names: Vec<&str> = td.roles.iter().map(|r| r.role.as_str()).collect();
    for (path, message) in name_problems(&role_names, "roles", "role") {
        add(path, message);
    }
    for (i, r) in td.roles.iter().enumerate() {
        match Condition::compile(&r.when, Scope::Person) {
            Ok(c) => roles.push(Role { name: Id::from(r.role.as_str()), when: c, required: r.required }),
            Err(errs) => errs.into_iter().for_each(|e| add(format!("roles[{i}].when"), e)),
        }
    }
    let window = match parse_duration(&td.engagement.window) {
        Ok(w) if w > 0 => w,
        Ok(_) => {
            add("engagement.window".into(), "must be longer than zero".into());
            0
        }
        Err(e) => {
            add("engagement.window".into(), e.to_string());
            0
        }
    };
    let mut weights = Vec::new();
    for (kind, w) in &td.engagement.weights {
        if !is_activity_kind(kind) {
            add(format!("engagement.weights.{kind}"), format!("`{kind}` is not an activity kind"));
        } else if !w.is_finite() || *w < 0.0 {
            add(format!("engagement.weights.{kind}"), "must be a number of 0 or more".into());
        } else {
            weights.push((Id::from(kind.as_str()), *w));
        }
    }
    let mut stages = Vec::new();
    let stage_names: Vec<&str> = td.stages.iter().map(|s| s.stage.as_str()).collect();
    for (path, message) in name_problems(&stage_names, "stages", "stage") {
        add(path, message);
    }
    for (i, st) in td.stages.iter().enumerate() {
        let when = match &st.when {
            Some(w) if i == 0 => {
                add(format!("stages[{i}].when"), format!("the first stage is the initial one: `{w}` never applies"));
                None
            }
            Some(w) => match Condition::compile(w, Scope::Group) {
                Ok(c) => Some(c),
                Err(errs) => {
                    errs.into_iter().for_each(|e| add(format!("stages[{i}].when"), e));
                    None
                }
            },
            None => None,
        };
        stages.push(Stage { name: Id::from(st.stage.as_str()), when });
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let roles_read_account = roles
        .iter()
        .any(|r| r.when.reads(Var::Account) || r.when.reads(Var::Opportunities) || !r.when.facts().is_empty());
    let roles_read_activity = roles.iter().any(|r| r.when.facts().iter().any(|f| matches!(f, Fact::Activity(..))));
    let stages_read_account = stages
        .iter()
        .filter_map(|s| s.when.as_ref())
        .any(|c| c.reads(Var::Account) || c.reads(Var::Opportunities) || !c.facts().is_empty());
    let stages_read_members =
        stages.iter().filter_map(|s| s.when.as_ref()).any(|c| c.reads_field(Var::Group, "members"));
    Ok(Template {
        stages_read_members,
        stages_read_account,
        roles_read_account,
        roles_read_activity,
        tenant: td.tenant,
        id: td.id,
        version: td.version,
        solution: Id::from(td.solution_interest),
        roles,
        window,
        weights,
        stages,
        document: doc.clone(),
    })
}

/// What a record changed, which decides whose roles an evaluation recomputes and whether stages can move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Recompute<'a> {
    /// An activity of this person of this kind: engagement may change (only if the person is a member and
    /// the kind weighs), roles only where role conditions count activities.
    Activity(usize, &'a str),
    /// The account, its audiences or opportunities changed: roles only where role conditions read them.
    Account,
    /// One person (upserted, joined, moved in).
    Person(usize),
    /// Everyone (the account changed; a template changed; `reassess_buying_group`).
    Everyone,
}

/// The role a person holds in a group, if any.
pub(crate) fn role_of(acct: &AccountState, ix: usize, solution: &str) -> Option<Id> {
    let p = &acct.persons[ix].record;
    if !p.present {
        return None;
    }
    p.roles().iter().find(|(s, _)| s == solution).map(|(_, r)| r.clone())
}

/// A group's `completeness` (share of required roles with a member; 1.0 without required roles).
fn completeness(t: &Template, acct: &AccountState) -> f64 {
    let required: Vec<&Role> = t.roles.iter().filter(|r| r.required).collect();
    if required.is_empty() {
        return 1.0;
    }
    let filled = required
        .iter()
        .filter(|r| (0..acct.persons.len()).any(|ix| role_of(acct, ix, &t.solution).is_some_and(|x| x == r.name)))
        .count();
    filled as f64 / required.len() as f64
}

/// A group's `engagement` at `now`: members' weighted activities with `ts >= now - window`.
fn engagement(t: &Template, acct: &AccountState, now: Timestamp) -> f64 {
    let since = now.0.saturating_sub(t.window);
    let mut total = 0.0;
    for ix in 0..acct.persons.len() {
        if role_of(acct, ix, &t.solution).is_none() {
            continue;
        }
        for (kind, w) in &t.weights {
            let history = acct.persons[ix].record.activity().iter().find(|h| h.kind == *kind);
            total += w * history.map_or(0, |h| h.count_since(since)) as f64;
        }
    }
    total
}

/// The `buying_group(solution)` value at `now`: `completeness`, `engagement`, `stage`, `members` (`{id, role}`), or
/// null where no template exists or the account has no group.
pub fn group_value(defs: &Definitions, acct: &AccountState, solution: &str, now: Timestamp) -> Value {
    value_of(defs, acct, solution, now, true)
}

/// The group's value, with `members` only when asked for (stage conditions rarely read it, and building it is
/// a large part of the cost of evaluating a stage).
fn value_of(defs: &Definitions, acct: &AccountState, solution: &str, now: Timestamp, members: bool) -> Value {
    let (Some(t), Some(g)) =
        (defs.template(&acct.tenant, solution), acct.record.groups.iter().find(|g| g.solution == solution))
    else {
        return Value::Null;
    };
    let mut m = Map::new();
    m.insert("completeness".into(), json!(completeness(t, acct)));
    m.insert("engagement".into(), json!(engagement(t, acct, now)));
    m.insert("stage".into(), Value::String(g.stage.to_string()));
    if members {
        let members: Vec<Value> = (0..acct.persons.len())
            .filter_map(|ix| {
                let r = role_of(acct, ix, solution)?;
                Some(json!({"id": acct.persons[ix].record.person_id.as_str(), "role": r.as_str()}))
            })
            .collect();
        m.insert("members".into(), Value::Array(members));
    }
    Value::Object(m)
}

fn stage_event(solution: &str, stage: &str, previous: &str) -> AccountEventValue {
    let mut m = Map::new();
    m.insert("solution".into(), Value::String(solution.to_owned()));
    m.insert("stage".into(), Value::String(stage.to_owned()));
    m.insert("previous_stage".into(), Value::String(previous.to_owned()));
    AccountEventValue { kind: AccountEvent::BuyingGroupStageChanged, value: Value::Object(m) }
}

/// Re-evaluates the account's groups after an input record (or `reassess_buying_group` for one solution):
/// roles as `who` says, groups created or dropped with the account's people, stages advanced. Returns the
/// stage changes, as account events for listens.
pub(crate) fn evaluate(
    defs: &Definitions,
    acct: &mut AccountState,
    now: Timestamp,
    who: Recompute<'_>,
    only: Option<&str>,
) -> Vec<AccountEventValue> {
    let mut events = Vec::new();
    let tenant = acct.tenant.clone();
    for t in defs.templates_for(&tenant) {
        if only.is_some_and(|s| s != t.solution) {
            continue;
        }
        let at = acct.record.groups.binary_search_by(|g| g.solution.as_str().cmp(&t.solution));
        if !acct.persons.iter().any(|p| p.record.present) {
            if let Ok(i) = at {
                acct.record.groups.remove(i);
                acct.record_dirty = true;
            }
            continue;
        }
        let stale = match at {
            Ok(i) => acct.record.groups[i].template_version != t.version,
            Err(_) => true,
        };
        let who = if stale { Recompute::Everyone } else { who };
        let people: Vec<usize> = match who {
            Recompute::Activity(ix, _) if t.roles_read_activity => vec![ix],
            Recompute::Activity(..) => Vec::new(),
            Recompute::Account if t.roles_read_account => (0..acct.persons.len()).collect(),
            Recompute::Account => Vec::new(),
            Recompute::Person(ix) => vec![ix],
            Recompute::Everyone => (0..acct.persons.len()).collect(),
        };
        let mut roles_changed = false;
        for ix in people {
            roles_changed |= assign_role(defs, acct, t, ix, now);
        }
        let i = match at {
            Ok(i) => {
                if stale {
                    acct.record.groups[i].template_version = t.version;
                    acct.record_dirty = true;
                }
                i
            }
            Err(i) => {
                // A group starts at the first stage, without an event, and may advance at once.
                let first = t.stages.first().map_or_else(Id::default, |s| s.name.clone());
                let g = GroupRecord { solution: t.solution.clone(), template_version: t.version, stage: first };
                acct.record.groups.insert(i, g);
                acct.record_dirty = true;
                i
            }
        };
        let current = t.stages.iter().position(|s| s.name == acct.record.groups[i].stage).unwrap_or(0);
        // Stages never go back by themselves: at the last one there is nothing to evaluate. Otherwise a stage
        // can move only if something it reads changed: the group is new or its roles changed, a member's
        // weighted activity changed engagement, or the account changed and a stage reads it.
        let may_move = stale
            || roles_changed
            || match who {
                Recompute::Activity(ix, kind) => {
                    role_of(acct, ix, &t.solution).is_some() && t.weights.iter().any(|(k, w)| k == kind && *w > 0.0)
                }
                Recompute::Account => t.stages_read_account,
                Recompute::Person(_) => false,
                Recompute::Everyone => true,
            };
        if current + 1 >= t.stages.len() || !may_move {
            continue;
        }
        let value = value_of(defs, acct, &t.solution, now, t.stages_read_members);
        let mut env = Env::new(defs, acct, now);
        env.group = Some(&value);
        let furthest =
            (current + 1..t.stages.len()).rev().find(|&k| t.stages[k].when.as_ref().is_none_or(|c| c.eval(&env)));
        if let Some(k) = furthest {
            let previous = std::mem::replace(&mut acct.record.groups[i].stage, t.stages[k].name.clone());
            acct.record_dirty = true;
            events.push(stage_event(&t.solution, &t.stages[k].name, &previous));
        }
    }
    events
}

/// Assigns a person's role in one group; returns whether it changed.
fn assign_role(defs: &Definitions, acct: &mut AccountState, t: &Template, ix: usize, now: Timestamp) -> bool {
    let role = if acct.persons[ix].record.present {
        let mut env = Env::new(defs, acct, now);
        env.person = Some(ix);
        t.roles.iter().find(|r| r.when.eval(&env)).map(|r| r.name.clone())
    } else {
        None
    };
    let current = acct.persons[ix].record.roles().iter().find(|(s, _)| *s == t.solution).map(|(_, r)| r);
    if current == role.as_ref() {
        return false;
    }
    let roles = &mut acct.persons[ix].record.extra_mut().roles;
    let at = roles.binary_search_by(|(s, _)| s.as_str().cmp(&t.solution));
    let changed = match (at, role) {
        (Ok(i), Some(r)) if roles[i].1 != r => {
            roles[i].1 = r;
            true
        }
        (Ok(i), None) => {
            roles.remove(i);
            true
        }
        (Err(i), Some(r)) => {
            roles.insert(i, (t.solution.clone(), r));
            true
        }
        _ => false,
    };
    if changed {
        acct.mark_person(ix);
    }
    changed
}

/// `set_buying_group_stage`: moves a group to a stage of its template (back too). Returns the stage change.
pub(crate) fn set_stage(
    defs: &Definitions,
    acct: &mut AccountState,
    solution: &str,
    stage: &str,
) -> Option<AccountEventValue> {
    let t = defs.template(&acct.tenant, solution)?;
    if !t.stages.iter().any(|s| s.name == stage) {
        return None;
    }
    let g = acct.record.groups.iter_mut().find(|g| g.solution == solution)?;
    if g.stage == stage {
        return None;
    }
    let previous = std::mem::replace(&mut g.stage, Id::from(stage));
    acct.record_dirty = true;
    Some(stage_event(solution, stage, &previous))
}
