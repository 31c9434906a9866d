//! Loading definition files: every journey document of a folder or a list of files, validated as `publish`
//! validates them.
//!
//! It owns the file side of definitions (which files, their names in problem reports). It is not the
//! validator itself (`caravan_operators::journey`) and never starts a run on an invalid set: loading is
//! all or nothing, with every problem of every file listed.

use caravan_operators::account::Definitions;
use caravan_operators::buying_group::compile_template;
use caravan_operators::journey::compile_journey;
use caravan_schemas::definition::read_document;
use std::path::{Path, PathBuf};

/// The definition files of a folder: `*.yaml`, `*.yml` and `*.json`, sorted by name.
///
/// # Errors
/// [`EngineError::Io`] when the folder cannot be read.
pub fn files_in(dir: &Path) -> Result<Vec<PathBuf>, crate::EngineError> {
    let entries = std::fs::read_dir(dir).map_err(|e| crate::EngineError::io(dir.display().to_string(), e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")))
        .collect();
    files.sort();
    Ok(files)
}

/// Validates files and builds the definitions they publish, in file order.
///
/// # Errors
/// Every problem, each prefixed with its file (and node and path where it has them).
pub fn load_files(files: &[PathBuf]) -> Result<Definitions, Vec<String>> {
    let mut defs = Definitions::default();
    let mut problems = Vec::new();
    for file in files {
        let name = file.display();
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{name}: {e}"));
                continue;
            }
        };
        if let Err(ps) = publish_text(&mut defs, &text) {
            problems.extend(ps.into_iter().map(|p| format!("{name}: {p}")));
        }
    }
    if problems.is_empty() { Ok(defs) } else { Err(problems) }
}

/// Reads, validates and publishes one definition document (a journey or a buying group template), as
/// `publish` does: from a file, or as stored by a state.
///
/// # Errors
/// Every problem of the document (with node and path where it has them), or the publication's refusal.
pub fn publish_text(defs: &mut Definitions, text: &str) -> Result<(), Vec<String>> {
    let doc = read_document(text).map_err(|e| vec![e.to_string()])?;
    let texts = |ps: Vec<caravan_operators::journey::Problem>| ps.iter().map(ToString::to_string).collect::<Vec<_>>();
    match doc.get("kind").and_then(|k| k.as_str()) {
        Some("journey") => defs.publish(compile_journey(&doc).map_err(texts)?).map_err(|e| vec![e.to_string()]),
        Some("buying_group_template") => {
            defs.publish_template(compile_template(&doc).map_err(texts)?).map_err(|e| vec![e.to_string()])
        }
        _ => Err(vec!["at kind: expected `journey` or `buying_group_template`".into()]),
    }
}

/// Loads every definition of a folder.
///
/// # Errors
/// Every problem of every file, or an unreadable folder.
pub fn load_dir(dir: &Path) -> Result<Definitions, Vec<String>> {
    let files = files_in(dir).map_err(|e| vec![e.to_string()])?;
    load_files(&files)
}
