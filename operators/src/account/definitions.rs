//! The catalogue of published definitions, by tenant: every journey and buying group template version, the
//! journeys stopped, and how far back each activity kind's history must reach.
//!
//! It owns the rules of publication: a higher version supersedes, an equal or lower one is refused unless
//! identical (SPEC §3.1); one template per tenant and solution interest (SPEC §7); a stop applies to the
//! versions published so far (SPEC §3.2). It never validates a document (`journey::compile_journey` and
//! `buying_group::compile_template` do, before) and never runs one: entering, executing and ending instances
//! is the account state machine's work.

use crate::OperatorError;
use crate::buying_group::Template;
use crate::journey::Journey;
use caravan_schemas::Id;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The published definitions, by tenant: journeys and buying group templates, every version kept (in-flight
/// accounts finish on theirs). Lookups borrow their keys: the engine asks on every record.
#[derive(Clone, Debug, Default)]
pub struct Definitions {
    tenants: BTreeMap<String, TenantDefinitions>,
}

/// One tenant's definitions.
#[derive(Clone, Debug, Default)]
struct TenantDefinitions {
    /// Journeys by id, then version.
    journeys: BTreeMap<String, BTreeMap<u32, Arc<Journey>>>,
    /// Stopped journeys: the newest version the stop applies to. A higher version published later runs again.
    stopped: BTreeMap<String, u32>,
    /// Buying group templates by solution interest, then version.
    templates: BTreeMap<Id, BTreeMap<u32, Arc<Template>>>,
    /// The activity kinds that definitions count, with the longest window that reads each.
    tracked: BTreeMap<Id, i64>,
}

/// Notes that a kind's activity history must reach back `window`.
fn track(tracked: &mut BTreeMap<Id, i64>, kind: &Id, window: i64) {
    let longest = tracked.entry(kind.clone()).or_insert(0);
    *longest = (*longest).max(window);
}

impl Definitions {
    /// Adds a journey version.
    ///
    /// # Errors
    /// [`OperatorError::JourneyVersionRefused`] when a version equal to or lower than the newest is published
    /// with a different document.
    pub fn publish(&mut self, journey: Journey) -> Result<(), OperatorError> {
        let tenant = self.tenants.entry(journey.tenant.clone()).or_default();
        let versions = tenant.journeys.entry(journey.id.clone()).or_default();
        if let Some((&newest, existing)) = versions.iter().next_back()
            && journey.version <= newest
        {
            let same = versions.get(&journey.version).is_some_and(|j| j.document == journey.document);
            if same {
                return Ok(());
            }
            return Err(OperatorError::JourneyVersionRefused {
                id: journey.id,
                version: journey.version,
                newest: existing.version,
            });
        }
        for (kind, window) in journey.activity_windows() {
            track(&mut tenant.tracked, &kind, window);
        }
        versions.insert(journey.version, Arc::new(journey));
        Ok(())
    }

    /// Adds a buying group template version: one template (id) per tenant and solution interest.
    ///
    /// # Errors
    /// [`OperatorError::TemplateSolutionTaken`] for another template id for the same solution interest,
    /// [`OperatorError::TemplateVersionRefused`] for a version equal to or lower than the newest with a
    /// different document.
    pub fn publish_template(&mut self, template: Template) -> Result<(), OperatorError> {
        let tenant = self.tenants.entry(template.tenant.clone()).or_default();
        let versions = tenant.templates.entry(template.solution.clone()).or_default();
        if let Some((&newest, existing)) = versions.iter().next_back() {
            if existing.id != template.id {
                return Err(OperatorError::TemplateSolutionTaken {
                    id: template.id,
                    solution: template.solution,
                    existing: existing.id.clone(),
                });
            }
            if template.version <= newest {
                if versions.get(&template.version).is_some_and(|t| t.document == template.document) {
                    return Ok(());
                }
                return Err(OperatorError::TemplateVersionRefused {
                    id: template.id,
                    version: template.version,
                    newest,
                });
            }
        }
        for (kind, _) in &template.weights {
            track(&mut tenant.tracked, kind, template.window);
        }
        versions.insert(template.version, Arc::new(template));
        Ok(())
    }

    /// The newest template of every solution interest of a tenant, in solution order.
    pub fn templates_for<'a>(&'a self, tenant: &str) -> impl Iterator<Item = &'a Arc<Template>> + 'a {
        let templates = self.tenants.get(tenant).map(|t| &t.templates);
        templates.into_iter().flat_map(BTreeMap::values).filter_map(|versions| versions.values().next_back())
    }

    /// Whether a tenant has any buying group template.
    pub fn has_templates(&self, tenant: &str) -> bool {
        self.tenants.get(tenant).is_some_and(|t| !t.templates.is_empty())
    }

    /// The newest template of a solution interest.
    pub fn template(&self, tenant: &str, solution: &str) -> Option<&Arc<Template>> {
        self.tenants.get(tenant)?.templates.get(solution)?.values().next_back()
    }

    /// Every template version.
    pub fn all_templates(&self) -> impl Iterator<Item = &Arc<Template>> {
        self.tenants.values().flat_map(|t| t.templates.values()).flat_map(BTreeMap::values)
    }

    /// Stops a journey (SPEC §3.2, `caravan stop`): its published versions admit no more entries. Returns the
    /// newest version the stop applies to, or `None` for an unknown journey. Ending the running instances is
    /// [`stop_journey`](super::stop_journey)'s work, account by account.
    pub fn stop(&mut self, tenant: &str, id: &str) -> Option<u32> {
        let t = self.tenants.get_mut(tenant)?;
        let newest = *t.journeys.get(id)?.keys().next_back()?;
        t.stopped.insert(id.to_owned(), newest);
        Some(newest)
    }

    /// Restores a stop read from state.
    pub fn restore_stop(&mut self, tenant: &str, id: &str, version: u32) {
        let t = self.tenants.entry(tenant.to_owned()).or_default();
        let v = t.stopped.entry(id.to_owned()).or_insert(0);
        *v = (*v).max(version);
    }

    /// Whether a journey version is stopped.
    pub fn is_stopped(&self, tenant: &str, id: &str, version: u32) -> bool {
        self.tenants.get(tenant).and_then(|t| t.stopped.get(id)).is_some_and(|&v| version <= v)
    }

    /// How long a tenant's activity history of a kind must reach back, when any condition counts it.
    pub fn activity_retention(&self, tenant: &str, kind: &str) -> Option<i64> {
        self.tenants.get(tenant)?.tracked.get(kind).copied()
    }

    /// The newest version of every journey of a tenant that is not stopped, in journey id order.
    pub fn newest_for_tenant<'a>(&'a self, tenant: &str) -> impl Iterator<Item = &'a Arc<Journey>> + 'a {
        let t = self.tenants.get(tenant);
        t.into_iter().flat_map(move |t| {
            t.journeys
                .iter()
                .filter_map(|(id, versions)| versions.values().next_back().map(|j| (id, j)))
                .filter(move |(id, j)| t.stopped.get(id.as_str()).is_none_or(|&v| j.version > v))
                .map(|(_, j)| j)
        })
    }

    /// One journey version.
    pub fn get(&self, tenant: &str, id: &str, version: u32) -> Option<&Arc<Journey>> {
        self.tenants.get(tenant)?.journeys.get(id)?.get(&version)
    }

    /// All journeys, every version.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Journey>> {
        self.tenants.values().flat_map(|t| t.journeys.values()).flat_map(BTreeMap::values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buying_group::compile_template;
    use crate::journey::compile_journey;
    use caravan_schemas::definition::read_document;

    /// The texts are the ones the CLI and the engine's tests have always read (these errors were strings).
    #[test]
    fn refusals_keep_their_texts() {
        let journey = |version: u32, asset: &str| {
            let text = format!(
                "kind: journey\ntenant: t\nid: j\nversion: {version}\naudience: a\nstart: m\nnodes:\n  m: {{action: {{send_email: {{asset: {asset}}}}}}}\n"
            );
            compile_journey(&read_document(&text).expect("parses")).expect("valid")
        };
        let mut defs = Definitions::default();
        defs.publish(journey(2, "a")).expect("first");
        let refused = |defs: &mut Definitions, j| defs.publish(j).expect_err("refused").to_string();
        assert_eq!(
            refused(&mut defs, journey(2, "b")),
            "journey `j` version 2 is refused: version 2 is already published with another document"
        );
        assert_eq!(
            refused(&mut defs, journey(1, "a")),
            "journey `j` version 1 is refused: version 2 is already published"
        );

        let template = |id: &str, version: u32, weight: u32| {
            let text = format!(
                "kind: buying_group_template\ntenant: t\nid: {id}\nversion: {version}\nsolution_interest: s\nroles: [{{role: r, when: 'true', required: true}}]\nengagement: {{window: 30d, weights: {{email.opened: {weight}}}}}\nstages: [{{stage: a}}]\n"
            );
            compile_template(&read_document(&text).expect("parses")).expect("valid")
        };
        defs.publish_template(template("bg", 2, 1)).expect("first");
        let refused = |defs: &mut Definitions, t| defs.publish_template(t).expect_err("refused").to_string();
        assert_eq!(
            refused(&mut defs, template("other", 3, 1)),
            "template `other` is refused: solution interest `s` already has template `bg`"
        );
        assert_eq!(
            refused(&mut defs, template("bg", 2, 2)),
            "template `bg` version 2 is refused: version 2 is already published"
        );
        assert_eq!(
            refused(&mut defs, template("bg", 1, 1)),
            "template `bg` version 1 is refused: version 2 is already published"
        );
    }
}
