#!/bin/bash
# The aggregation part of the seed's "Example: Aggregating 3 Parallel Implementers", verbatim from
# "# Collect handoff files" on (the wait-for-completion loop before it is left out).
# Run from a workspace whose data dir is `data` (the seed's paths).

# Collect handoff files
HANDOFFS=$(ls -1 data/handoffs/*-IMPLEMENTER-to-ORCHESTRATOR.json 2>/dev/null)

echo "=== Aggregating Results ==="
for handoff in $HANDOFFS; do
  AGENT_ID=$(jq -r '.fromAgent' "$handoff")
  echo "Processing handoff from: $AGENT_ID"

  # Extract deliverables
  jq -r '.deliverables' "$handoff"

  # Extract findings
  jq -r '.deliverables.findings[]' "$handoff"

  # Extract memory candidates
  jq -r '.memoryCandidate' "$handoff" 2>/dev/null

  echo ""
done

echo "=== Synthesis ==="
echo "Create unified deliverable combining all agent results"
echo "Resolve any conflicts found"
echo "Store validated memory candidates"
