//! `spawn-registry.json`: the seed's registry, as a valid JSON array, rewritten atomically
//! from the durable registry so `jq '.[] | .agentId'` works after every change.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpawnRecord {
    pub agent_id: String,
    pub spawned_at: String,
    pub role: String,
    pub task: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub expected_handoff: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_at: Option<String>,
    pub attempt: u32,
    pub max_retries: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub after: Vec<String>,
    /// The agent CLI's session and what all attempts cost (adapter agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<crate::policy::usage::Tokens>,
}
