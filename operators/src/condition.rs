//! Journey conditions: CEL expressions compiled once at publish time, evaluated on account state.
//!
//! It owns the choice of CEL engine (the `cel` crate, cel-rust; see ARCHITECTURE.md), the names a condition
//! may use in each place it is written, a publish-time type check of what can be known without data (literal
//! operands, boolean results), and the evaluation rules of SPEC §7: a missing key or a field of null reads as
//! null, ordering with null is false, a runtime error or a non-boolean result is false.
//!
//! How: the parsed expression is rewritten once. Every field selection `a.f` becomes a call of the null-safe
//! `__field(a, "f")`, and the calls that read engine facts (`activity(kind, window)`, `buying_group(solution)`,
//! `person.role(solution)`), whose arguments must be literals, become hidden variables that the caller's
//! [`Facts`] fill at evaluation. It is not the source of those facts: `account` computes them.

use caravan_schemas::Id;
use caravan_schemas::input::is_activity_kind;
use caravan_schemas::time::parse_duration;
use cel::common::ast::{CallExpr, EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::common::types::CelString;
use cel::extractors::Arguments;
use cel::objects::Key;
use cel::{Context, ExecutionError, ResolveResult, Value as CelValue};
use serde_json::Value;
use std::sync::Arc;

/// Where a condition is written, which decides the names it may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `split_accounts` paths: `account`, `opportunities`, `activity`, `buying_group`.
    Account,
    /// `split_people` paths, `to.where` and template roles: the account's names and `person`.
    Person,
    /// `listen.where`: the account's names and `event`.
    Listen,
    /// Buying group stages: the account's names and the group as `buying_group`.
    Group,
}

impl Scope {
    fn variables(self) -> &'static [&'static str] {
        match self {
            Scope::Account => &["account", "opportunities"],
            Scope::Person => &["account", "opportunities", "person"],
            Scope::Listen => &["account", "opportunities", "event"],
            Scope::Group => &["account", "opportunities", "buying_group"],
        }
    }
}

/// A variable of the data a condition reads, as the caller supplies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Var {
    /// The account: attributes, `id`, `audiences`, `lists`.
    Account,
    /// The account's opportunities: a list of maps with their `id`.
    Opportunities,
    /// The person: attributes, `id`, `lists`.
    Person,
    /// The listened-for event.
    Event,
    /// The buying group a stage condition is evaluated for.
    Group,
}

const VARS: [(&str, Var); 5] = [
    ("account", Var::Account),
    ("opportunities", Var::Opportunities),
    ("person", Var::Person),
    ("event", Var::Event),
    ("buying_group", Var::Group),
];

/// What a condition reads from the engine at evaluation.
pub trait Facts {
    /// A variable's value (JSON). Called only for the variables the condition uses.
    fn var(&self, var: Var) -> Value;
    /// `activity(kind, window)`: the count of that activity with `ts >= now - window` (of the person in a
    /// person condition, of all the account's people otherwise).
    fn activity(&self, kind: &str, window: i64) -> u64;
    /// `buying_group(solution)`: the group as a map (`completeness`, `engagement`, `stage`, `members`) or null.
    fn buying_group(&self, solution: &str) -> Value;
    /// `person.role(solution)`: the person's role in that group, or null.
    fn role(&self, solution: &str) -> Value;
}

/// One fact a condition reads, bound to a hidden variable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fact {
    /// `activity(kind, window)`, window in nanoseconds.
    Activity(Id, i64),
    /// `buying_group(solution)`.
    BuyingGroup(Id),
    /// `person.role(solution)`.
    Role(Id),
}

/// A compiled condition with its source text.
#[derive(Clone)]
pub struct Condition {
    source: String,
    expr: Arc<IdedExpr>,
    vars: Vec<Var>,
    facts: Vec<Fact>,
    /// Fields selected directly on a variable (`buying_group.stage`), and the variables also used whole.
    fields: Vec<(Var, String)>,
    whole: Vec<Var>,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Condition({:?})", self.source)
    }
}

impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Condition {
    /// Compiles a condition: parses it, checks the names it uses and the types that literals decide, and
    /// rewrites it for evaluation.
    ///
    /// # Errors
    /// Every problem, as messages: a parse error with its position, an unknown or misplaced name, a fact
    /// function with bad arguments, an ill-typed operand, a result that is not boolean.
    pub fn compile(source: &str, scope: Scope) -> Result<Condition, Vec<String>> {
        // The CEL parser has panicked on some malformed input in earlier releases (DEPENDENCIES.md); a panic
        // here must become a validation problem, never a crash of `caravan validate`.
        let parsed = std::panic::catch_unwind(|| cel::Program::compile(source));
        let program = match parsed {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Err(vec![format!("condition `{source}` does not parse: {e}")]),
            Err(_) => return Err(vec![format!("condition `{source}` does not parse")]),
        };
        let mut rw = Rewriter {
            scope,
            bound: Vec::new(),
            facts: Vec::new(),
            vars: Vec::new(),
            fields: Vec::new(),
            whole: Vec::new(),
            problems: Vec::new(),
        };
        let mut expr = program.expression().clone();
        let ty = rw.rewrite(&mut expr);
        if !matches!(ty, Ty::Bool | Ty::Dyn) {
            rw.problems.push(format!("is not boolean: it gives {}", ty.name()));
        }
        if rw.problems.is_empty() {
            Ok(Condition {
                source: source.to_owned(),
                expr: Arc::new(expr),
                vars: rw.vars,
                facts: rw.facts,
                fields: rw.fields,
                whole: rw.whole,
            })
        } else {
            Err(rw.problems.into_iter().map(|p| format!("condition `{source}`: {p}")).collect())
        }
    }

    /// The source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the condition reads a variable.
    pub fn reads(&self, var: Var) -> bool {
        self.vars.contains(&var)
    }

    /// Whether the condition may read a field of a variable: it selects it, or uses the variable whole (so a
    /// caller may leave costly fields out of a variable's value when no condition reads them).
    pub fn reads_field(&self, var: Var, field: &str) -> bool {
        self.whole.contains(&var) || self.fields.iter().any(|(v, f)| *v == var && f == field)
    }

    /// What of a variable's value the expression can read: all of it when it uses the variable whole, else
    /// only the fields it selects (no other can be read). Converting a whole account to a CEL map for
    /// `account.employees >= 1000` cost ~50k instructions an evaluation, growing with the account.
    fn readable_part(&self, var: Var, value: Value) -> Value {
        match value {
            Value::Object(mut map) if !self.whole.contains(&var) => {
                map.retain(|k, _| self.fields.iter().any(|(v, f)| *v == var && f == k));
                Value::Object(map)
            }
            other => other,
        }
    }

    /// The facts the condition reads.
    pub fn facts(&self) -> &[Fact] {
        &self.facts
    }

    /// Evaluates over the caller's facts. Errors and non-boolean results are false.
    pub fn eval(&self, facts: &dyn Facts) -> bool {
        ROOT.with(|root| {
            let mut scope = root.new_inner_scope();
            for var in &self.vars {
                let name = VARS.iter().find(|(_, v)| v == var).map_or("", |(n, _)| *n);
                match cel::to_value(self.readable_part(*var, facts.var(*var))) {
                    Ok(v) => scope.add_variable_from_value(name, v),
                    Err(_) => return false,
                }
            }
            for (i, fact) in self.facts.iter().enumerate() {
                let value = match fact {
                    Fact::Activity(kind, window) => {
                        cel::to_value(Value::from(facts.activity(kind, *window))).unwrap_or(CelValue::Null)
                    }
                    Fact::BuyingGroup(s) => cel::to_value(facts.buying_group(s)).unwrap_or(CelValue::Null),
                    Fact::Role(s) => cel::to_value(facts.role(s)).unwrap_or(CelValue::Null),
                };
                scope.add_variable_from_value(fact_var(i), value);
            }
            matches!(scope.resolve(&self.expr), Ok(CelValue::Bool(true)))
        })
    }
}

fn fact_var(i: usize) -> String {
    format!("__fact{i}")
}

/// `__field(a, "f")`: the field of a map, null when the map lacks it or when `a` is null (SPEC §7).
fn field(Arguments(args): Arguments) -> ResolveResult {
    match (args.first(), args.get(1)) {
        (Some(CelValue::Map(m)), Some(CelValue::String(k))) => {
            Ok(m.map.get(&Key::String(Arc::clone(k))).cloned().unwrap_or(CelValue::Null))
        }
        (Some(CelValue::Null), _) => Ok(CelValue::Null),
        (Some(other), _) => Err(ExecutionError::function_error("field selection", format!("{other:?} has no fields"))),
        (None, _) => Err(ExecutionError::missing_argument_or_target()),
    }
}

/// The arithmetic operators, rewritten to [`arithmetic`] so that ints and doubles mix (SPEC §7: CEL itself
/// refuses `1 + 0.5`).
const ARITHMETIC: [(&str, &str); 5] =
    [("_+_", "__add"), ("_-_", "__sub"), ("_*_", "__mul"), ("_/_", "__div"), ("_%_", "__mod")];

fn as_f64(v: &CelValue) -> Option<f64> {
    match v {
        CelValue::Int(i) => Some(*i as f64),
        CelValue::UInt(u) => Some(*u as f64),
        CelValue::Float(f) => Some(*f),
        _ => None,
    }
}

/// One arithmetic operator: integers stay integers (overflow and division by zero are errors), a double on
/// either side makes a double, `+` also joins strings and lists.
fn arithmetic(op: &str, args: &[CelValue]) -> ResolveResult {
    let err = |m: &str| Err(ExecutionError::function_error(op, m));
    let [a, b] = args else { return err("takes two operands") };
    match (op, a, b) {
        (_, CelValue::Int(x), CelValue::Int(y)) => {
            let r = match op {
                "__add" => x.checked_add(*y),
                "__sub" => x.checked_sub(*y),
                "__mul" => x.checked_mul(*y),
                "__div" => x.checked_div(*y),
                _ => x.checked_rem(*y),
            };
            r.map_or_else(|| err("integer overflow or division by zero"), |v| Ok(CelValue::Int(v)))
        }
        ("__add", CelValue::String(x), CelValue::String(y)) => Ok(CelValue::String(Arc::new(format!("{x}{y}")))),
        ("__add", CelValue::List(x), CelValue::List(y)) => {
            Ok(CelValue::List(Arc::new(x.iter().chain(y.iter()).cloned().collect())))
        }
        _ => match (as_f64(a), as_f64(b)) {
            (Some(x), Some(y)) => Ok(CelValue::Float(match op {
                "__add" => x + y,
                "__sub" => x - y,
                "__mul" => x * y,
                "__div" => x / y,
                _ => x % y,
            })),
            _ => err("operands are not numbers"),
        },
    }
}

thread_local! {
    /// Building a CEL root context runs the standard library set-up (about 24 µs): once per thread.
    static ROOT: Context<'static, 'static> = {
        let mut ctx = Context::default();
        // These names are not standard ones: the declarations cannot conflict.
        let _ = ctx.add_function("__field", field);
        let _ = ctx.add_function("__add", |Arguments(a): Arguments| arithmetic("__add", &a));
        let _ = ctx.add_function("__sub", |Arguments(a): Arguments| arithmetic("__sub", &a));
        let _ = ctx.add_function("__mul", |Arguments(a): Arguments| arithmetic("__mul", &a));
        let _ = ctx.add_function("__div", |Arguments(a): Arguments| arithmetic("__div", &a));
        let _ = ctx.add_function("__mod", |Arguments(a): Arguments| arithmetic("__mod", &a));
        ctx
    };
}

/// What the checker knows of an expression's type without data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    Bool,
    Num,
    Str,
    Bytes,
    Null,
    List,
    Map,
    Dyn,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::Bool => "a boolean",
            Ty::Num => "a number",
            Ty::Str => "a string",
            Ty::Bytes => "bytes",
            Ty::Null => "null",
            Ty::List => "a list",
            Ty::Map => "a map",
            Ty::Dyn => "a value of unknown type",
        }
    }

    fn known(self) -> bool {
        self != Ty::Dyn
    }
}

struct Rewriter {
    scope: Scope,
    /// Names bound by enclosing macros (`exists(o, ...)`).
    bound: Vec<String>,
    facts: Vec<Fact>,
    vars: Vec<Var>,
    fields: Vec<(Var, String)>,
    whole: Vec<Var>,
    problems: Vec<String>,
}

fn string_literal(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

fn literal_ty(l: &LiteralValue) -> Ty {
    match l {
        LiteralValue::Boolean(_) => Ty::Bool,
        LiteralValue::Bytes(_) => Ty::Bytes,
        LiteralValue::Double(_) | LiteralValue::Int(_) | LiteralValue::UInt(_) => Ty::Num,
        LiteralValue::Null => Ty::Null,
        LiteralValue::String(_) => Ty::Str,
    }
}

impl Rewriter {
    fn fact(&mut self, e: &mut IdedExpr, fact: Fact) {
        let i = match self.facts.iter().position(|f| *f == fact) {
            Some(i) => i,
            None => {
                self.facts.push(fact);
                self.facts.len() - 1
            }
        };
        e.expr = Expr::Ident(fact_var(i));
    }

    fn use_var(&mut self, var: Var) {
        if !self.vars.contains(&var) {
            self.vars.push(var);
        }
    }

    /// Rewrites `e` in place and returns what is known of its type.
    fn rewrite(&mut self, e: &mut IdedExpr) -> Ty {
        match &mut e.expr {
            Expr::Unspecified => Ty::Dyn,
            Expr::Literal(l) => literal_ty(l),
            Expr::Ident(name) => {
                if self.bound.iter().any(|b| b == name) {
                    return Ty::Dyn;
                }
                match VARS.iter().find(|(n, _)| n == name) {
                    Some((n, v)) if self.scope.variables().contains(n) => {
                        self.use_var(*v);
                        if !self.whole.contains(v) {
                            self.whole.push(*v);
                        }
                        if *v == Var::Opportunities { Ty::List } else { Ty::Map }
                    }
                    _ => {
                        let known = self.scope.variables().join(", ");
                        self.problems.push(format!("unknown identifier `{name}` (known here: {known})"));
                        Ty::Dyn
                    }
                }
            }
            Expr::Select(sel) => {
                let direct = match &sel.operand.expr {
                    Expr::Ident(name) if !self.bound.iter().any(|b| b == name) => {
                        VARS.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
                    }
                    _ => None,
                };
                let whole_before = self.whole.len();
                let operand = self.rewrite(&mut sel.operand);
                if let Some(var) = direct {
                    // A field of a variable: not a use of the whole variable.
                    self.whole.truncate(whole_before);
                    self.fields.push((var, sel.field.clone()));
                }
                if operand.known() && operand != Ty::Map && operand != Ty::Null {
                    self.problems.push(format!("`.{}` selects a field of {}", sel.field, operand.name()));
                }
                if sel.test {
                    return Ty::Bool;
                }
                let operand = std::mem::take(&mut *sel.operand);
                let key = IdedExpr {
                    id: e.id,
                    expr: Expr::Literal(LiteralValue::String(CelString::from(std::mem::take(&mut sel.field)))),
                };
                e.expr = Expr::Call(CallExpr { func_name: "__field".into(), target: None, args: vec![operand, key] });
                Ty::Dyn
            }
            Expr::List(l) => {
                for x in &mut l.elements {
                    self.rewrite(x);
                }
                Ty::List
            }
            Expr::Map(m) => {
                for entry in &mut m.entries {
                    match &mut entry.expr {
                        EntryExpr::MapEntry(me) => {
                            self.rewrite(&mut me.key);
                            self.rewrite(&mut me.value);
                        }
                        EntryExpr::StructField(f) => {
                            self.rewrite(&mut f.value);
                        }
                    }
                }
                Ty::Map
            }
            Expr::Struct(_) => {
                self.problems.push("message literals are not supported".into());
                Ty::Dyn
            }
            Expr::Comprehension(c) => {
                self.rewrite(&mut c.iter_range);
                let n = self.bound.len();
                self.bound.push(c.iter_var.clone());
                self.bound.extend(c.iter_var2.iter().cloned());
                self.bound.push(c.accu_var.clone());
                for sub in [&mut c.accu_init, &mut c.loop_cond, &mut c.loop_step, &mut c.result] {
                    self.rewrite(sub);
                }
                self.bound.truncate(n);
                Ty::Dyn
            }
            Expr::Call(_) => self.call(e),
        }
    }

    fn call(&mut self, e: &mut IdedExpr) -> Ty {
        let Expr::Call(call) = &mut e.expr else { return Ty::Dyn };
        let name = call.func_name.clone();
        // The fact functions: checked on their literal arguments, replaced by hidden variables.
        match (name.as_str(), call.target.as_deref()) {
            ("activity", None) => return self.activity(e),
            ("buying_group", None) => {
                let solution = match call.args.as_slice() {
                    [s] => string_literal(s).map(Id::from),
                    _ => None,
                };
                return match solution {
                    Some(s) => {
                        self.fact(e, Fact::BuyingGroup(s));
                        Ty::Dyn
                    }
                    None => {
                        self.problems.push("`buying_group` takes one string literal: the solution interest".into());
                        Ty::Dyn
                    }
                };
            }
            ("role", Some(target)) => {
                let on_person = matches!(&target.expr, Expr::Ident(n) if n == "person");
                if on_person && !self.scope.variables().contains(&"person") {
                    self.problems.push("unknown identifier `person` (`role` exists only in person conditions)".into());
                    return Ty::Dyn;
                }
                let solution = match call.args.as_slice() {
                    [s] if on_person => string_literal(s).map(Id::from),
                    _ => None,
                };
                return match solution {
                    Some(s) => {
                        self.use_var(Var::Person);
                        self.fact(e, Fact::Role(s));
                        Ty::Dyn
                    }
                    None => {
                        self.problems.push("`role` is called as `person.role(\"solution\")`".into());
                        Ty::Dyn
                    }
                };
            }
            _ => {}
        }
        let target = call.target.as_deref_mut().map(|t| self.rewrite(t));
        let args: Vec<Ty> = call.args.iter_mut().map(|a| self.rewrite(a)).collect();
        if let Some((_, f)) = ARITHMETIC.iter().find(|(op, _)| *op == name) {
            call.func_name = (*f).to_owned();
        }
        let arg = |i: usize| args.get(i).copied().unwrap_or(Ty::Dyn);
        let expect = |problems: &mut Vec<String>, ty: Ty, allowed: &[Ty], what: &str| {
            if ty.known() && !allowed.contains(&ty) {
                problems.push(format!("{what} needs {}, not {}", allowed[0].name(), ty.name()));
            }
        };
        match name.as_str() {
            "_&&_" | "_||_" | "!_" => {
                for (i, _) in args.iter().enumerate() {
                    expect(&mut self.problems, arg(i), &[Ty::Bool], &format!("`{}`", name.trim_matches('_')));
                }
                Ty::Bool
            }
            "_==_" | "_!=_" => {
                let (a, b) = (arg(0), arg(1));
                let num_or = |t: Ty| if t == Ty::Num { Ty::Num } else { t };
                if a.known() && b.known() && a != Ty::Null && b != Ty::Null && num_or(a) != num_or(b) {
                    self.problems.push(format!("compares {} with {}: never equal", a.name(), b.name()));
                }
                Ty::Bool
            }
            "_<_" | "_<=_" | "_>_" | "_>=_" => {
                let (a, b) = (arg(0), arg(1));
                for t in [a, b] {
                    if t.known() && !matches!(t, Ty::Num | Ty::Str | Ty::Bytes | Ty::Bool) {
                        self.problems.push(format!("orders {}: only numbers, strings and bytes are ordered", t.name()));
                    }
                }
                if a.known() && b.known() && a != b && a != Ty::Null && b != Ty::Null {
                    self.problems.push(format!("orders {} against {}", a.name(), b.name()));
                }
                Ty::Bool
            }
            "_+_" => {
                let (a, b) = (arg(0), arg(1));
                if a.known() && b.known() && a != b {
                    self.problems.push(format!("adds {} to {}", b.name(), a.name()));
                }
                if a.known() { a } else { b }
            }
            "_-_" | "_*_" | "_/_" | "_%_" | "-_" => {
                for (i, _) in args.iter().enumerate() {
                    expect(&mut self.problems, arg(i), &[Ty::Num], &format!("`{}`", name.trim_matches('_')));
                }
                Ty::Num
            }
            "_?_:_" => {
                expect(&mut self.problems, arg(0), &[Ty::Bool], "the condition of `? :`");
                if arg(1) == arg(2) { arg(1) } else { Ty::Dyn }
            }
            "_[_]" => Ty::Dyn,
            "@in" => {
                expect(&mut self.problems, arg(1), &[Ty::List, Ty::Map], "`in`");
                Ty::Bool
            }
            "size" => Ty::Num,
            "contains" | "startsWith" | "endsWith" | "matches" => {
                if let Some(t) = target {
                    expect(&mut self.problems, t, &[Ty::Str], &format!("`{name}`"));
                }
                Ty::Bool
            }
            "has" | "exists" | "exists_one" | "all" => Ty::Bool,
            "int" | "uint" | "double" => Ty::Num,
            "string" => Ty::Str,
            "bool" => Ty::Bool,
            "dyn" | "type" | "map" | "filter" | "max" | "min" => Ty::Dyn,
            // Internal functions of the macro expansions (`@not_strictly_false`, ...).
            n if n.starts_with('@') => Ty::Dyn,
            "activity" | "buying_group" | "role" => {
                self.problems.push(format!("`{name}` is called wrongly"));
                Ty::Dyn
            }
            _ => {
                self.problems.push(format!("unknown function `{name}`"));
                Ty::Dyn
            }
        }
    }

    fn activity(&mut self, e: &mut IdedExpr) -> Ty {
        let Expr::Call(call) = &e.expr else { return Ty::Dyn };
        let (kind, window) = match call.args.as_slice() {
            [k, w] => (string_literal(k), string_literal(w)),
            _ => (None, None),
        };
        let (Some(kind), Some(window)) = (kind, window) else {
            self.problems.push("`activity` takes two string literals: an activity kind and a window (`30d`)".into());
            return Ty::Num;
        };
        if !is_activity_kind(kind) {
            self.problems.push(format!("`activity`: `{kind}` is not an activity kind"));
        }
        match parse_duration(window) {
            Ok(w) if w > 0 => {
                let fact = Fact::Activity(Id::from(kind), w);
                self.fact(e, fact);
            }
            Ok(_) => self.problems.push("`activity`: the window must be longer than zero".into()),
            Err(err) => self.problems.push(format!("`activity`: window `{window}`: {err}")),
        }
        Ty::Num
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Facts from fixed values.
    #[derive(Default)]
    struct Fixed {
        account: Value,
        person: Value,
        event: Value,
        opportunities: Value,
        activity: Vec<(&'static str, i64, u64)>,
        groups: Value,
        roles: Value,
    }

    impl Facts for Fixed {
        fn var(&self, var: Var) -> Value {
            match var {
                Var::Account => self.account.clone(),
                Var::Person => self.person.clone(),
                Var::Event => self.event.clone(),
                Var::Opportunities => self.opportunities.clone(),
                Var::Group => Value::Null,
            }
        }
        fn activity(&self, kind: &str, window: i64) -> u64 {
            self.activity.iter().find(|(k, w, _)| *k == kind && *w == window).map_or(0, |x| x.2)
        }
        fn buying_group(&self, solution: &str) -> Value {
            self.groups.get(solution).cloned().unwrap_or(Value::Null)
        }
        fn role(&self, solution: &str) -> Value {
            self.roles.get(solution).cloned().unwrap_or(Value::Null)
        }
    }

    fn account(v: Value) -> Fixed {
        Fixed { account: v, ..Fixed::default() }
    }

    fn holds(src: &str, scope: Scope, facts: &Fixed) -> bool {
        Condition::compile(src, scope).unwrap_or_else(|e| panic!("{src}: {e:?}")).eval(facts)
    }

    #[test]
    fn evaluates_account_conditions() {
        let c = Condition::compile("account.employees >= 1000", Scope::Account).expect("compiles");
        assert!(c.eval(&account(json!({"employees": 1000}))));
        assert!(c.eval(&account(json!({"employees": 5000.5}))));
        assert!(!c.eval(&account(json!({"employees": 999}))));
        // Missing attribute and ill-typed comparison: false, never an error.
        assert!(!c.eval(&account(json!({}))));
        assert!(!c.eval(&account(json!({"employees": "many"}))));
        assert!(!c.eval(&account(json!({"employees": null}))));
    }

    #[test]
    fn missing_keys_and_fields_of_null_read_as_null() {
        let empty = account(json!({"x": null, "m": {"a": 1}}));
        assert!(holds("account.nope == null", Scope::Account, &empty));
        assert!(holds("account.x == null", Scope::Account, &empty));
        assert!(holds("account.nope != 1", Scope::Account, &empty));
        assert!(holds("account.x.deeper == null", Scope::Account, &empty));
        assert!(holds("account.m.b == null && account.m.a == 1", Scope::Account, &empty));
        assert!(!holds("account.nope < 1", Scope::Account, &empty));
        assert!(!holds("account.nope >= 1", Scope::Account, &empty));
        assert!(holds("!has(account.nope) && has(account.m)", Scope::Account, &empty));
        // Ints and doubles mix; `true != 1`.
        let n = account(json!({"i": 1, "f": 1.0, "b": true}));
        assert!(holds("account.i == account.f && account.i + 0.5 == 1.5", Scope::Account, &n));
        assert!(holds("account.b != 1", Scope::Account, &n));
    }

    #[test]
    fn a_variable_used_whole_keeps_every_field_and_one_only_selected_reads_the_same() {
        let a = account(json!({"employees": 1200, "country": "GB", "name": "Acme", "tier": 2}));
        // Only selected: the value is cut to the selected fields, with the same answers.
        assert!(holds("account.employees >= 1000 && account.country == \"GB\"", Scope::Account, &a));
        assert!(!holds("account.employees < 1000", Scope::Account, &a));
        assert!(holds("!has(account.nope) && has(account.tier)", Scope::Account, &a));
        // Used whole (a comprehension, `in`, `size`) next to a selection: nothing may be cut.
        assert!(holds("account.tier == 2 && account.exists(k, k == \"name\")", Scope::Account, &a));
        assert!(holds("account.tier == 2 && \"country\" in account", Scope::Account, &a));
        assert!(holds("account.tier == 2 && size(account) == 4", Scope::Account, &a));
    }

    #[test]
    fn evaluates_listen_and_person_conditions() {
        let f = Fixed { event: json!({"properties": {"asset_id": "welcome"}}), ..Fixed::default() };
        assert!(holds(r#"event.properties.asset_id == "welcome""#, Scope::Listen, &f));
        let f = Fixed { event: json!({"properties": {}}), ..Fixed::default() };
        assert!(!holds(r#"event.properties.asset_id == "welcome""#, Scope::Listen, &f));
        let f = Fixed {
            person: json!({"title": "VP Sales", "lists": ["vip"]}),
            roles: json!({"analytics": "decision_maker"}),
            ..Fixed::default()
        };
        assert!(holds(r#"person.title.startsWith("VP") && "vip" in person.lists"#, Scope::Person, &f));
        assert!(holds(r#"person.role("analytics") == "decision_maker""#, Scope::Person, &f));
        assert!(holds(r#"person.role("other") == null"#, Scope::Person, &f));
    }

    #[test]
    fn facts_are_bound_by_literal_arguments() {
        let f = Fixed {
            activity: vec![("email.opened", 30 * 86_400_000_000_000, 4)],
            groups: json!({"analytics": {"stage": "decision", "completeness": 1.0}}),
            ..Fixed::default()
        };
        assert!(holds(r#"activity("email.opened", "30d") >= 4"#, Scope::Account, &f));
        assert!(!holds(r#"activity("email.opened", "7d") > 0"#, Scope::Account, &f));
        assert!(holds(r#"buying_group("analytics").stage == "decision""#, Scope::Account, &f));
        assert!(holds(r#"buying_group("none") == null"#, Scope::Account, &f));
        assert!(!holds(r#"buying_group("none").completeness >= 0.5"#, Scope::Account, &f));
        let c = Condition::compile(r#"activity("web.visited", "1d") > activity("web.visited", "1d")"#, Scope::Account)
            .expect("compiles");
        assert_eq!(c.facts().len(), 1, "one fact for the same call");
    }

    #[test]
    fn non_boolean_is_refused_or_false() {
        let e = Condition::compile("1 + 2", Scope::Account).unwrap_err();
        assert!(e[0].contains("is not boolean: it gives a number"), "{e:?}");
        let e = Condition::compile(r#""yes""#, Scope::Account).unwrap_err();
        assert!(e[0].contains("a string"), "{e:?}");
        // Unknown at publish: false at run time.
        let c = Condition::compile("account.employees", Scope::Account).expect("compiles");
        assert!(!c.eval(&account(json!({"employees": 1}))));
    }

    #[test]
    fn refuses_ill_typed_literals() {
        for (src, want) in [
            (r#"account.n > 1 && "a" < 1"#, "orders a string against a number"),
            (r#"1 == "1""#, "compares a number with a string"),
            (r#"account.n + "x" - 1 > 0"#, "`-` needs a number"),
            ("account.n > null", "orders null"),
            ("1 && account.b", "`&&` needs a boolean"),
            (r#""abc".x == 1"#, "selects a field of a string"),
            ("1.contains(2)", "`contains` needs a string"),
        ] {
            let e = Condition::compile(src, Scope::Account).unwrap_err();
            assert!(e.iter().any(|m| m.contains(want)), "{src}: {e:?}");
        }
    }

    #[test]
    fn refuses_unknown_and_misplaced_names() {
        let e = Condition::compile("event.x == 1", Scope::Account).unwrap_err();
        assert!(e[0].contains("unknown identifier `event`"), "{e:?}");
        let e = Condition::compile("person.x == 1", Scope::Listen).unwrap_err();
        assert!(e[0].contains("unknown identifier `person`"), "{e:?}");
        let e = Condition::compile("no_such_function(1) > 0", Scope::Account).unwrap_err();
        assert!(e[0].contains("unknown function `no_such_function`"), "{e:?}");
        let e = Condition::compile("account.employees >=", Scope::Account).unwrap_err();
        assert!(e[0].contains("does not parse"), "{e:?}");
        let e = Condition::compile(r#"activity("email.read", "1d") > 0"#, Scope::Account).unwrap_err();
        assert!(e[0].contains("not an activity kind"), "{e:?}");
        let e = Condition::compile(r#"activity(account.kind, "1d") > 0"#, Scope::Account).unwrap_err();
        assert!(e[0].contains("two string literals"), "{e:?}");
        let e = Condition::compile(r#"person.role("a") == "x""#, Scope::Account).unwrap_err();
        assert!(e[0].contains("only in person conditions"), "{e:?}");
        assert!(
            Condition::compile(r#"account.industry in ["a", "b"] && size(account.name) > 2"#, Scope::Account).is_ok()
        );
        assert!(
            Condition::compile(r#"opportunities.exists(o, o.stage == "won" && o.amount > 10)"#, Scope::Account).is_ok()
        );
    }

    #[test]
    fn comprehension_fields_are_null_safe() {
        let f = Fixed { opportunities: json!([{"id": "o1"}, {"id": "o2", "amount": 20}]), ..Fixed::default() };
        assert!(holds("opportunities.exists(o, o.amount > 10)", Scope::Account, &f));
        assert!(holds("opportunities.filter(o, o.amount == null).size() == 1", Scope::Account, &f));
    }
}
