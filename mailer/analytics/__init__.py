"""Analytics: figures read from the ledger and the event log (rollups, heatmaps, click maps,
reports and exports grow here)."""
