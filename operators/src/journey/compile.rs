//! Journey validation and compilation: from a document to an immutable, executable [`Journey`].
//!
//! It owns every publish-time rule of SPEC §3.1 and §7 that this version supports: one kind per node, known
//! `next` targets, a reachable, acyclic graph from `start`, known action types with their parameters, durations,
//! and conditions that compile. Validation is all or nothing and reports every problem with its node id and
//! path. It is not the model (the types it builds are `journey`'s, re-exported from there with
//! [`compile_journey`]) and not the runtime: executing a journey is `account`'s work.

use super::{AccountEvent, ActionKind, Journey, ListenFor, Node, NodeIx, Problem, Target, WaitSpec};
use crate::condition::{Condition, Scope};
use caravan_schemas::definition::{ACCOUNT_EVENTS, JourneyDoc, NodeDoc, WaitDoc};
use caravan_schemas::input::is_activity_kind;
use caravan_schemas::time::{Timestamp, parse_duration};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn add(&mut self, node: Option<&str>, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { node: node.map(str::to_owned), path: path.into(), message: message.into() });
    }
}

/// Whether an id matches `[a-z0-9][a-z0-9-]{0,63}` (journeys and buying group templates).
pub(crate) fn valid_journey_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Validates and compiles a journey document.
///
/// # Errors
/// Every problem found, each with its node id and path.
pub fn compile_journey(doc: &Value) -> Result<Journey, Vec<Problem>> {
    let mut ck = Checker { problems: Vec::new() };
    let jd: JourneyDoc = match serde_json::from_value(doc.clone()) {
        Ok(j) => j,
        Err(e) => {
            ck.add(None, "$", format!("not a journey document: {e}"));
            return Err(ck.problems);
        }
    };
    if jd.kind != "journey" {
        ck.add(None, "kind", format!("expected `journey`, found `{}`", jd.kind));
    }
    if !valid_journey_id(&jd.id) {
        ck.add(None, "id", format!("`{}` does not match [a-z0-9][a-z0-9-]{{0,63}}", jd.id));
    }
    if jd.version == 0 {
        ck.add(None, "version", "must be 1 or more");
    }
    if jd.tenant.is_empty() || jd.tenant.chars().any(char::is_control) {
        ck.add(None, "tenant", "must be a non-empty id without control characters");
    }
    let names: Vec<String> = jd.nodes.keys().cloned().collect();
    let index: BTreeMap<&str, NodeIx> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    let start = match index.get(jd.start.as_str()) {
        Some(&ix) => ix,
        None => {
            ck.add(None, "start", format!("names no node: `{}`", jd.start));
            0
        }
    };
    let mut nodes = Vec::with_capacity(names.len());
    for (name, raw) in &jd.nodes {
        nodes.push(compile_node(&mut ck, name, raw, &index));
    }
    // The graph is checked on the targets as written, so that its problems are reported beside the nodes'.
    let edges: Vec<Vec<NodeIx>> = jd.nodes.values().map(|raw| written_targets(raw, &index)).collect();
    let acyclic =
        if index.contains_key(jd.start.as_str()) { check_graph(&mut ck, &names, &edges, start) } else { false };
    if acyclic {
        check_people_paths(&mut ck, &names, &mut nodes, &edges);
    }
    if !ck.problems.is_empty() {
        return Err(ck.problems);
    }
    let nodes: Vec<Node> = nodes.into_iter().map(|n| n.unwrap_or(Node::Exit)).collect();
    Ok(Journey {
        tenant: jd.tenant,
        id: jd.id,
        version: jd.version,
        audience: jd.audience,
        reentry: jd.reentry,
        exit_on_audience_exit: jd.exit_on_audience_exit,
        start,
        nodes,
        names,
        document: doc.clone(),
    })
}

/// The node targets a node's document names (`next`, `on_timeout`, `otherwise`, paths), known ones only.
fn written_targets(raw: &Value, index: &BTreeMap<&str, NodeIx>) -> Vec<NodeIx> {
    let mut names: Vec<&str> = Vec::new();
    for key in ["next", "on_timeout", "otherwise"] {
        if let Some(n) = raw.get(key).and_then(Value::as_str) {
            names.push(n);
        }
    }
    for key in ["split_accounts", "split_people"] {
        for path in raw.get(key).and_then(Value::as_array).into_iter().flatten() {
            if let Some(n) = path.get("next").and_then(Value::as_str) {
                names.push(n);
            }
        }
    }
    names.into_iter().filter_map(|n| index.get(n).copied()).collect()
}

/// Checks reachability and cycles; returns whether the graph is acyclic.
fn check_graph(ck: &mut Checker, names: &[String], edges: &[Vec<NodeIx>], start: NodeIx) -> bool {
    let before = ck.problems.len();
    // Reachability from start.
    let mut seen = vec![false; edges.len()];
    let mut stack = vec![start];
    while let Some(n) = stack.pop() {
        if !std::mem::replace(&mut seen[n], true) {
            stack.extend(edges[n].iter().copied());
        }
    }
    for (i, reached) in seen.iter().enumerate() {
        if !reached {
            ck.add(Some(&names[i]), format!("nodes.{}", names[i]), "unreachable from `start`");
        }
    }
    // Cycles: depth-first colouring over every node.
    let mut colour = vec![0u8; edges.len()]; // 0 new, 1 on the stack, 2 done
    for root in 0..edges.len() {
        if colour[root] != 0 {
            continue;
        }
        let mut stack: Vec<(NodeIx, usize)> = vec![(root, 0)];
        colour[root] = 1;
        while let Some(&mut (n, ref mut k)) = stack.last_mut() {
            if *k < edges[n].len() {
                let m = edges[n][*k];
                *k += 1;
                match colour[m] {
                    0 => {
                        colour[m] = 1;
                        stack.push((m, 0));
                    }
                    1 => {
                        let cycle_from = stack.iter().position(|(x, _)| *x == m).unwrap_or(0);
                        let path: Vec<&str> = stack[cycle_from..].iter().map(|(x, _)| names[*x].as_str()).collect();
                        ck.add(
                            Some(&names[n]),
                            format!("nodes.{}", names[n]),
                            format!("cycle: {} -> {} (journeys are acyclic)", path.join(" -> "), names[m]),
                        );
                    }
                    _ => {}
                }
            } else {
                colour[n] = 2;
                stack.pop();
            }
        }
    }
    !ck.problems[before..].iter().any(|p| p.message.starts_with("cycle"))
}

/// The rules of `split_people` (SPEC §3.1, §7): every path holds only person actions and waits and ends in
/// one `merge`; every `merge` closes exactly one split; nothing outside a split's paths leads into them.
/// Fills in each split's merge. Runs on an acyclic graph, so every walk ends.
fn check_people_paths(ck: &mut Checker, names: &[String], nodes: &mut [Option<Node>], edges: &[Vec<NodeIx>]) {
    let mut closed_by: Vec<Vec<NodeIx>> = vec![Vec::new(); nodes.len()];
    let mut owner: Vec<Option<NodeIx>> = vec![None; nodes.len()];
    for s in 0..nodes.len() {
        let Some(Node::SplitPeople { paths, otherwise, .. }) = &nodes[s] else { continue };
        let starts: Vec<NodeIx> = paths.iter().map(|(_, t)| *t).chain(*otherwise).collect();
        let mut merges: Vec<NodeIx> = Vec::new();
        for first in starts {
            let mut at = Some(first);
            while let Some(n) = at {
                match &nodes[n] {
                    Some(Node::Merge { .. }) => {
                        merges.push(n);
                        break;
                    }
                    Some(Node::Action { kind, next, .. }) if kind.is_person_action() => {
                        owner[n] = Some(s);
                        at = *next;
                    }
                    Some(Node::Wait { next, .. }) => {
                        owner[n] = Some(s);
                        at = *next;
                    }
                    Some(_) => {
                        ck.add(
                            Some(&names[n]),
                            format!("nodes.{}", names[n]),
                            format!(
                                "is on a people path of `{}`: people paths hold only person actions and waits",
                                names[s]
                            ),
                        );
                        break;
                    }
                    None => break,
                }
                if at.is_none() {
                    ck.add(
                        Some(&names[n]),
                        format!("nodes.{}.next", names[n]),
                        format!("a people path of `{}` must end in its merge", names[s]),
                    );
                }
            }
        }
        merges.sort_unstable();
        merges.dedup();
        match merges.as_slice() {
            [m] => {
                closed_by[*m].push(s);
                if let Some(Node::SplitPeople { merge, .. }) = &mut nodes[s] {
                    *merge = *m;
                }
            }
            [] => {}
            many => {
                let list: Vec<&str> = many.iter().map(|m| names[*m].as_str()).collect();
                ck.add(
                    Some(&names[s]),
                    format!("nodes.{}.split_people", names[s]),
                    format!("all paths must end in the same merge, found {}", list.join(", ")),
                );
            }
        }
    }
    for (m, splits) in closed_by.iter().enumerate() {
        if matches!(nodes[m], Some(Node::Merge { .. })) && splits.len() != 1 {
            let which: Vec<&str> = splits.iter().map(|s| names[*s].as_str()).collect();
            ck.add(
                Some(&names[m]),
                format!("nodes.{}", names[m]),
                format!(
                    "a merge closes exactly one split_people, this one closes {} ({})",
                    splits.len(),
                    which.join(", ")
                ),
            );
        }
    }
    // Nothing leads into a split's paths or its merge from outside them.
    for (from, targets) in edges.iter().enumerate() {
        for &to in targets {
            let inside = |split: NodeIx| from == split || owner[from] == Some(split);
            let into_path = owner[to].is_some_and(|s| !inside(s));
            let into_merge = closed_by[to].first().is_some_and(|&s| !inside(s));
            if into_path || into_merge {
                ck.add(
                    Some(&names[from]),
                    format!("nodes.{}", names[from]),
                    format!("leads into `{}`, which only its split_people's paths may reach", names[to]),
                );
            }
        }
    }
}

fn target(ck: &mut Checker, node: &str, path: String, name: &str, index: &BTreeMap<&str, NodeIx>) -> Option<NodeIx> {
    match index.get(name) {
        Some(&ix) => Some(ix),
        None => {
            ck.add(Some(node), path, format!("names no node: `{name}`"));
            None
        }
    }
}

fn compile_node(ck: &mut Checker, name: &str, raw: &Value, index: &BTreeMap<&str, NodeIx>) -> Option<Node> {
    let base = format!("nodes.{name}");
    let nd: NodeDoc = match serde_json::from_value(raw.clone()) {
        Ok(n) => n,
        Err(e) => {
            ck.add(Some(name), base, e.to_string());
            return None;
        }
    };
    let kinds: Vec<&str> = [
        ("action", nd.action.is_some()),
        ("split_accounts", nd.split_accounts.is_some()),
        ("split_people", nd.split_people.is_some()),
        ("merge", nd.merge.is_some()),
        ("listen", nd.listen.is_some()),
        ("wait", nd.wait.is_some()),
        ("exit", nd.exit.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, present)| present.then_some(k))
    .collect();
    if kinds.len() != 1 {
        ck.add(Some(name), base, format!("a node has exactly one kind, found {}", kinds.len()));
        return None;
    }
    let kind = kinds[0];
    let next = match &nd.next {
        Some(n) => target(ck, name, format!("{base}.next"), n, index),
        None => None,
    };
    let stray = |ck: &mut Checker, field: &str, present: bool| {
        if present {
            ck.add(Some(name), format!("{base}.{field}"), format!("`{field}` does not belong to a `{kind}` node"));
        }
    };
    if kind != "listen" {
        stray(ck, "timeout", nd.timeout.is_some());
        stray(ck, "on_timeout", nd.on_timeout.is_some());
    }
    if kind != "split_accounts" && kind != "split_people" {
        stray(ck, "otherwise", nd.otherwise.is_some());
    }
    match kind {
        "action" => compile_action(ck, name, &base, nd.action.as_ref()?, next),
        "split_accounts" | "split_people" => {
            stray(ck, "next", nd.next.is_some());
            let (written, scope) = if kind == "split_accounts" {
                (nd.split_accounts.as_ref(), Scope::Account)
            } else {
                (nd.split_people.as_ref(), Scope::Person)
            };
            let mut paths = Vec::new();
            for (i, p) in written.into_iter().flatten().enumerate() {
                let cond = Condition::compile(&p.when, scope);
                let to = target(ck, name, format!("{base}.{kind}[{i}].next"), &p.next, index);
                match (cond, to) {
                    (Ok(c), Some(t)) => paths.push((c, t)),
                    (Err(errs), _) => {
                        for e in errs {
                            ck.add(Some(name), format!("{base}.{kind}[{i}].when"), e);
                        }
                    }
                    _ => {}
                }
            }
            if written.is_some_and(Vec::is_empty) {
                ck.add(Some(name), format!("{base}.{kind}"), "a split needs at least one path");
            }
            let otherwise = match &nd.otherwise {
                Some(o) => target(ck, name, format!("{base}.otherwise"), o, index),
                None => None,
            };
            if kind == "split_accounts" {
                Some(Node::SplitAccounts { paths, otherwise })
            } else {
                // The merge is found once every node is compiled (`check_people_paths`).
                Some(Node::SplitPeople { paths, otherwise, merge: usize::MAX })
            }
        }
        "merge" => {
            if nd.merge.as_ref().is_some_and(|m| m.as_object().is_none_or(|o| !o.is_empty())) {
                ck.add(Some(name), format!("{base}.merge"), "`merge` takes no parameters: write `merge: {}`");
            }
            Some(Node::Merge { next })
        }
        "listen" => {
            let l = nd.listen.as_ref()?;
            let what = match (&l.activity, &l.account_event) {
                (Some(a), None) if is_activity_kind(a) => Some(ListenFor::Activity(a.clone())),
                (Some(a), None) => {
                    ck.add(Some(name), format!("{base}.listen.activity"), format!("names no activity kind: `{a}`"));
                    None
                }
                (None, Some(e)) => match AccountEvent::parse(e) {
                    Some(ev) => Some(ListenFor::Account(ev)),
                    None => {
                        ck.add(
                            Some(name),
                            format!("{base}.listen.account_event"),
                            format!("names no account event: `{e}` (known: {})", ACCOUNT_EVENTS.join(", ")),
                        );
                        None
                    }
                },
                _ => {
                    ck.add(Some(name), format!("{base}.listen"), "needs exactly one of `activity` and `account_event`");
                    None
                }
            };
            let condition = match &l.condition {
                Some(w) => match Condition::compile(w, Scope::Listen) {
                    Ok(c) => Some(c),
                    Err(errs) => {
                        for e in errs {
                            ck.add(Some(name), format!("{base}.listen.where"), e);
                        }
                        None
                    }
                },
                None => None,
            };
            let timeout = match &nd.timeout {
                Some(t) => match parse_duration(t) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        ck.add(Some(name), format!("{base}.timeout"), e.to_string());
                        None
                    }
                },
                None => None,
            };
            if nd.on_timeout.is_some() && nd.timeout.is_none() {
                ck.add(Some(name), format!("{base}.on_timeout"), "`on_timeout` without `timeout` can never happen");
            }
            let on_timeout = match &nd.on_timeout {
                Some(o) => target(ck, name, format!("{base}.on_timeout"), o, index),
                None => None,
            };
            Some(Node::Listen { what: what?, condition, timeout, next, on_timeout })
        }
        "wait" => {
            let spec = match nd.wait.as_ref()? {
                WaitDoc::Duration(d) => match parse_duration(d) {
                    Ok(n) => WaitSpec::For(n),
                    Err(e) => {
                        ck.add(Some(name), format!("{base}.wait"), e.to_string());
                        return None;
                    }
                },
                WaitDoc::Until { until } => match Timestamp::parse_rfc3339(until) {
                    Ok(t) => WaitSpec::Until(t),
                    Err(e) => {
                        ck.add(Some(name), format!("{base}.wait.until"), e.to_string());
                        return None;
                    }
                },
            };
            Some(Node::Wait { spec, next })
        }
        _ => {
            stray(ck, "next", nd.next.is_some());
            Some(Node::Exit)
        }
    }
}

fn compile_action(ck: &mut Checker, name: &str, base: &str, raw: &Value, next: Option<NodeIx>) -> Option<Node> {
    let Value::Object(map) = raw else {
        ck.add(Some(name), format!("{base}.action"), "an action is a map with one action type");
        return None;
    };
    let kinds: Vec<(&String, &Value)> = map.iter().filter(|(k, _)| k.as_str() != "to").collect();
    let [(kind, params)] = kinds.as_slice() else {
        ck.add(Some(name), format!("{base}.action"), format!("an action has exactly one type, found {}", kinds.len()));
        return None;
    };
    let path = format!("{base}.action.{kind}");
    let empty = Map::new();
    let p = match params {
        Value::Object(p) => p,
        Value::Null => &empty,
        _ => {
            ck.add(Some(name), path, "parameters must be a map");
            return None;
        }
    };
    let need_str = |ck: &mut Checker, key: &str| -> Option<String> {
        match p.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(_) => {
                ck.add(Some(name), format!("{path}.{key}"), "must be a non-empty string");
                None
            }
            None => {
                ck.add(Some(name), format!("{path}.{key}"), "is required");
                None
            }
        }
    };
    let need_value = |ck: &mut Checker, key: &str| -> Option<Value> {
        let v = p.get(key).cloned();
        if v.is_none() {
            ck.add(Some(name), format!("{path}.{key}"), "is required");
        }
        v
    };
    let only = |ck: &mut Checker, keys: &[&str]| {
        for k in p.keys() {
            if !keys.contains(&k.as_str()) {
                ck.add(Some(name), format!("{path}.{k}"), format!("unknown parameter of `{kind}`"));
            }
        }
    };
    let action = match kind.as_str() {
        "send_email" | "send_sms" => {
            only(ck, &["asset"]);
            need_str(ck, "asset")?;
            if kind.as_str() == "send_email" { ActionKind::SendEmail } else { ActionKind::SendSms }
        }
        "set_person_attribute" | "set_account_attribute" => {
            only(ck, &["field", "value"]);
            let field = need_str(ck, "field");
            let value = need_value(ck, "value");
            let (field, value) = (field?, value?);
            if kind.as_str() == "set_person_attribute" {
                ActionKind::SetPersonAttribute { field, value }
            } else {
                ActionKind::SetAccountAttribute { field, value }
            }
        }
        "change_person_score" => {
            only(ck, &["field", "by"]);
            let field = need_str(ck, "field");
            let by = match need_value(ck, "by") {
                Some(Value::Number(n)) => Some(n),
                Some(_) => {
                    ck.add(Some(name), format!("{path}.by"), "must be a number");
                    None
                }
                None => None,
            };
            ActionKind::ChangePersonScore { field: field?, by: by? }
        }
        "add_to_list" | "remove_from_list" | "add_account_to_list" | "remove_account_from_list" => {
            only(ck, &["list"]);
            let list = need_str(ck, "list")?;
            match kind.as_str() {
                "add_to_list" => ActionKind::AddToList { list },
                "remove_from_list" => ActionKind::RemoveFromList { list },
                "add_account_to_list" => ActionKind::AddAccountToList { list },
                _ => ActionKind::RemoveAccountFromList { list },
            }
        }
        "send_alert" => {
            only(ck, &["to", "template"]);
            need_str(ck, "template")?;
            if p.contains_key("to") {
                need_str(ck, "to")?;
            }
            ActionKind::SendAlert
        }
        "set_buying_group_stage" => {
            only(ck, &["solution", "stage"]);
            let solution = need_str(ck, "solution");
            let stage = need_str(ck, "stage");
            ActionKind::SetBuyingGroupStage { solution: solution?, stage: stage? }
        }
        "reassess_buying_group" => {
            only(ck, &["solution"]);
            ActionKind::ReassessBuyingGroup { solution: need_str(ck, "solution")? }
        }
        other => {
            ck.add(Some(name), path, format!("unknown action type `{other}`"));
            return None;
        }
    };
    let to = match map.get("to") {
        None => Target::All,
        Some(_) if !action.is_person_action() => {
            ck.add(Some(name), format!("{base}.action.to"), format!("`{kind}` is an account action: it takes no `to`"));
            return None;
        }
        Some(to) => compile_target(ck, name, &format!("{base}.action.to"), to)?,
    };
    Some(Node::Action { kind: action, params: Value::Object(p.clone()), to, next })
}

fn compile_target(ck: &mut Checker, name: &str, path: &str, raw: &Value) -> Option<Target> {
    let Value::Object(m) = raw else {
        ck.add(Some(name), path, "`to` is a map: `{role, solution}` or `{where}`");
        return None;
    };
    for k in m.keys() {
        if !["role", "solution", "where"].contains(&k.as_str()) {
            ck.add(Some(name), format!("{path}.{k}"), "unknown key of `to` (known: role, solution, where)");
        }
    }
    let text = |k: &str| m.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    match (m.get("role"), m.get("solution"), m.get("where")) {
        (Some(_), Some(_), None) => match (text("role"), text("solution")) {
            (Some(role), Some(solution)) => Some(Target::Role { role: role.into(), solution: solution.into() }),
            _ => {
                ck.add(Some(name), path, "`role` and `solution` must be non-empty strings");
                None
            }
        },
        (None, None, Some(_)) => match text("where") {
            Some(w) => match Condition::compile(w, Scope::Person) {
                Ok(c) => Some(Target::Where(c)),
                Err(errs) => {
                    for e in errs {
                        ck.add(Some(name), format!("{path}.where"), e);
                    }
                    None
                }
            },
            None => {
                ck.add(Some(name), format!("{path}.where"), "must be a non-empty condition");
                None
            }
        },
        _ => {
            ck.add(Some(name), path, "`to` takes either `role` with `solution`, or `where`");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use caravan_schemas::definition::read_document;

    fn problems(yaml: &str) -> Vec<Problem> {
        compile_journey(&read_document(yaml).expect("document parses")).err().unwrap_or_default()
    }

    const HEAD: &str = "kind: journey\ntenant: acme\nid: j\nversion: 1\naudience: target\n";

    #[test]
    fn the_reference_journey_compiles() {
        let text = std::fs::read_to_string(crate::journey::reference_journey_path()).expect("reference journey exists");
        let j = compile_journey(&read_document(&text).expect("parses")).expect("valid");
        assert_eq!(j.id, "b2b-journey-v1");
        assert!(matches!(j.nodes[j.start], Node::Action { kind: ActionKind::SendEmail, .. }));
    }

    #[test]
    fn reports_every_problem_with_node_and_path() {
        let p = problems(&format!(
            "{HEAD}start: a\nnodes:\n  a: {{action: {{send_email: {{}}}}, next: nowhere}}\n  b: {{wait: 2x}}\n  c: {{exit: {{}}, wait: 1d}}\n  d: {{action: {{launch_rocket: {{}}}}}}\n"
        ));
        let text: Vec<String> = p.iter().map(ToString::to_string).collect();
        assert!(text.iter().any(|t| t.contains("node `a` at nodes.a.next: names no node: `nowhere`")), "{text:?}");
        assert!(
            text.iter().any(|t| t.contains("node `a` at nodes.a.action.send_email.asset: is required")),
            "{text:?}"
        );
        assert!(text.iter().any(|t| t.contains("node `b` at nodes.b.wait")), "{text:?}");
        assert!(text.iter().any(|t| t.contains("node `c`") && t.contains("exactly one kind")), "{text:?}");
        assert!(text.iter().any(|t| t.contains("unknown action type `launch_rocket`")), "{text:?}");
    }

    #[test]
    fn refuses_missing_start_unreachable_nodes_and_cycles() {
        let p = problems(&format!("{HEAD}start: nope\nnodes:\n  a: {{exit: {{}}}}\n"));
        assert!(p.iter().any(|x| x.path == "start"), "{p:?}");
        let p = problems(&format!("{HEAD}start: a\nnodes:\n  a: {{exit: {{}}}}\n  lost: {{exit: {{}}}}\n"));
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].node.as_deref(), Some("lost"));
        assert!(p[0].message.contains("unreachable"));
        let p = problems(&format!(
            "{HEAD}start: a\nnodes:\n  a: {{wait: 1d, next: b}}\n  b: {{action: {{send_alert: {{template: t}}}}, next: a}}\n"
        ));
        assert!(p.iter().any(|x| x.message.contains("cycle: a -> b -> a")), "{p:?}");
    }

    #[test]
    fn checks_ids_conditions_and_listen() {
        let p = problems(
            "kind: journey\ntenant: acme\nid: Bad_Id\nversion: 0\naudience: t\nstart: s\nnodes:\n  s:\n    split_accounts:\n      - {when: 'person.x == 1', next: e}\n      - {when: 'account.x >', next: e}\n    otherwise: e\n  e: {listen: {activity: email.read}, timeout: 7d, on_timeout: f}\n  f: {exit: {}}\n",
        );
        let paths: Vec<&str> = p.iter().map(|x| x.path.as_str()).collect();
        for want in [
            "id",
            "version",
            "nodes.s.split_accounts[0].when",
            "nodes.s.split_accounts[1].when",
            "nodes.e.listen.activity",
        ] {
            assert!(paths.contains(&want), "missing {want} in {p:?}");
        }
    }

    #[test]
    fn split_nodes_take_no_next_and_exit_takes_none() {
        let p = problems(&format!(
            "{HEAD}start: s\nnodes:\n  s: {{split_accounts: [{{when: 'account.x == 1', next: e}}], next: e}}\n  e: {{exit: {{}}}}\n"
        ));
        assert!(p.iter().any(|x| x.path == "nodes.s.next"), "{p:?}");
    }
}
