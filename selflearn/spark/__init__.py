"""The Spark layer: where data lives and moves. Session set-up (session), reading and
checking the log (readers, ingest), the evidence window across days (incremental), and
`steps`, which only places data (windows, joins, mapInPandas/applyInPandas) and hands each
batch to a pure function of selflearn.core."""
