//! Publication and stop in the embedded mode: which definitions a state has published, what a run's
//! definitions folder adds, and the effects of both, each committed exactly once.
//!
//! It owns:
//! - **reconciling** the folder with the state: versions the state published stay in force (in-flight accounts
//!   finish on theirs even when the folder no longer holds them); a folder version the state published with
//!   another document is refused; stops recorded in the state apply;
//! - **publication**: a new newest version enters the accounts already in its audience at once (SPEC §3.2), at
//!   the event time the input had reached, after the last committed record and its timer pass. The entries,
//!   their outputs and the record of the publication commit together before input resumes, so a crash either
//!   redoes all of it or none;
//! - **stop** (`caravan stop`): every instance of the journey ends silently, its timers are deleted, and the
//!   stop is recorded so that the journey admits no entry until a higher version is published.
//!
//! It never runs while the pipeline does: both passes happen on a store no replay holds (RocksDB's lock).

use super::sink::FileSink;
use crate::EngineError;
use crate::core::epoch::Sink;
use crate::core::publish::{Pass, entry_pass, stop_pass, template_pass};
use crate::telemetry;
use caravan_operators::account::Definitions;
use caravan_operators::buying_group::Template;
use caravan_operators::journey::Journey;
use caravan_schemas::time::Timestamp;
use caravan_state::Store;
use std::sync::Arc;

/// The definitions a run uses, and the versions its folder publishes for the first time.
pub(crate) struct Reconciled {
    pub(crate) defs: Definitions,
    pub(crate) new_versions: Vec<Arc<Journey>>,
    pub(crate) new_templates: Vec<Arc<Template>>,
}

/// Merges the state's published definitions with the folder's.
///
/// # Errors
/// [`EngineError::Invalid`] listing every version the folder publishes with another document than the state
/// holds, or lower than one the state published; a stored document that no longer compiles.
pub(crate) fn reconcile(store: &Store, folder: &Definitions) -> Result<Reconciled, EngineError> {
    let stored = store.definitions()?;
    let mut defs = Definitions::default();
    for d in stored.published.iter().chain(&stored.templates) {
        crate::definitions::publish_text(&mut defs, &d.document).map_err(|p| {
            EngineError::Invalid(format!(
                "the state's published definition `{}` version {} cannot be read: {}",
                d.id,
                d.version,
                p.join("; ")
            ))
        })?;
    }
    let mut problems = Vec::new();
    let mut new_versions = Vec::new();
    for journey in folder.all() {
        let known = stored
            .published
            .iter()
            .any(|d| d.tenant == journey.tenant && d.id == journey.id && d.version == journey.version);
        match defs.publish((**journey).clone()) {
            Ok(()) if !known => new_versions.push(Arc::clone(journey)),
            Ok(()) => {}
            Err(e) => problems.push(format!("{e} (by this state; publish a higher version to change it)")),
        }
    }
    let mut new_templates = Vec::new();
    for template in folder.all_templates() {
        let known = stored
            .templates
            .iter()
            .any(|d| d.tenant == template.tenant && d.id == template.id && d.version == template.version);
        match defs.publish_template((**template).clone()) {
            Ok(()) if !known => new_templates.push(Arc::clone(template)),
            Ok(()) => {}
            Err(e) => problems.push(format!("{e} (by this state; publish a higher version to change it)")),
        }
    }
    for (tenant, id, version) in &stored.stopped {
        defs.restore_stop(tenant, id, *version);
    }
    if problems.is_empty() {
        // Hand back the definitions' own copies, so that entry runs on exactly what workers will run.
        let new_versions = new_versions.iter().filter_map(|j| defs.get(&j.tenant, &j.id, j.version).cloned()).collect();
        Ok(Reconciled { defs, new_versions, new_templates })
    } else {
        Err(EngineError::Invalid(problems.join("\n")))
    }
}

/// The definitions a state has published (journeys, templates, stops), for reading it outside a run.
///
/// # Errors
/// A store failure, or a stored document that no longer compiles.
pub fn stored_definitions(store: &Store) -> Result<Definitions, EngineError> {
    Ok(reconcile(store, &Definitions::default())?.defs)
}

/// Publishes the folder's new versions: records them, and enters the accounts already in the audience of each
/// new newest version: one epoch through the run's sink (none when there is nothing new).
pub(crate) fn publish_new(store: &Store, sink: &mut FileSink<'_>, reconciled: &Reconciled) -> Result<(), EngineError> {
    if reconciled.new_versions.is_empty() && reconciled.new_templates.is_empty() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let defs = &reconciled.defs;
    let mut pass = Pass::default();
    let committed = sink.position();
    let at = (committed.seq, Timestamp(committed.max_ts.unwrap_or(0)));
    // New templates first, so that journeys published with them see the groups.
    for template in &reconciled.new_templates {
        pass.delta.put_template(&template.tenant, &template.id, template.version, &template.document.to_string());
        template_pass(store, defs, template, at, &mut pass)?;
    }
    for journey in &reconciled.new_versions {
        pass.delta.put_definition(&journey.tenant, &journey.id, journey.version, &journey.document.to_string());
        entry_pass(store, defs, journey, at, &mut pass)?;
    }
    let mut epoch = pass.into_epoch(committed);
    let tally = std::mem::take(&mut epoch.tally);
    let writes = epoch.delta.len();
    sink.commit(vec![(0, epoch)])?;
    telemetry::record_commit(&tally, writes, started.elapsed(), None);
    Ok(())
}

/// Stops a journey in a state folder: ends its instances, deletes their timers, records the stop, in one
/// epoch through a sink without files (a stop emits nothing). Returns how many instances ended.
///
/// # Errors
/// A journey the state never published, a state no replay has committed yet, or a store failure.
pub fn stop(store: &Store, tenant: &str, journey_id: &str) -> Result<u64, EngineError> {
    if store.position()?.is_none() {
        return Err(EngineError::Invalid("this state holds no committed run: there is nothing to stop".into()));
    }
    let mut sink = FileSink::open(store, None, false)?;
    let mut defs = reconcile(store, &Definitions::default())?.defs;
    let Some(version) = defs.stop(tenant, journey_id) else {
        return Err(EngineError::Invalid(format!(
            "tenant `{tenant}` has published no journey `{journey_id}` in this state"
        )));
    };
    let mut pass = Pass::default();
    let ended = stop_pass(store, tenant, journey_id, &mut pass)?;
    pass.delta.put_stop(tenant, journey_id, version);
    // Nothing is written to the outputs: a stop ends instances silently.
    let epoch = pass.into_epoch(sink.position());
    sink.commit(vec![(0, epoch)])?;
    Ok(ended)
}
