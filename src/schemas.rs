//! JSON Schemas of every file corral and its agents write and of every `--json` output,
//! generated from the Rust types. The copies under `schemas/` are checked against these by
//! a test, so they cannot drift; `UPDATE_SCHEMAS=1 cargo test schemas` rewrites them.

use schemars::schema_for;
use serde_json::Value;

pub fn all() -> Vec<(&'static str, Value)> {
    use crate::ipc::*;
    let v = |s: schemars::Schema| s.to_value();
    vec![
        ("status-file", v(schema_for!(crate::protocol::files::StatusFile))),
        ("handoff", v(schema_for!(crate::protocol::files::Handoff))),
        ("spawn-registry", v(schema_for!(Vec<crate::protocol::registry::SpawnRecord>))),
        ("status", v(schema_for!(Vec<AgentView>))),
        ("agent", v(schema_for!(AgentView))),
        ("show", v(schema_for!(ShowView))),
        ("daemon-status", v(schema_for!(DaemonView))),
        ("health", v(schema_for!(HealthView))),
        ("capacity", v(schema_for!(CapacityView))),
        ("event", v(schema_for!(crate::store::EventRecord))),
        ("escalations", v(schema_for!(Vec<crate::policy::agent::Escalation>))),
        ("memory", v(schema_for!(crate::memory::MemorySnapshot))),
        ("aggregate", v(schema_for!(crate::aggregate::Report))),
        ("merge", v(schema_for!(crate::cli::merge::MergeReport))),
        ("clean", v(schema_for!(crate::cli::clean::CleanReport))),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn committed_schemas_match_the_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
        let mut stale = Vec::new();
        for (name, schema) in super::all() {
            let path = dir.join(format!("{name}.schema.json"));
            let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
            if update {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &text).unwrap();
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                stale.push(path.display().to_string());
            }
        }
        assert!(stale.is_empty(), "schemas drifted from the types: {stale:?}; run UPDATE_SCHEMAS=1 cargo test schemas");
    }
}
