//! Journey conditions: CEL expressions compiled once at publish time, evaluated on account state.
//!
//! It owns the choice of CEL engine (the `cel` crate, cel-rust; see ARCHITECTURE.md) and the rules of SPEC §7
//! for evaluation: a runtime error makes a condition false, and a non-boolean result is false. It is not a
//! type checker: publish-time checks are limited to parsing and to the names a condition may refer to.

use cel::{Context, Program};
use std::sync::Arc;

/// Where a condition is written, which decides the names it may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `split_accounts` paths: `account`, `opportunities`.
    Account,
    /// `listen.where`: `account`, `opportunities`, `event`.
    Listen,
}

/// A compiled condition with its source text.
#[derive(Clone)]
pub struct Condition {
    source: String,
    program: Arc<Program>,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Condition({:?})", self.source)
    }
}

/// Functions and variables that exist in the language but that this build does not evaluate yet.
const NOT_YET: [&str; 4] = ["activity", "buying_group", "role", "person"];

impl Condition {
    /// Compiles a condition and checks the names it refers to.
    ///
    /// # Errors
    /// Every problem, as messages: a parse error with its position, or an unknown or unsupported name.
    pub fn compile(source: &str, scope: Scope) -> Result<Condition, Vec<String>> {
        // The CEL parser has panicked on some malformed input in earlier releases (DEPENDENCIES.md); a panic
        // here must become a validation problem, never a crash of `caravan validate`.
        let parsed = std::panic::catch_unwind(|| Program::compile(source));
        let program = match parsed {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Err(vec![format!("condition `{source}` does not parse: {e}")]),
            Err(_) => return Err(vec![format!("condition `{source}` does not parse")]),
        };
        let refs = program.references();
        let mut bound = Vec::new();
        comprehension_vars(program.expression(), &mut bound);
        let mut problems = Vec::new();
        let allowed: &[&str] = match scope {
            Scope::Account => &["account", "opportunities"],
            Scope::Listen => &["account", "opportunities", "event"],
        };
        for var in refs.variables() {
            if bound.iter().any(|b| b == var) {
                // Bound by a macro such as `exists(o, ...)` (the binding is not checked for scope).
                continue;
            }
            if NOT_YET.contains(&var) {
                problems.push(format!("condition `{source}`: `{var}` is not supported by this version yet"));
            } else if !allowed.contains(&var) {
                problems.push(format!(
                    "condition `{source}`: unknown identifier `{var}` (known here: {})",
                    allowed.join(", ")
                ));
            }
        }
        for func in refs.functions() {
            if NOT_YET.contains(&func) {
                problems.push(format!("condition `{source}`: function `{func}` is not supported by this version yet"));
            } else if !is_builtin(func) {
                problems.push(format!("condition `{source}`: unknown function `{func}`"));
            }
        }
        if problems.is_empty() {
            Ok(Condition { source: source.to_owned(), program: Arc::new(program) })
        } else {
            Err(problems)
        }
    }

    /// The source text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates with the given variables (JSON values). Errors and non-boolean results are false.
    pub fn eval(&self, vars: &[(&str, &serde_json::Value)]) -> bool {
        ROOT.with(|root| {
            let mut scope = root.new_inner_scope();
            for (name, value) in vars {
                match cel::to_value(*value) {
                    Ok(v) => scope.add_variable_from_value(*name, v),
                    Err(_) => return false,
                }
            }
            matches!(self.program.execute(&scope), Ok(cel::Value::Bool(true)))
        })
    }
}

/// The names that macros (`all`, `exists`, `map`, ...) bind in an expression.
fn comprehension_vars(e: &cel::common::ast::IdedExpr, out: &mut Vec<String>) {
    use cel::common::ast::{EntryExpr, Expr};
    match &e.expr {
        Expr::Comprehension(c) => {
            out.push(c.iter_var.clone());
            out.extend(c.iter_var2.iter().cloned());
            out.push(c.accu_var.clone());
            for sub in [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                comprehension_vars(sub, out);
            }
        }
        Expr::Call(call) => {
            if let Some(t) = &call.target {
                comprehension_vars(t, out);
            }
            for a in &call.args {
                comprehension_vars(a, out);
            }
        }
        Expr::List(l) => l.elements.iter().for_each(|x| comprehension_vars(x, out)),
        Expr::Select(sel) => comprehension_vars(&sel.operand, out),
        Expr::Map(m) => m.entries.iter().for_each(|x| match &x.expr {
            EntryExpr::MapEntry(me) => {
                comprehension_vars(&me.key, out);
                comprehension_vars(&me.value, out);
            }
            EntryExpr::StructField(f) => comprehension_vars(&f.value, out),
        }),
        Expr::Struct(st) => st.entries.iter().for_each(|x| match &x.expr {
            EntryExpr::MapEntry(me) => comprehension_vars(&me.value, out),
            EntryExpr::StructField(f) => comprehension_vars(&f.value, out),
        }),
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => {}
    }
}

thread_local! {
    /// Building a CEL root context runs the standard library set-up (about 24 µs): once per thread.
    static ROOT: Context<'static, 'static> = Context::default();
}

/// Operators, macros and standard functions of CEL that conditions may use.
fn is_builtin(name: &str) -> bool {
    name.starts_with('_')
        || name.starts_with('@')
        || matches!(
            name,
            "size"
                | "contains"
                | "startsWith"
                | "endsWith"
                | "matches"
                | "has"
                | "exists"
                | "exists_one"
                | "all"
                | "map"
                | "filter"
                | "int"
                | "uint"
                | "double"
                | "string"
                | "bool"
                | "type"
                | "dyn"
                | "in"
                | "!_"
                | "-_"
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn evaluates_account_conditions() {
        let c = Condition::compile("account.employees >= 1000", Scope::Account).expect("compiles");
        assert!(c.eval(&[("account", &json!({"employees": 1000}))]));
        assert!(c.eval(&[("account", &json!({"employees": 5000.5}))]));
        assert!(!c.eval(&[("account", &json!({"employees": 999}))]));
        // Missing attribute and ill-typed comparison: false, never an error.
        assert!(!c.eval(&[("account", &json!({}))]));
        assert!(!c.eval(&[("account", &json!({"employees": "many"}))]));
        assert!(!c.eval(&[("account", &json!({"employees": null}))]));
    }

    #[test]
    fn evaluates_listen_conditions() {
        let c = Condition::compile(r#"event.properties.asset_id == "welcome""#, Scope::Listen).expect("compiles");
        assert!(c.eval(&[("event", &json!({"properties": {"asset_id": "welcome"}}))]));
        assert!(!c.eval(&[("event", &json!({"properties": {"asset_id": "other"}}))]));
        assert!(!c.eval(&[("event", &json!({"properties": {}}))]));
    }

    #[test]
    fn non_boolean_is_false() {
        let c = Condition::compile("account.employees", Scope::Account).expect("compiles");
        assert!(!c.eval(&[("account", &json!({"employees": 1}))]));
    }

    #[test]
    fn refuses_unknown_and_misplaced_names() {
        let e = Condition::compile("event.x == 1", Scope::Account).unwrap_err();
        assert!(e[0].contains("unknown identifier `event`"), "{e:?}");
        let e = Condition::compile("no_such_function(1) > 0", Scope::Account).unwrap_err();
        assert!(e[0].contains("unknown function `no_such_function`"), "{e:?}");
        let e = Condition::compile("account.employees >=", Scope::Account).unwrap_err();
        assert!(e[0].contains("does not parse"), "{e:?}");
        assert!(
            Condition::compile(r#"account.industry in ["a", "b"] && size(account.name) > 2"#, Scope::Account).is_ok()
        );
    }
}
