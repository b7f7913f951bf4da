#!/bin/bash
# File: scripts/monitor-agents.sh
# Monitor all active agents and report status

AGENT_STATUS_DIR="data/agent-status"
STALE_THRESHOLD=300  # 5 minutes

echo "=== Agent Status Monitor ==="
echo "Timestamp: $(date -Iseconds)"
echo ""

for status_file in "$AGENT_STATUS_DIR"/*.json; do
  if [ ! -f "$status_file" ]; then
    continue
  fi

  AGENT_ID=$(jq -r '.agentId' "$status_file")
  STATUS=$(jq -r '.status' "$status_file")
  PROGRESS=$(jq -r '.progress' "$status_file")
  PHASE=$(jq -r '.phase' "$status_file")
  MILESTONE=$(jq -r '.milestone' "$status_file")
  LAST_UPDATE=$(jq -r '.lastUpdate' "$status_file")

  # Check if stale
  LAST_UPDATE_EPOCH=$(date -d "$LAST_UPDATE" +%s 2>/dev/null || echo 0)
  CURRENT_EPOCH=$(date +%s)
  AGE=$((CURRENT_EPOCH - LAST_UPDATE_EPOCH))

  STALE=""
  if [ "$AGE" -gt "$STALE_THRESHOLD" ]; then
    STALE=" [STALE: ${AGE}s since update]"
  fi

  # Report
  echo "Agent: $AGENT_ID"
  echo "  Status: $STATUS"
  echo "  Progress: $PROGRESS ($PHASE / $MILESTONE)"
  echo "  Last Update: $LAST_UPDATE$STALE"
  echo ""
done

echo "=== End Status Monitor ==="
